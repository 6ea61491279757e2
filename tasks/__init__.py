"""Thin Celery adapters: one module per domain, one queue per domain."""
