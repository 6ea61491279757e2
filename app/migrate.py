"""Applies the migrations of every domain schema (``conveyor migrate``)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterable

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.config import DOMAINS, Settings

MIGRATIONS_DIR = pathlib.Path(__file__).parent / "migrations"


def alembic_config(settings: Settings, domain: str) -> Config:
    """Returns the Alembic config migrating ``domain``'s schema on its primary database.

    Args:
        settings: Where the URL comes from.
        domain: The domain.

    Returns:
        An Alembic ``Config`` whose version locations hold only that domain's revisions.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions" / domain))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["domain"] = domain
    cfg.attributes["url"] = settings.database_for(domain, "primary")
    return cfg


def upgrade(settings: Settings, domains: Iterable[str] = DOMAINS, revision: str = "head") -> None:
    """Creates the schemas and applies migrations; a second run does nothing.

    Args:
        settings: Database settings.
        domains: Domains to migrate.
        revision: Target revision (``head``).
    """
    for domain in domains:
        command.upgrade(alembic_config(settings, domain), revision)


def downgrade(settings: Settings, domain: str, revision: str = "base") -> None:
    """Downgrades one domain schema.

    Args:
        settings: Database settings.
        domain: The domain.
        revision: Target revision (``base`` removes everything).
    """
    command.downgrade(alembic_config(settings, domain), revision)


def revisions(settings: Settings, domain: str) -> list[str]:
    """Lists a domain's revisions, oldest first.

    Args:
        settings: Database settings.
        domain: The domain.

    Returns:
        Revision ids.
    """
    script = ScriptDirectory.from_config(alembic_config(settings, domain))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]
