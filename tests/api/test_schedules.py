"""API level: schedules CRUD, validation (AIP-193 INVALID_ARGUMENT saying why), system schedules,
``:run`` through the real workflow path."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.support.ops import query


async def create(client, **body):
    payload = {"workflow": "platform.ping", "args": {"message": "tick"}, "interval_seconds": 60}
    payload.update(body)
    return await client.post("/v1/schedules", json=payload)


def error_of(response, status=400):
    assert response.status_code == status, response.text
    return response.json()["error"]


async def test_create_get_list_patch_delete_a_schedule(client, clean_db):
    response = await create(
        client, display_name="every minute", cron="* * * * *", interval_seconds=None
    )
    assert response.status_code == 200, response.text
    created = response.json()
    assert created["name"] == f"schedules/{created['id']}"
    assert created["workflow"] == "platform.ping"
    assert created["args"] == {"message": "tick"}
    assert created["system"] is False
    assert created["enabled"] is True
    next_run = dt.datetime.fromisoformat(created["next_run_time"])
    assert next_run.second == 0 and next_run > dt.datetime.now(dt.UTC)
    assert created["last_run_time"] is None and created["last_operation"] is None

    got = (await client.get(f"/v1/schedules/{created['id']}")).json()
    assert got == created

    listed = (await client.get("/v1/schedules")).json()
    ids = [s["id"] for s in listed["schedules"]]
    assert created["id"] in ids

    patched = await client.patch(f"/v1/schedules/{created['id']}", json={"interval_seconds": 30})
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["interval_seconds"] == 30 and body["cron"] is None
    nxt = dt.datetime.fromisoformat(body["next_run_time"])
    assert 25 <= (nxt - dt.datetime.now(dt.UTC)).total_seconds() <= 31

    disabled = (
        await client.patch(f"/v1/schedules/{created['id']}", json={"enabled": False})
    ).json()
    assert disabled["enabled"] is False and disabled["next_run_time"] is None

    deleted = await client.delete(f"/v1/schedules/{created['id']}")
    assert deleted.status_code == 200 and deleted.json() == {}
    missing = await client.get(f"/v1/schedules/{created['id']}")
    assert error_of(missing, 404)["status"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"cron": "61 * * * *", "interval_seconds": None}, "cron '61 * * * *' is not valid"),
        ({"cron": "* * *", "interval_seconds": None}, "has 3 field(s)"),
        ({"workflow": "nope.unknown"}, "workflow 'nope.unknown' does not exist"),
        ({"args": {"steps": 0}}, "args.steps: Input should be greater than or equal to 1"),
        ({"args": {"bogus": 1}}, "args.bogus: Extra inputs are not permitted"),
        ({"cron": "0 6 * * *"}, "exactly one of cron"),
        ({"interval_seconds": 0.2}, "interval_seconds must be between"),
        ({"time_zone": "Mars/Base"}, "not an IANA time zone"),
    ],
)
async def test_invalid_schedules_are_invalid_argument_saying_why(client, body, fragment):
    error = error_of(await create(client, **body))
    assert error["status"] == "INVALID_ARGUMENT"
    assert fragment in error["message"], error["message"]


async def test_unknown_workflow_error_lists_known_workflows(client):
    error = error_of(await create(client, workflow="imports.nothing"))
    assert "platform.ping" in error["message"]
    assert error["details"][0]["reason"] == "UNKNOWN_WORKFLOW"


async def test_system_schedules_are_listed_interval_editable_not_deletable(
    client, clean_db, operator_headers
):
    listed = (await client.get("/v1/schedules", params={"page_size": 1000})).json()["schedules"]
    system = {s["id"]: s for s in listed if s["system"]}
    assert {
        "system.outbox-relay",
        "system.stale-sweeper",
        "system.purge-done",
        "system.webhook-breaker-probes",
    } <= set(system)
    sweeper = system["system.stale-sweeper"]
    assert sweeper["task"] == "platform.sweep" and sweeper["workflow"] is None

    refused = await client.delete("/v1/schedules/system.stale-sweeper", headers=operator_headers)
    error = error_of(refused, 400)
    assert error["status"] == "FAILED_PRECONDITION"
    assert "cannot be deleted" in error["message"]

    patched = await client.patch(
        "/v1/schedules/system.stale-sweeper",
        json={"interval_seconds": 12},
        headers=operator_headers,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["interval_seconds"] == 12

    other = await client.patch(
        "/v1/schedules/system.stale-sweeper", json={"cron": "* * * * *"}, headers=operator_headers
    )
    assert error_of(other)["status"] == "FAILED_PRECONDITION"
    # The edit survives the built-in schedules being ensured again.
    again = (await client.get("/v1/schedules/system.stale-sweeper")).json()
    assert again["interval_seconds"] == 12


async def test_patch_rejects_unknown_fields_and_bad_values(client, clean_db):
    created = (await create(client)).json()
    unknown = await client.patch(f"/v1/schedules/{created['id']}", json={"system": True})
    assert error_of(unknown)["status"] == "INVALID_ARGUMENT"
    bad = await client.patch(f"/v1/schedules/{created['id']}", json={"args": {"steps": -1}})
    assert "args.steps" in error_of(bad)["message"]
    switched = await client.patch(f"/v1/schedules/{created['id']}", json={"cron": "@hourly"})
    assert switched.json()["cron"] == "@hourly" and switched.json()["interval_seconds"] is None


async def test_run_now_starts_the_workflow_operation(client, clean_db, database_url):
    # A long ping (30 steps of 1 s): the session's in-process worker, if an earlier test started
    # it, may pick the operation up, but it cannot finish before the cancel below.
    created = (
        await create(client, args={"message": "tick", "steps": 30, "sleep_seconds": 30})
    ).json()
    response = await client.post(f"/v1/schedules/{created['id']}:run")
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["state"] == "STARTED" and run["manual"] is True
    assert run["operation"].startswith("operations/platform.")
    op = (await client.get(f"/v1/operations/{run['operation'].removeprefix('operations/')}")).json()
    assert op["metadata"]["type"] == "ping"
    schedule = (await client.get(f"/v1/schedules/{created['id']}")).json()
    assert schedule["last_operation"] == run["operation"]
    assert schedule["next_run_time"] == created["next_run_time"]
    runs = (await client.get(f"/v1/schedules/{created['id']}/runs")).json()["runs"]
    assert [r["operation"] for r in runs] == [run["operation"]]
    assert runs[0]["state"] == "STARTED", runs
    assert runs[0]["operation_state"] in ("PENDING", "RUNNING"), runs
    # The run shows how its operation ended, not STARTED forever.
    op_id = run["operation"].removeprefix("operations/")
    assert (await client.post(f"/v1/operations/{op_id}:cancel")).status_code == 200
    ended = (await client.get(f"/v1/schedules/{created['id']}/runs")).json()["runs"][0]
    assert ended["operation_state"] in ("CANCELLED", "CANCELLING"), ended
    rows = await query(
        database_url,
        "SELECT request_id FROM platform.operations WHERE request_id LIKE :p",
        p=f"schedule:{created['id']}:%",
    )
    assert len(rows) == 1


async def test_run_now_of_a_system_schedule_sends_its_task_through_the_outbox(
    client, clean_db, database_url, operator_headers
):
    await client.get("/v1/schedules")
    run = (
        await client.post("/v1/schedules/system.stale-sweeper:run", headers=operator_headers)
    ).json()
    assert run["state"] == "STARTED" and run["operation"] is None
    rows = await query(
        database_url,
        "SELECT task_name, queue FROM platform.outbox WHERE task_id LIKE 'schedule:system.stale-sweeper:%'",
    )
    assert [tuple(r) for r in rows] == [("platform.sweep", "platform")]


async def test_list_pages_with_signed_tokens(client, clean_db):
    for i in range(3):
        await create(client, display_name=f"s{i}")
    first = (await client.get("/v1/schedules", params={"page_size": 2})).json()
    assert len(first["schedules"]) == 2 and first["next_page_token"]
    second = (
        await client.get(
            "/v1/schedules", params={"page_size": 2, "page_token": first["next_page_token"]}
        )
    ).json()
    seen = [s["id"] for s in first["schedules"] + second["schedules"]]
    assert len(seen) == len(set(seen))
    bad = await client.get("/v1/schedules", params={"page_token": "garbage"})
    assert error_of(bad)["status"] == "INVALID_ARGUMENT"


async def test_daily_digest_schedule_is_created_once_by_default(api_app, client, clean_db):
    from app import workflows

    assert "reports.generate" in workflows.registry()
    digest = (await client.get("/v1/schedules/daily-digest")).json()
    assert digest["workflow"] == "reports.generate"
    assert digest["args"] == {"type": "digest", "period": "yesterday", "format": "csv"}
    assert digest["cron"] == "0 6 * * *" and digest["time_zone"] == "UTC"
    assert digest["system"] is False
    next_run = dt.datetime.fromisoformat(digest["next_run_time"])
    assert (next_run.hour, next_run.minute) == (6, 0)
    # A user may delete it; ensuring the defaults again does not bring it back.
    assert (await client.delete("/v1/schedules/daily-digest")).status_code == 200
    service = api_app.state.container.schedules
    await service.ensure_builtin(service._builtin, service._defaults)
    assert (await client.get("/v1/schedules/daily-digest")).status_code == 404


async def test_system_schedules_are_the_operators_to_change_and_run(
    client, clean_db, auth_headers, operator_headers
):
    """A tenant key, even with `*`, may read system schedules but never change, delete or run
    them (403 OPERATOR_ONLY); an operator key (`platform:admin`) may."""
    sweeper = "/v1/schedules/system.stale-sweeper"
    await client.get("/v1/schedules")
    tenant_writes = [
        ("PATCH", sweeper, {"interval_seconds": 604800}),
        ("DELETE", sweeper, None),
        ("POST", "/v1/schedules/system.purge-done:run", None),
        ("PATCH", "/v1/schedules/system.outbox-relay", {"enabled": False}),
    ]
    for method, url, body in tenant_writes:
        refused = await client.request(method, url, json=body, headers=auth_headers)
        error = error_of(refused, 403)
        assert error["details"][0]["reason"] == "OPERATOR_ONLY", (method, url)
        assert "platform:admin" in error["message"]
    # Reads stay open to tenants, and nothing changed.
    assert (await client.get(sweeper, headers=auth_headers)).json()["interval_seconds"] != 604800
    runs = await client.get(f"{sweeper}/runs", headers=auth_headers)
    assert runs.status_code == 200 and runs.json()["runs"] == []
    # The operator may change and run them; deleting stays refused by the domain rule.
    patched = await client.patch(sweeper, json={"interval_seconds": 45}, headers=operator_headers)
    assert patched.status_code == 200 and patched.json()["interval_seconds"] == 45
    # (stale-sweeper: a purge task left on the queue would race other tests' purge checks)
    ran = await client.post(f"{sweeper}:run", headers=operator_headers)
    assert ran.status_code == 200 and ran.json()["state"] == "STARTED"
    deleted = await client.delete(sweeper, headers=operator_headers)
    assert error_of(deleted, 400)["status"] == "FAILED_PRECONDITION"
    # Tenants' own schedules are unaffected by the operator rule.
    own = (await create(client)).json()
    assert (await client.post(f"/v1/schedules/{own['id']}:run")).status_code == 200
    assert (await client.delete(f"/v1/schedules/{own['id']}")).status_code == 200
