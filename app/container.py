"""Wiring: repositories, units of work and services on top of the engine registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar, cast

from app.config import DOMAINS, Settings
from app.db import EngineRegistry, Role
from app.db.replicas import ReplicaRouter
from app.wiring import by_name, domain_tables, modules
from app.wiring.module import DomainModule
from domains.imports.service import ImportsService
from domains.operations.service import OperationsService
from domains.operations.unit_of_work import AfterCommit, DomainTables, SqlUnitOfWork
from domains.platform.keys.service import ApiKeyService
from domains.platform.pings.service import PingService
from domains.platform.schedules.service import ScheduleService
from domains.reports.service import ReportsService
from domains.webhooks.service import WebhooksService

S = TypeVar("S")
U = TypeVar("U", bound=SqlUnitOfWork)

DOMAIN_TABLES: dict[str, DomainTables] = domain_tables()
"""Each domain's tables, from its wiring module (:data:`app.wiring.MODULES`)."""


class Container:
    """Everything a process needs, built once per process (after fork in workers).

    Each service is a typed attribute, set from its domain's services object
    (``DomainModule.services``, e.g. ``PlatformServices.pings`` is ``container.pings``).

    Attributes:
        settings: Settings.
        registry: Engines of this process.
        replicas: Replica routing of the domains with a read replica.
        operations: Operations of every domain (the ``/v1/operations`` API, sweeps).
        pings: Pings (platform).
        api_keys: API keys (platform).
        schedules: Schedules (platform).
        imports: Datasets, imports and records (imports).
        webhooks: Endpoints, events and deliveries (webhooks).
        reports: Reports and their projections (reports).
    """

    pings: PingService
    api_keys: ApiKeyService
    schedules: ScheduleService
    imports: ImportsService
    webhooks: WebhooksService
    reports: ReportsService

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

        Raises:
            ValueError: If two domains declare a service of the same name.
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
        # Each domain's wiring module builds its services (app/wiring/<domain>.py); every field
        # of its services object becomes an attribute, so a name may be taken only once.
        self._services: dict[str, object] = {}
        for domain in modules():
            built = domain.services(self)
            self._services[domain.name] = built
            for field in dataclasses.fields(built):
                if field.name in vars(self):
                    raise ValueError(
                        f"{domain.name}: service {field.name!r} clashes with a container"
                        " attribute of that name"
                    )
                setattr(self, field.name, getattr(built, field.name))

    def services_of(self, domain: DomainModule[S, Any]) -> S:
        """Returns the services object ``domain`` built (``container.services_of(MODULE)``).

        Args:
            domain: A domain module of :data:`app.wiring.MODULES`.

        Returns:
            Its services, typed by the module.
        """
        return cast(S, self._services[domain.name])

    def unit_of_work(
        self, domain: DomainModule[Any, U], *, role: Role = "primary"
    ) -> Callable[[], U]:
        """Returns a factory of ``domain``'s units of work, typed by its class.

        Args:
            domain: A domain module of :data:`app.wiring.MODULES`.
            role: ``replica`` for read-only listing: on a domain with a read replica, each
                transaction picks the replica or the primary (see :mod:`app.db.replicas`).

        Returns:
            A factory of units of work.
        """
        name = domain.name
        cls = domain.unit_of_work
        tables = domain.tables
        source = self.replicas.source(name) if role == "replica" else None

        def factory() -> U:
            return cls(
                tables,
                source or self.registry.sessionmaker(name, role),
                after_commit=self.after_commit if role == "primary" else None,
                max_attempts=self.settings.max_attempts,
            )

        return factory

    def uow_factory(self, domain: str, *, role: Role = "primary") -> Callable[[], SqlUnitOfWork]:
        """Returns a unit of work factory for ``domain`` by name (see :meth:`unit_of_work`).

        Args:
            domain: One of :data:`app.config.DOMAINS`.
            role: ``primary`` or ``replica``.

        Returns:
            A factory of units of work.
        """
        factory: Callable[[], SqlUnitOfWork] = self.unit_of_work(by_name(domain), role=role)
        return factory
