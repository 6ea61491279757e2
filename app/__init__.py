"""Composition root: settings, engines, Celery app, API factory, CLI; nothing in domains imports it."""
