"""Composition root: settings, engines, Celery app, API factory, CLI. Knows everything; nothing imports it but adapters' wiring."""
