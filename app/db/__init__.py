"""Engine registry: ``(domain, role) -> AsyncEngine``.

Schema per domain by default (every domain on the main URL, each in its own schema);
database per domain when ``CONVEYOR_DB__<DOMAIN>__URL`` is set; ``replica`` role for
list/report reads. Domains that resolve to the same URL share one engine (one pool).
"""

from __future__ import annotations

from typing import Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.config import DOMAINS, Settings
from domains.shared.driver import register_generic_plans

Role = Literal["primary", "replica"]


class EngineRegistry:
    """Creates engines lazily and disposes them together.

    Create one per process (after fork in workers): engines must never cross a fork.
    """

    def __init__(self, settings: Settings) -> None:
        """Creates an empty registry.

        Args:
            settings: Where the URLs come from.
        """
        self._settings = settings
        self._engines: dict[str, AsyncEngine] = {}
        self._sessionmakers: dict[str, async_sessionmaker[AsyncSession]] = {}

    @property
    def settings(self) -> Settings:
        """The settings the registry was built from."""
        return self._settings

    def url(self, domain: str, role: Role = "primary") -> str:
        """Returns the URL serving ``domain`` in ``role``.

        Args:
            domain: One of :data:`app.config.DOMAINS`.
            role: ``primary`` or ``replica``.

        Returns:
            The database URL.

        Raises:
            ValueError: If ``domain`` is unknown.
        """
        if domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
        return self._settings.database_for(domain, role)

    async def vacuum_churned(self, min_dead_rows: int = 1000) -> list[str]:
        """VACUUMs (with ANALYZE) the domain tables whose dead rows reached ``min_dead_rows``
        and a fifth of their live rows, on every primary.

        What autovacuum does when it is on; where it is off or lags, the space of every purged
        and every updated row would otherwise stay taken, and retention would not keep the
        tables' size flat. ``VACUUM`` takes no lock that blocks reads or writes.

        Args:
            min_dead_rows: Dead rows below which a table is left alone.

        Returns:
            The tables vacuumed (``schema.table``).
        """
        vacuumed: list[str] = []
        stale = sa.text(
            "SELECT schemaname, relname FROM pg_stat_user_tables"
            " WHERE schemaname = ANY(:schemas) AND n_dead_tup >= :floor"
            " AND n_dead_tup >= n_live_tup / 5"
        )
        urls: dict[str, list[str]] = {}
        for domain in DOMAINS:
            urls.setdefault(self.url(domain), []).append(domain)
        for domains in urls.values():
            engine = self.engine(domains[0])
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = (
                    await conn.execute(stale, {"schemas": domains, "floor": min_dead_rows})
                ).all()
                quote = conn.dialect.identifier_preparer.quote
                for schema, table in rows:
                    # Identifiers from the catalog, quoted; VACUUM takes no bound parameters.
                    name = f"{quote(schema)}.{quote(table)}"
                    await conn.exec_driver_sql("VACUUM (ANALYZE) " + name)
                    vacuumed.append(f"{schema}.{table}")
        return vacuumed

    def engine(self, domain: str, role: Role = "primary") -> AsyncEngine:
        """Returns the engine for ``domain`` and ``role``, creating it on first use.

        Args:
            domain: One of :data:`app.config.DOMAINS`.
            role: ``primary`` or ``replica``.

        Returns:
            A shared :class:`AsyncEngine`.
        """
        url = self.url(domain, role)
        engine = self._engines.get(url)
        if engine is None:
            server_settings = {"application_name": "conveyor"}
            connect_args: dict[str, object] = {"server_settings": server_settings}
            replica = role == "replica" and url != self.url(domain, "primary")
            if replica:
                # An unreachable replica must cost a read little before it falls back to the
                # primary (asyncpg's default connect timeout is 60 s).
                connect_args["timeout"] = self._settings.replicas.connect_timeout_seconds
            engine = self._create(url, connect_args, pre_ping=replica)
            self._engines[url] = engine
            if not replica and self._settings.db_generic_plans:
                # Its companion for by-key hot statements (domains.shared.driver): the same
                # database, prepared statements planned once per connection. Connections are
                # opened on demand, so a process that never runs the hot path opens none.
                # A plan made once is kept while the table grows: made on an empty table
                # (after a TRUNCATE, on a new day's partition) it would scan the whole table
                # on every later execution. These statements find rows by primary key, so
                # sequential scans are off here: the planner takes the key's index.
                generic = {
                    **server_settings,
                    "plan_cache_mode": "force_generic_plan",
                    "enable_seqscan": "off",
                }
                companion = self._create(url, {**connect_args, "server_settings": generic})
                self._engines[url + "#generic-plans"] = companion
                register_generic_plans(engine, companion)
        return engine

    def _create(
        self, url: str, connect_args: dict[str, object], *, pre_ping: bool = False
    ) -> AsyncEngine:
        return create_async_engine(
            url,
            pool_size=self._settings.db_pool_size,
            max_overflow=self._settings.db_pool_size,
            # No pre-ping on the primary: it costs round trips on every checkout (the hot
            # path's budget). Connections are recycled instead, and the hot path retries a
            # dropped one once (SqlUnitOfWork.autocommit); a disconnect invalidates the
            # whole pool. Replica connections are still checked at checkout: a restarted
            # or stopped replica then fails before the read starts, so it can fall back.
            pool_pre_ping=pre_ping,
            pool_recycle=1800,
            echo=self._settings.db_echo,
            connect_args=connect_args,
        )

    def sessionmaker(self, domain: str, role: Role = "primary") -> async_sessionmaker[AsyncSession]:
        """Returns a session factory bound to ``engine(domain, role)``.

        Args:
            domain: One of :data:`app.config.DOMAINS`.
            role: ``primary`` or ``replica``.

        Returns:
            An ``async_sessionmaker`` with ``expire_on_commit=False``.
        """
        url = self.url(domain, role)
        maker = self._sessionmakers.get(url)
        if maker is None:
            maker = async_sessionmaker(self.engine(domain, role), expire_on_commit=False)
            self._sessionmakers[url] = maker
        return maker

    async def dispose(self) -> None:
        """Closes every pool; the registry can be reused afterwards (engines are re-created)."""
        engines = list(self._engines.values())
        self._engines.clear()
        self._sessionmakers.clear()
        for engine in engines:
            await engine.dispose()
