"""Wiring: repositories, units of work and services on top of the engine registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import DOMAINS, Settings
from app.db import EngineRegistry, Role
from app.replicas import ReplicaRouter
from app.wiring import wirings
from domains.imports import tables as imports_tables
from domains.operations.service import OperationsService
from domains.operations.unit_of_work import AfterCommit, DomainTables, SqlUnitOfWork
from domains.platform import tables as platform_tables
from domains.platform.service import PingService
from domains.reports import tables as reports_tables
from domains.webhooks import tables as webhooks_tables

DOMAIN_TABLES: dict[str, DomainTables] = {
    "platform": platform_tables.tables,
    "imports": imports_tables.tables,
    "webhooks": webhooks_tables.tables,
    "reports": reports_tables.tables,
}


def _uow_classes() -> dict[str, type[SqlUnitOfWork]]:
    return {wiring.DOMAIN: wiring.uow_class() for wiring in wirings()}


class Container:
    """Everything a process needs, built once per process (after fork in workers)."""

    def __init__(
        self,
        settings: Settings,
        registry: EngineRegistry,
        *,
        after_commit: AfterCommit | None = None,
    ) -> None:
        """Wires the services.

        Args:
            settings: Settings.
            registry: Engines of this process.
            after_commit: Fast-path publisher run after commits that wrote outbox rows.
        """
        self.settings = settings
        self.registry = registry
        self.after_commit = after_commit
        self.replicas = ReplicaRouter(registry)
        self.operations = OperationsService(
            {d: self.uow_factory(d) for d in DOMAINS},
            read_uow_factories={d: self.uow_factory(d, role="replica") for d in DOMAINS},
            max_dispatches=settings.max_dispatches,
            event_deadline_seconds=settings.event_deadline_seconds,
        )
        # Each domain's wiring module builds its services (app/wiring/<domain>.py).
        self.services: dict[str, Any] = {}
        for wiring in wirings():
            self.services.update(wiring.build(self))
        self.pings: PingService = self.services["pings"]

    def uow_factory(self, domain: str, *, role: Role = "primary") -> Callable[[], SqlUnitOfWork]:
        """Returns a unit of work factory for ``domain``.

        Args:
            domain: The domain.
            role: ``replica`` for read-only listing: on a domain with a read replica, each
                transaction picks the replica or the primary (see :mod:`app.replicas`).

        Returns:
            A factory of units of work.
        """
        cls = _uow_classes()[domain]
        tables = DOMAIN_TABLES[domain]
        source = self.replicas.source(domain) if role == "replica" else None

        def factory() -> SqlUnitOfWork:
            return cls(
                tables,
                source or self.registry.sessionmaker(domain, role),
                after_commit=self.after_commit if role == "primary" else None,
                max_attempts=self.settings.max_attempts,
            )

        return factory
