"""Applies the migrations of every domain schema (``conveyor migrate``)."""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterable

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection

from app.config import DOMAINS, Settings

MIGRATIONS_DIR = pathlib.Path(__file__).parent.parent / "migrations"  # app/migrations


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


@functools.cache
def _script(domain: str) -> ScriptDirectory:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions" / domain))
    cfg.set_main_option("path_separator", "os")
    return ScriptDirectory.from_config(cfg)


def script_heads(domain: str) -> frozenset[str]:
    """Returns the head revision(s) of ``domain``'s migration scripts (read once per process).

    Args:
        domain: The domain.

    Returns:
        Head revision ids.
    """
    return frozenset(_script(domain).get_heads())


async def applied_revisions(connection: AsyncConnection, domain: str) -> frozenset[str]:
    """Reads the revision(s) recorded in ``domain``'s ``alembic_version`` table.

    Args:
        connection: A connection to the domain's primary database.
        domain: The domain (its schema).

    Returns:
        The applied revision ids; empty when the schema was never migrated.
    """
    table = f'"{domain}".alembic_version'
    if await connection.scalar(sa.text("SELECT to_regclass(:t)"), {"t": table}) is None:
        return frozenset()
    # The schema name is a domain name from app.config.DOMAINS, never user input.
    rows = await connection.execute(sa.text(f"SELECT version_num FROM {table}"))  # noqa: S608
    return frozenset(row[0] for row in rows)


async def check_at_head(connection: AsyncConnection, domain: str) -> tuple[bool, str]:
    """Tells whether ``domain``'s schema is migrated to the head of this code's scripts.

    A schema *ahead* of the code (a newer release migrated it during a rolling deploy) counts as
    ready: migrations are written to keep the previous release working.

    Args:
        connection: A connection to the domain's primary database.
        domain: The domain.

    Returns:
        ``(ready, detail)``: detail is ``"ok"`` at head, otherwise what is wrong.
    """
    heads = script_heads(domain)
    applied = await applied_revisions(connection, domain)
    if applied == heads:
        return True, "ok"
    unknown = applied - {rev.revision for rev in _script(domain).walk_revisions()}
    if unknown:
        return True, f"ahead of this code (at {', '.join(sorted(unknown))})"
    return False, (
        f"behind: at {', '.join(sorted(applied)) or 'no revision'}, head is "
        f"{', '.join(sorted(heads))}; run `conveyor migrate`"
    )
