"""Fuzzing the live API from its own OpenAPI document (schemathesis): every operation, a bounded
number of valid and invalid requests each, sent with a valid key to a real ``conveyor api``
process on a database of its own. No answer may be a 5xx, and every answer must match the
documented status codes and schemas."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.config import load_settings
from app.db import migrate
from app.runtime.embedded import find_free_port
from tests.conftest import claim_redis_db, create_api_key, run_async
from tests.support import services
from tests.support.procs import API_LISTENING

pytestmark = pytest.mark.e2e

EXAMPLES = {GenerationMode.POSITIVE: 8, GenerationMode.NEGATIVE: 4}
"""Examples per operation and mode: ~50 operations x 12 requests fits the CI budget."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def live_api(admin_url, service_env, spawn):
    """``conveyor api`` on a fresh database and Redis index; yields its URL and a valid key."""
    name = f"conveyor_fuzz_{secrets.token_hex(4)}"
    database_url = services.create_database(admin_url, name)
    broker_url, release = claim_redis_db(service_env["CONVEYOR_BROKER_URL"])
    try:
        fuzz_settings = load_settings(database_url=database_url, broker_url=broker_url)
        migrate.upgrade(fuzz_settings)
        key = run_async(create_api_key(fuzz_settings, tenant="fuzz"))
        port = find_free_port()
        proc = spawn(
            "api",
            "--port",
            str(port),
            env={
                "CONVEYOR_DATABASE_URL": database_url,
                "CONVEYOR_BROKER_URL": broker_url,
                "CONVEYOR_API_KEY": key,
            },
            name="api-fuzz",
        )
        proc.wait_for_log(API_LISTENING, timeout=30)
        yield f"http://127.0.0.1:{port}", key, proc
        spawn.stop_all()
    finally:
        release()
        services.drop_database(admin_url, name)


def test_every_operation_answers_without_5xx_and_as_documented(live_api):
    url, key, proc = live_api
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    auth = {"authorization": f"Bearer {key}"}
    failures: list[str] = []
    broken: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        try:
            operation = result.ok()
        except Exception as exc:  # an operation whose schema cannot be used is a finding too
            broken.append(f"{exc}"[:300])
            continue
        for mode, examples in EXAMPLES.items():
            try:
                strategy = operation.as_strategy(generation_mode=mode)
            except Exception as exc:
                broken.append(f"{operation.label} ({mode.value}): {exc}"[:300])
                continue

            @settings(
                max_examples=examples,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case: Any) -> None:
                nonlocal calls
                calls += 1
                case.call_and_validate(base_url=url, headers=auth, checks=CHECKS, timeout=70)

            try:
                run()
            except Unsatisfiable:
                continue  # no invalid request exists for an operation without inputs
            except Exception as exc:
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:1500])
    # The key really was valid: an authenticated call succeeds.
    assert httpx.get(f"{url}/v1/operations", headers=auth).status_code == 200
    assert calls >= 50, calls
    assert "unhandled error" not in proc.log(), proc.log()[-3000:]  # no 500 was logged either
    assert not failures, "\n\n".join(failures)
    assert not broken, "operations schemathesis could not use:\n" + "\n".join(broken)
    assert time.monotonic() - started < 120
