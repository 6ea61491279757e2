"""The Celery application: JSON only, one queue per domain, routing by task-name prefix."""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery
from kombu.entity import Exchange, Queue

from app.config import DOMAINS, Settings, get_settings
from app.wiring import task_modules

TASK_MODULES = [*task_modules(), "monitoring.worker_metrics"]
"""Modules holding task adapters (imported by every worker): each domain's, from its wiring."""

MIRRORED_TASKS = (
    "platform.ping",
    "webhooks.deliver",
    "webhooks.handle_event",
    "reports.generate",
    "reports.handle_event",
)
"""Per-job operation tasks whose outcome and progress reach the result backend only with
``CONVEYOR_RESULT_MIRROR`` (imports keep theirs: their chord is counted there)."""


def route_task(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str]:
    """Routes ``imports.*`` to queue ``imports`` and so on; unknown prefixes go to ``platform``.

    Args:
        name: Task name.
        args: Task args (unused).
        kwargs: Task kwargs (unused).
        options: Send options (unused).
        task: The task (unused).
        **_: Other router arguments.

    Returns:
        ``{"queue": <domain>}``.
    """
    prefix = name.split(".", 1)[0]
    return {"queue": prefix if prefix in DOMAINS else "platform"}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Returns the Celery configuration for ``settings``.

    Args:
        settings: Conveyor settings.

    Returns:
        Celery configuration keys.
    """
    exchange = Exchange("conveyor", type="direct")  # type: ignore[no-untyped-call]
    # Every task type has a soft and a hard time limit, so a stuck task ends (prefork pool).
    soft, hard = settings.time_limits("default")
    annotations = {
        name: {"soft_time_limit": limits[0], "time_limit": limits[1]}
        for name, limits in settings.task_time_limits.items()
        if name != "default"
    }
    if not settings.result_mirror:
        # PostgreSQL is the record of these tasks' outcome: no SETEX + PUBLISH per job, no
        # key per job kept a day in Redis. Task events still carry state and result to Flower.
        for name in MIRRORED_TASKS:
            annotations.setdefault(name, {})["ignore_result"] = True
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_seconds}
    if settings.broker().startswith(("redis", "rediss")):
        transport["socket_connect_timeout"] = settings.broker_connect_timeout_seconds
        transport["socket_timeout"] = 10
    return {
        "broker_url": settings.broker(),
        "result_backend": settings.backend(),
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_annotations": annotations,
        "worker_prefetch_multiplier": 1,
        # Pool children are recycled past a memory bound (KiB for Celery), see the setting.
        "worker_max_memory_per_child": settings.worker_max_memory_per_child_mb * 1024 or None,
        "worker_max_tasks_per_child": settings.worker_max_tasks_per_child or None,
        "task_queues": [
            Queue(domain, exchange, routing_key=domain)  # type: ignore[no-untyped-call]
            for domain in DOMAINS
        ],
        "task_default_queue": "platform",
        "task_default_exchange": "conveyor",
        "task_default_routing_key": "platform",
        "task_routes": (route_task,),
        # No STARTED write to the result backend per job: PostgreSQL holds the state (RUNNING),
        # and Flower learns "started" from the worker's task-started event, not the backend.
        "task_track_started": False,
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "result_expires": 86400,
        # Results stay small (no args/kwargs/name copies): the operation row holds all that.
        "result_extended": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_connect_timeout_seconds,
        "broker_transport_options": transport,
        "result_backend_transport_options": {
            "socket_connect_timeout": settings.broker_connect_timeout_seconds
        }
        if settings.backend()
        else {},
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "timezone": "UTC",
        "enable_utc": True,
        # Beat fires the schedules table (app/runtime/beat.py): schedules change over the API without a
        # restart, and any number of beats may run (one leader fires).
        "beat_scheduler": "app.runtime.beat:DatabaseScheduler",
        "beat_max_loop_interval": 5,
    }


def create_celery(settings: Settings, *, results: bool = True) -> Celery:
    """Builds a Celery app for ``settings``.

    Args:
        settings: Conveyor settings.
        results: ``False`` for a publish-only app: with the Redis backend every ``send_task``
            otherwise subscribes to the task's result channel (slow, and it hangs ~20 s in
            reconnect loops while Redis is down).

    Returns:
        The configured app, tasks included.
    """
    app = Celery("conveyor", set_as_current=False)
    config = celery_config(settings)
    if not results:
        config["result_backend"] = None
        config["task_send_sent_event"] = False
    app.config_from_object(config)
    app.conf.update(include=TASK_MODULES)
    app.conveyor_settings = settings
    for module in TASK_MODULES:
        __import__(module)
    return app


@functools.lru_cache(maxsize=1)
def get_celery() -> Celery:
    """Returns the process-wide Celery app built from the environment.

    Returns:
        The app.
    """
    app = create_celery(get_settings())
    app.set_current()
    app.set_default()
    return app


def __getattr__(name: str) -> Any:
    # `celery -A app.adapters.celery_app` looks up `celery_app`/`app`: build it lazily so
    # importing this module never needs a broker URL.
    if name in ("celery_app", "app", "celery"):
        return get_celery()
    raise AttributeError(name)
