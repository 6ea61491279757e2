"""Flower configuration: ``conveyor flower`` starts Flower with ``--conf=<this file>``.

Flower (``tornado.options``) executes this file and takes each global whose name is a Flower
option; options given on the command line (``--address``, ``--port``) still win. Running Flower
by hand works the same: ``celery -A app.adapters.celery_app flower --conf=monitoring/flowerconfig.py``.

What it sets, from the Conveyor settings (``CONVEYOR_*`` environment and ``.env``):

- ``basic_auth`` from ``CONVEYOR_FLOWER_USER``/``CONVEYOR_FLOWER_PASSWORD``; here rather than on
  the command line, where the password would show in ``ps``. Without credentials Flower does not
  start, unless ``CONVEYOR_FLOWER_INSECURE_DEV=1`` (which ``conveyor flower --insecure-dev``
  sets, after its own warning);
- Flower's own ``/metrics`` behind the same basic auth (:func:`protect_metrics`): Flower serves
  it without credentials, and it names every task type and worker. Nothing of ours scrapes it
  (``conveyor metrics`` exports the workers' metrics); a Prometheus that wants it sends
  ``basic_auth``. ``/healthcheck`` (the text ``OK``) stays open for probes;
- ``purge_offline_workers``: a stopped worker leaves the list after a minute;
- ``persistent`` state with ``CONVEYOR_FLOWER_PERSISTENT=true``: Flower keeps what it learned
  from events across restarts in ``$CONVEYOR_DATA_DIR/flower.db`` (saved every minute and at exit);
- the task list shows args, kwargs and result: the args are the publisher's redacted
  ``argsrepr``/``kwargsrepr`` (:mod:`monitoring.redaction`), and while a task runs its result is
  its progress meta (state ``PROGRESS``, see :func:`tasks.base.progress_sink`).

Task names need nothing: they are the natural ``<domain>.<verb>`` names (``platform.ping``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings

INSECURE_DEV_ENV = "CONVEYOR_FLOWER_INSECURE_DEV"
"""Set to ``1`` by ``conveyor flower --insecure-dev``: run without basic auth."""

PURGE_OFFLINE_WORKERS_SECONDS = 60
STATE_SAVE_INTERVAL_MS = 60_000
TASKS_COLUMNS = "name,uuid,state,args,kwargs,result,received,started,runtime,worker"

_TRUE = frozenset({"1", "true", "yes", "on"})


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value or "").strip().lower() in _TRUE


def is_persistent(settings: Settings, environ: Mapping[str, str]) -> bool:
    """Says whether Flower keeps its state across restarts.

    Args:
        settings: Conveyor settings (``CONVEYOR_FLOWER_PERSISTENT``).
        environ: Unused; kept for a uniform signature.

    Returns:
        ``True`` for persistent state.
    """
    return settings.flower_persistent


def flower_options(settings: Settings, environ: Mapping[str, str]) -> dict[str, Any]:
    """Returns the Flower options for ``settings``.

    Args:
        settings: Conveyor settings.
        environ: Environment (``CONVEYOR_FLOWER_INSECURE_DEV``, ``CONVEYOR_FLOWER_PERSISTENT``).

    Returns:
        Flower option names and values.

    Raises:
        SystemExit: Without credentials, unless running insecure on purpose.
    """
    options: dict[str, Any] = {
        "purge_offline_workers": PURGE_OFFLINE_WORKERS_SECONDS,
        "tasks_columns": TASKS_COLUMNS,
    }
    if settings.flower_user and settings.flower_password:
        # A list, not "user:password": a string would be split on commas.
        options["basic_auth"] = [
            f"{settings.flower_user}:{settings.flower_password.get_secret_value()}"
        ]
    elif not _flag(environ.get(INSECURE_DEV_ENV)):
        raise SystemExit(
            "conveyor: Flower needs credentials: set CONVEYOR_FLOWER_USER and"
            f" CONVEYOR_FLOWER_PASSWORD, or {INSECURE_DEV_ENV}=1 (`conveyor flower --insecure-dev`)"
            " for local development"
        )
    if is_persistent(settings, environ):
        data = pathlib.Path(settings.data_dir).resolve()
        data.mkdir(parents=True, exist_ok=True)
        options.update(
            persistent=True,
            db=str(data / "flower.db"),
            state_save_interval=STATE_SAVE_INTERVAL_MS,
        )
    return options


def protect_metrics() -> None:
    """Makes Flower's ``/metrics`` ask for the configured credentials (401 without them).

    Flower 2 leaves that handler unauthenticated; ``tornado.web.authenticated`` runs Flower's own
    ``get_current_user``, which checks ``basic_auth`` (401 and ``WWW-Authenticate`` otherwise).
    Idempotent.
    """
    import tornado.web
    from flower.views import monitor  # type: ignore[import-untyped]

    if getattr(monitor.Metrics.get, "_conveyor_protected", False):
        return
    protected = tornado.web.authenticated(monitor.Metrics.get)
    protected._conveyor_protected = True  # type: ignore[attr-defined]
    monitor.Metrics.get = protected


def _settings() -> Settings:
    from app.config import ConfigError, load_settings

    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(f"conveyor: configuration error: {exc}") from None


# Flower executes this file with a namespace of its own (no ``__name__``): configure it then, but
# not when the module is imported for its constants and functions.
if globals().get("__name__") != "monitoring.flowerconfig":
    _options = flower_options(_settings(), os.environ)
    if "basic_auth" in _options:
        protect_metrics()
    globals().update(_options)
