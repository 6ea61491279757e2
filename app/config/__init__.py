"""Settings: one object, read from ``CONVEYOR_*`` environment variables and ``.env``.

Invalid settings fail at start-up with one clear line naming the variable
(:func:`load_settings` raises :class:`ConfigError`; the CLI prints it and exits 2).
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import secrets
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from app.config.sections.imports import ImportsSettings
from app.config.sections.replicas import ReplicasSettings
from app.config.sections.reports import ReportsSettings
from app.config.sections.retention import RetentionSettings
from app.config.sections.schedules import SchedulesSettings
from app.config.sections.security import SecuritySettings
from app.config.sections.webhooks import WebhooksSettings

# Re-exported: the domain names derive from app.wiring.MODULES, the one list of domains.
from app.wiring import DOMAINS as DOMAINS

PAGE_TOKEN_SECRET_ENV = "CONVEYOR_PAGE_TOKEN_SECRET"  # noqa: S105 - a variable name
"""Environment variable holding the page-token signing key (read raw: rotated by restart)."""
WEBHOOK_KEY_ENV = "CONVEYOR_WEBHOOKS__SECRET_ENCRYPTION_KEY"
"""Environment variable of the key that encrypts webhook signing secrets at rest."""
PUBLIC_DEV_SECRETS = frozenset(
    {"conveyor-dev-webhook-secret-key", "conveyor-dev-page-token-secret"}
)
"""Constants earlier releases shipped as defaults: public, so refused in production."""

_DB_SCHEMES = ("postgresql+asyncpg://", "postgresql://", "postgres://")
_BROKER_SCHEMES = ("redis://", "rediss://", "amqp://", "amqps://", "pyamqp://")


def normalize_database_url(url: str) -> str:
    """Returns ``url`` in the ``postgresql+asyncpg://`` form SQLAlchemy needs.

    Args:
        url: A PostgreSQL URL in any of the accepted forms.

    Returns:
        The same URL with the asyncpg driver named.

    Raises:
        ValueError: If the URL is not a PostgreSQL URL.
    """
    for scheme in _DB_SCHEMES:
        if url.startswith(scheme):
            return "postgresql+asyncpg://" + url[len(scheme) :]
    raise ValueError(
        f"must be a PostgreSQL URL starting with postgresql:// (got {url.split(':')[0]}://...)"
    )


class DomainDatabase(BaseModel):
    """Per-domain database overrides (``CONVEYOR_DB__IMPORTS__URL`` and ``__REPLICA_URL``)."""

    url: str | None = None
    replica_url: str | None = None

    @field_validator("url", "replica_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        return None if not value else normalize_database_url(value)


class DomainDatabases(BaseModel):
    """The per-domain overrides, one entry per domain of :data:`DOMAINS` (``settings.db.imports``).

    The entries are pydantic extra fields, so the list of domains stays in ``app.wiring``; keys
    that name no domain are ignored, as unknown settings are.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, DomainDatabase] = Field(init=False)

    @model_validator(mode="before")
    @classmethod
    def _every_domain(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        return {domain: data.get(domain) or {} for domain in DOMAINS}

    def for_domain(self, domain: str) -> DomainDatabase:
        """Returns the overrides of ``domain``.

        Args:
            domain: One of :data:`DOMAINS`.

        Returns:
            The domain's overrides (possibly all ``None``).
        """
        return (self.__pydantic_extra__ or {})[domain]


DEFAULT_TASK_TIME_LIMITS: dict[str, tuple[float, float]] = {
    "default": (900.0, 960.0),
    "imports.run": (1800.0, 1860.0),
    "imports.process_chunk": (1800.0, 1860.0),
    "imports.finalize": (3600.0, 3660.0),
    "reports.generate": (1800.0, 1860.0),
    "webhooks.handle_event": (120.0, 150.0),
    "reports.handle_event": (120.0, 150.0),
}
"""Soft/hard time limits (seconds) of each task type; CONVEYOR_TASK_TIME_LIMITS overrides
entries (JSON, e.g. ``{"imports.process_chunk": [3600, 3660]}``)."""


class Settings(BaseSettings):
    """Every setting of Conveyor. Environment names are ``CONVEYOR_`` + the upper-case field name;
    nested fields use ``__`` (``CONVEYOR_DB__IMPORTS__URL``).
    """

    model_config = SettingsConfigDict(
        env_prefix="CONVEYOR_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        validate_default=True,
    )

    env: Literal["dev", "prod", "test"] = "dev"
    database_url: str | None = Field(
        default=None, description="Main PostgreSQL URL; unset with `conveyor up` = embedded server."
    )
    replica_url: str | None = Field(default=None, description="Read replica for every domain.")
    db: DomainDatabases = DomainDatabases()
    broker_url: str | None = Field(default=None, description="redis://... or amqp://...")
    result_backend: str | None = Field(
        default=None, description="Celery result backend; defaults to the broker when it is Redis."
    )
    flower_user: str | None = None
    flower_password: SecretStr | None = None
    flower_persistent: bool = Field(
        default=False, description="Keep Flower's state in data_dir/flower.db."
    )
    task_events: bool = True
    result_mirror: bool = Field(
        default=False,
        description="Also write the outcome and progress of the per-job operation tasks (pings,"
        " webhook deliveries, reports, event handlers) to the result backend, for"
        " AsyncResult(<operation id>). PostgreSQL holds both either way; Flower shows them"
        " from task events.",
    )
    data_dir: str = ".conveyor"
    db_pool_size: int = Field(
        default=20,
        ge=1,
        le=200,
        description="Connections an engine keeps open (opened on demand; as many again in a"
        " burst, closed after use). Keep it above the requests a process has in flight: an"
        " API under 16 concurrent submits with 10 opened and closed connections all along"
        " (each one a TLS probe, a startup and its statements prepared again).",
    )
    db_echo: bool = False
    db_generic_plans: bool = Field(
        default=True,
        description="Run the hot path's by-key statements (the worker's claim, finish and"
        " heartbeat, the submit's fused INSERT, the fast path's mark-sent, an operation's GET) on"
        " connections with plan_cache_mode=force_generic_plan and enable_seqscan=off: PostgreSQL"
        " otherwise plans them again on every execution (operations and outbox are"
        " partitioned), which costs it more than running them. Turn off behind a pooler that"
        " refuses these startup parameters (PgBouncer without them in"
        " ignore_startup_parameters).",
    )

    # Reliable dispatch.
    fast_path_publish: bool = Field(
        default=True,
        description="Publish outbox rows right after commit (the relay catches the rest).",
    )
    relay_interval_seconds: float = Field(default=0.5, gt=0, le=60)
    relay_batch_size: int = Field(default=200, ge=1, le=10000)
    relay_grace_seconds: float = Field(
        default=2.0, ge=0, le=600, description="Rows younger than this are left to the fast path."
    )
    sweeper_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    operation_lease_seconds: float = Field(
        default=30.0,
        gt=0,
        le=86400,
        description="A RUNNING operation without a heartbeat this long is presumed lost.",
    )
    pending_deadline_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86400 * 7,
        description="A PENDING operation not started this long is re-dispatched.",
    )
    max_dispatches: int = Field(default=5, ge=1, le=100)
    event_deadline_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="An integration event a consumer has not handled this long after its"
        " dispatch is dispatched again (the wait grows with each dispatch).",
    )
    task_max_retries: int = Field(default=5, ge=0, le=100)
    max_attempts: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Starts of one operation (retries, redeliveries after a dead worker,"
        " take-overs) before it ends FAILED with ABORTED; :retry grants a fresh budget.",
    )
    task_time_limits: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_TASK_TIME_LIMITS),
        description="Soft and hard time limits in seconds per task name ('default' for the"
        " rest): past the soft one the task fails its operation with DEADLINE_EXCEEDED, past"
        " the hard one the pool child is killed.",
    )
    worker_heartbeat_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often a worker's event loop rewrites its heartbeat file"
        " (<data dir>/run/worker-<queues>.heartbeat, read by `conveyor worker --check`).",
    )
    worker_heartbeat_max_age_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="`conveyor worker --check` fails when the heartbeat is older than this.",
    )
    worker_shutdown_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A worker stopping after an unrecoverable error exits non-zero after this"
        " long even if its pool hangs.",
    )
    worker_max_memory_per_child_mb: int = Field(
        default=512,
        ge=0,
        le=1_048_576,
        description="A pool child whose resident memory passes this many MiB is replaced after"
        " its current task (Celery worker_max_memory_per_child; 0 = never). A bound, not a"
        " fix: one import of a huge file or a library cache can hold memory a child never"
        " returns to the system.",
    )
    worker_max_tasks_per_child: int = Field(
        default=0,
        ge=0,
        description="A pool child is replaced after this many tasks (0 = never).",
    )
    retry_backoff_base_seconds: float = Field(default=1.0, gt=0, le=60)
    retry_backoff_max_seconds: float = Field(default=30.0, gt=0, le=600)
    progress_interval_seconds: float = Field(default=1.0, ge=0, le=60)
    broker_connect_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    visibility_timeout_seconds: int = Field(default=3600, ge=10)
    imports: ImportsSettings = ImportsSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    schedules: SchedulesSettings = SchedulesSettings()
    reports: ReportsSettings = ReportsSettings()
    replicas: ReplicasSettings = ReplicasSettings()
    retention: RetentionSettings = RetentionSettings()
    security: SecuritySettings = SecuritySettings()

    @field_validator("task_time_limits")
    @classmethod
    def _check_time_limits(
        cls, value: dict[str, tuple[float, float]]
    ) -> dict[str, tuple[float, float]]:
        for name, (soft, hard) in value.items():
            if not 0 < soft < hard:
                raise ValueError(
                    f"{name}: [soft, hard] must satisfy 0 < soft < hard (got [{soft}, {hard}])"
                )
        return {**DEFAULT_TASK_TIME_LIMITS, **value}

    def time_limits(self, task_name: str) -> tuple[float, float]:
        """Returns the soft and hard time limits of a task.

        Args:
            task_name: E.g. ``imports.process_chunk``.

        Returns:
            ``(soft, hard)`` seconds.
        """
        return self.task_time_limits.get(task_name, self.task_time_limits["default"])

    @field_validator("database_url", "replica_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        return None if not value else normalize_database_url(value)

    @field_validator("broker_url")
    @classmethod
    def _check_broker_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(_BROKER_SCHEMES):
            raise ValueError(
                f"must start with redis://, rediss://, amqp:// or amqps:// (got {value.split(':')[0]}://...)"
            )
        return value

    @field_validator("result_backend")
    @classmethod
    def _check_result_backend(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "rpc://", "db+")):
            raise ValueError(
                "must start with redis://, rediss://, rpc:// or db+ (a Celery result backend)"
            )
        return value or None

    def database_for(self, domain: str, role: Literal["primary", "replica"] = "primary") -> str:
        """Returns the database URL of ``domain`` for ``role``.

        A domain URL override wins (database per domain); otherwise the main URL
        (schema per domain). The replica falls back to the primary.

        Args:
            domain: One of :data:`DOMAINS`.
            role: ``primary`` for writes and read-your-writes, ``replica`` for list/report reads.

        Returns:
            A ``postgresql+asyncpg://`` URL.

        Raises:
            ConfigError: If no database URL is configured.
        """
        override = self.db.for_domain(domain)
        primary = override.url or self.database_url
        if primary is None:
            raise ConfigError(
                "CONVEYOR_DATABASE_URL: not set; set it (postgresql://...) or use `conveyor up`,"
                " which starts an embedded PostgreSQL"
            )
        if role == "primary":
            return primary
        if override.replica_url:
            return override.replica_url
        # The shared replica only mirrors the main database, not a domain's own one.
        if self.replica_url and not override.url:
            return self.replica_url
        return primary

    def has_replica(self, domain: str) -> bool:
        """Tells whether ``domain`` has a read replica distinct from its primary.

        Args:
            domain: One of :data:`DOMAINS`.

        Returns:
            True when its replica URL differs from its primary URL.
        """
        return self.database_for(domain, "replica") != self.database_for(domain, "primary")

    def broker(self) -> str:
        """Returns the broker URL.

        Returns:
            The configured broker URL.

        Raises:
            ConfigError: If none is configured.
        """
        if not self.broker_url:
            raise ConfigError(
                "CONVEYOR_BROKER_URL: not set; set it (redis://... or amqp://...) or use"
                " `conveyor up`, which starts an embedded Redis"
            )
        return self.broker_url

    def backend(self) -> str | None:
        """Returns the Celery result backend (the broker itself when it is Redis).

        Returns:
            The result backend URL, or ``None`` for no backend.
        """
        if self.result_backend:
            return self.result_backend
        broker = self.broker_url or ""
        return broker if broker.startswith(("redis://", "rediss://")) else None

    def webhook_secret_key(self) -> str:
        """Returns the key that encrypts webhook signing secrets at rest.

        Returns:
            ``CONVEYOR_WEBHOOKS__SECRET_ENCRYPTION_KEY``; unset outside production, a random key
            generated once and kept in ``<data_dir>/webhook-secret-key`` (so restarts, the API
            and the workers of this data directory still decrypt).

        Raises:
            ConfigError: In production when it is unset or a public development value.
        """
        value = self.webhooks.secret_encryption_key.get_secret_value()
        return self._secret(value, WEBHOOK_KEY_ENV, "webhook-secret-key", "webhook signing secrets")

    def page_token_secret(self) -> str:
        """Returns the key that signs page tokens.

        Returns:
            ``CONVEYOR_PAGE_TOKEN_SECRET``; unset outside production, a random key generated once
            and kept in ``<data_dir>/page-token-secret``.

        Raises:
            ConfigError: In production when it is unset or a public development value.
        """
        value = os.environ.get(PAGE_TOKEN_SECRET_ENV, "")
        return self._secret(value, PAGE_TOKEN_SECRET_ENV, "page-token-secret", "page tokens")

    def require_secrets(self) -> None:
        """Checks that the secrets a server process needs are there (refuses to start if not).

        Raises:
            ConfigError: One line naming the first missing variable (production only).
        """
        self.webhook_secret_key()
        self.page_token_secret()

    def _secret(self, value: str, variable: str, file_name: str, what: str) -> str:
        if self.env == "prod":
            if not value or value in PUBLIC_DEV_SECRETS:
                state = "is a public development value" if value else "is not set"
                raise ConfigError(
                    f"{variable}: {state}; production needs a long random value for {what}"
                    " (e.g. `openssl rand -hex 32`), the same in every process"
                )
            return value
        return value or dev_secret(pathlib.Path(self.data_dir) / file_name)

    def upload_limit_bytes(self) -> int:
        """Returns the one cap of an import file: the smaller of
        ``CONVEYOR_SECURITY__MAX_UPLOAD_BYTES`` and ``CONVEYOR_IMPORTS__MAX_UPLOAD_BYTES``.

        Upload routes refuse a body past it (413, at once when ``Content-Length`` says so), a
        fetched ``source_uri`` stops at it, and a gzip file stops decompressing at it. The
        smaller wins so that lowering either setting takes effect.

        Returns:
            Bytes.
        """
        limits = [self.security.max_upload_bytes]
        imports_cap = getattr(self.imports, "max_upload_bytes", None)
        if isinstance(imports_cap, int):
            limits.append(imports_cap)
        return min(limits)


def dev_secret(path: pathlib.Path) -> str:
    """Returns the development secret kept in ``path``, generating it on first use.

    Creation is atomic (written aside, then hard-linked into place, which fails if another
    process won the race), so concurrent first starts agree on one value.

    Args:
        path: The file (``<data_dir>/<name>``), readable by its owner only.

    Returns:
        The secret (64 hex digits).
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


class ConfigError(Exception):
    """A setting is missing or invalid; the message is one line naming the variable."""


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "CONVEYOR_" + "__".join(str(part).upper() for part in loc)


def _non_json_nested(section: str) -> str | None:
    """The ``CONVEYOR_<SECTION>__<FIELD>`` variable holding a list/dict field's non-JSON value."""
    import json
    import typing

    field = Settings.model_fields.get(section)
    model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    prefix = f"CONVEYOR_{section.upper()}__"
    for variable, value in sorted(os.environ.items()):
        if not variable.upper().startswith(prefix):
            continue
        sub = model.model_fields.get(variable[len(prefix) :].lower())
        if sub is None:
            continue
        origin = typing.get_origin(sub.annotation) or sub.annotation
        if origin not in (list, dict, set, tuple):
            continue
        try:
            json.loads(value)
        except ValueError:
            return variable.upper()
    return None


def load_settings(**overrides: object) -> Settings:
    """Reads and validates the settings.

    Args:
        **overrides: Values that win over the environment (used by tests and the CLI).

    Returns:
        The validated settings.

    Raises:
        ConfigError: With one line naming the first bad variable and what to fix.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # e.g. CONVEYOR_DB='{not json'; pydantic-settings names the field in its message.
        match = re.search(r'field "([^"]+)"', str(exc))
        name = _env_name((match.group(1),)) if match else "CONVEYOR_*"
        # A nested list/dict field (CONVEYOR_WEBHOOKS__SSRF_ALLOWLIST) is reported under its
        # section: name the variable itself, and say what shape to write.
        culprit = _non_json_nested(match.group(1)) if match else None
        if culprit is not None:
            raise ConfigError(
                f"{culprit}: is not valid JSON; write a JSON list or object, e.g."
                f' {culprit}=\'["a", "b"]\' ({exc.__cause__ or exc})'
            ) from None
        raise ConfigError(f"{name}: is not valid JSON ({exc.__cause__ or exc})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{_env_name(first['loc'])}: {message}") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Returns the process-wide settings (read once).

    Returns:
        The settings from the environment.
    """
    return load_settings()
