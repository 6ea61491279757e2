"""Alembic migrations: one linear history and one version table per domain schema."""
