"""Shared kernel used by every domain: ids, errors, query conditions, outbox and unit of work."""
