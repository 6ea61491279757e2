"""Pings: a diagnostic workflow through the whole pipeline (API, outbox, broker, worker)."""
