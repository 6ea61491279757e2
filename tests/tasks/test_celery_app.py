"""Celery configuration and routing, checked on the real broker."""

from __future__ import annotations

import uuid

from app.adapters.celery_app import create_celery, route_task
from app.config import DOMAINS


def test_serialization_is_json_only(celery_app):
    conf = celery_app.conf
    assert conf.task_serializer == "json"
    assert conf.result_serializer == "json"
    assert conf.accept_content == ["json"]
    assert conf.result_accept_content == ["json"]


def test_tasks_ack_late_and_reject_on_worker_lost(celery_app):
    assert celery_app.conf.task_acks_late is True
    assert celery_app.conf.task_reject_on_worker_lost is True
    assert celery_app.conf.worker_prefetch_multiplier == 1
    ping = celery_app.tasks["platform.ping"]
    assert ping.acks_late is True


def test_one_queue_per_domain(celery_app):
    assert {q.name for q in celery_app.conf.task_queues} == set(DOMAINS)


def test_task_events_are_on_by_default_and_configurable(settings):
    assert create_celery(settings).conf.worker_send_task_events is True
    off = settings.model_copy(update={"task_events": False})
    assert create_celery(off).conf.worker_send_task_events is False


def test_routes_by_task_name_prefix():
    assert route_task("imports.process_chunk", (), {}, {}) == {"queue": "imports"}
    assert route_task("webhooks.deliver", (), {}, {}) == {"queue": "webhooks"}
    assert route_task("reports.generate", (), {}, {}) == {"queue": "reports"}
    assert route_task("unknown.thing", (), {}, {}) == {"queue": "platform"}


def test_published_task_lands_in_its_domain_queue_on_redis(stack):
    celery = stack.celery
    celery.send_task("imports.example", args=[1], task_id=str(uuid.uuid4()))
    celery.send_task("reports.example", args=[2], task_id=str(uuid.uuid4()))
    assert stack.redis.llen("imports") == 1
    assert stack.redis.llen("reports") == 1
    assert stack.redis.llen("platform") == 0


def test_beat_reads_schedules_from_the_database_not_a_static_table(celery_app):
    # System tasks (sweeper, relay sweep, purge, breaker probes) are rows in
    # platform.schedules, fired by the leader beat like user schedules.
    assert celery_app.conf.beat_scheduler == "app.runtime.beat:DatabaseScheduler"
    assert not celery_app.conf.beat_schedule


def test_pickle_is_refused_by_the_worker_config(celery_app):
    assert "pickle" not in celery_app.conf.accept_content


def test_every_task_type_has_a_soft_and_a_hard_time_limit(settings):
    app = create_celery(settings)
    assert 0 < app.conf.task_soft_time_limit < app.conf.task_time_limit
    for name in ("imports.process_chunk", "reports.generate", "webhooks.handle_event"):
        task = app.tasks[name]
        assert (task.soft_time_limit, task.time_limit) == settings.time_limits(name)
    limits = {**settings.task_time_limits, "platform.ping": (2.0, 4.0)}
    custom = settings.model_copy(update={"task_time_limits": limits})
    ping = create_celery(custom).tasks["platform.ping"]
    assert (ping.soft_time_limit, ping.time_limit) == (2.0, 4.0)


def test_event_handlers_leave_a_worker_killing_event_to_the_capped_inbox_sweeper(celery_app):
    # Redelivering at once on worker loss would loop forever on a poison event.
    for name in ("webhooks.handle_event", "reports.handle_event"):
        assert celery_app.tasks[name].reject_on_worker_lost is False


def test_per_job_tasks_store_results_only_with_the_result_mirror(settings):
    from app.adapters.celery_app import MIRRORED_TASKS, create_celery

    quiet = create_celery(settings)
    mirrored = create_celery(settings.model_copy(update={"result_mirror": True}))
    for name in MIRRORED_TASKS:
        assert quiet.tasks[name].ignore_result is True, name
        assert mirrored.tasks[name].ignore_result is False, name
    # Imports keep their results: their chord is counted in the result backend.
    assert quiet.tasks["imports.process_chunk"].ignore_result is False
