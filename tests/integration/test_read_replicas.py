"""Read replicas a user can rely on, tried for real: a PostgreSQL primary and a streaming hot
standby (``initdb`` + ``pg_basebackup -R``, started by the module's cluster fixture), the API on a
real uvicorn under one keep-alive client, imports and reports run by a `conveyor worker`
subprocess. Replay is paused and resumed (``pg_wal_replay_pause()``), the standby and then the
primary are stopped and started.

- Bounded staleness: an idle primary is no lag (its replay timestamp ages, its WAL position does
  not); with replay paused, lists serve the old data at most ``max_lag_seconds``, then the
  primary's.
- Read-your-writes: single-resource GETs (a record after its import's ``:wait``) read the
  primary; a writer's lists, or any caller's sending the write's consistency token, too.
- A report generated while the standby lags still counts the import (generation reads the
  primary; the worker is given no lag bound, so only that rule can save it).
- Fallback: with the standby stopped every read answers 200 from the primary (the errors CSV
  complete), fallbacks are counted, /readyz stays 200 and says the replica is unreachable; with
  the primary stopped too, a 503 naming the primary database; back to the replica afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.config import Settings, load_settings
from app.db import migrate
from app.main import create_app
from tests.conftest import (
    SECURITY_TEST_OVERRIDES,
    TEST_OVERRIDES,
    Proc,
    claim_redis_db,
    create_api_key,
    run_async,
)
from tests.support import services
from tests.support.live_api import local_port, serve
from tests.support.ops import op_path, query
from tests.support.pg_cluster import StreamingCluster, pg_bin_or_skip

pytestmark = pytest.mark.e2e

MAX_LAG = 2.5
"""The API's bound in these tests (seconds)."""

REPLICAS = {
    "max_lag_seconds": MAX_LAG,
    "check_seconds": 0.2,
    "retry_seconds": 1.0,
    "connect_timeout_seconds": 1.0,
}
FIELDS = [
    {"name": "id", "type": "string", "required": True},
    {"name": "amount", "type": "number", "required": True},
]


# ---- module fixtures: one cluster, one worker --------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[StreamingCluster]:
    """A migrated primary and its streaming standby."""
    pg = StreamingCluster(pg_bin_or_skip())
    try:
        pg.start()
        migrate.upgrade(load_settings(database_url=pg.primary_url, broker_url="redis://unused"))
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def replica_settings(cluster: StreamingCluster) -> Iterator[Settings]:
    """Settings of the API: the primary, the standby as replica, a broker db of its own."""
    broker, release = claim_redis_db(services.test_broker_url())
    settings = load_settings(
        database_url=cluster.primary_url,
        replica_url=cluster.standby_url,
        broker_url=broker,
        imports={"storage_dir": str(cluster.base / "imports")},
        # The key stays cached while the primary is down, so that request reaches the route.
        security={**SECURITY_TEST_OVERRIDES, "key_cache_seconds": 30.0},
        replicas=REPLICAS,
        **TEST_OVERRIDES,
    )
    yield settings
    release()


@pytest.fixture(scope="module")
def keys(replica_settings: Settings) -> dict[str, dict[str, str]]:
    """Two keys of one tenant: ``writer`` writes, ``reader`` only reads."""
    return {
        who: {"authorization": f"Bearer {run_async(create_api_key(replica_settings, name=who))}"}
        for who in ("writer", "reader")
    }


@pytest.fixture(scope="module")
def worker(
    replica_settings: Settings, service_env: dict[str, str], tmp_path_factory: Any
) -> Iterator[Proc]:
    """`conveyor worker` for imports and reports, with the standby as replica and no lag bound
    (so nothing but "generation reads the primary" keeps a report from a lagging standby)."""
    env = {
        **service_env,
        "CONVEYOR_DATABASE_URL": str(replica_settings.database_url),
        "CONVEYOR_REPLICA_URL": str(replica_settings.replica_url),
        "CONVEYOR_BROKER_URL": str(replica_settings.broker_url),
        "CONVEYOR_IMPORTS__STORAGE_DIR": replica_settings.imports.storage_dir,
        "CONVEYOR_REPLICAS__MAX_LAG_SECONDS": "86400",
    }
    log = tmp_path_factory.mktemp("replica-worker") / "worker.log"
    proc = Proc(
        ["worker", "--queues", "imports,reports", "--concurrency", "2", "--pool", "threads"],
        env,
        log,
    )
    try:
        proc.wait_for_log(" ready.", timeout=90)
        yield proc
    finally:
        proc.stop()


@contextlib.asynccontextmanager
async def api(settings: Settings, celery: Any = None) -> AsyncIterator[httpx.AsyncClient]:
    """The API on a real uvicorn with one keep-alive connection (keys passed per request)."""
    app = create_app(settings)
    try:
        async with serve(app) as http:
            yield http
    finally:
        await app.state.container.registry.dispose()


# ---- helpers ---------------------------------------------------------------------------------


def counter(name: str, **labels: str) -> float:
    """A Prometheus sample of this process (the API runs in it)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def replica_reads(target: str) -> float:
    return counter("conveyor_replica_reads_total", domain="imports", target=target)


def fallbacks(reason: str) -> float:
    return counter("conveyor_replica_fallbacks_total", domain="imports", reason=reason)


async def ok(response: Any) -> Any:
    response = await response
    assert response.status_code == 200, (response.request.url, response.text)
    return response


async def dataset_names(http: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, str]:
    listed = await ok(http.get("/v1/datasets", headers=headers, params={"page_size": 1000}))
    return {d["id"]: d["display_name"] for d in listed.json()["datasets"]}


async def new_dataset(
    http: httpx.AsyncClient, headers: dict[str, str], name: str
) -> httpx.Response:
    body = {"display_name": name, "fields": FIELDS, "key_field": "id"}
    return await ok(http.post("/v1/datasets", headers=headers, json=body))


async def import_rows(
    http: httpx.AsyncClient, headers: dict[str, str], dataset_id: str, rows: int, bad_every: int
) -> dict[str, Any]:
    """Uploads a CSV (id, amount; every ``bad_every``-th amount invalid) and waits for it."""
    lines = ["id,amount"] + [
        f"r{i},{'oops' if bad_every and i % bad_every == 0 else i}" for i in range(1, rows + 1)
    ]
    data = ("\n".join(lines) + "\n").encode()
    created = await ok(
        http.post(
            f"/v1/datasets/{dataset_id}/imports",
            headers=headers,
            files={"file": ("rows.csv", data, "text/csv")},
        )
    )
    name = op_path(created.json()["name"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        waited = await ok(
            http.post(f"/v1/operations/{name}:wait", headers=headers, json={"timeout": 5})
        )
        if waited.json()["done"]:
            done = waited.json()
            assert done["metadata"]["state"] == "SUCCEEDED", done
            return dict(done)
    raise AssertionError(f"import {name} not done in 60 s")


# ---- the tests -------------------------------------------------------------------------------


async def test_lists_stay_within_the_max_lag_and_an_idle_primary_is_no_lag(
    cluster, replica_settings, keys
):
    writer, reader = keys["writer"], keys["reader"]
    async with api(replica_settings) as http:
        created = await new_dataset(http, writer, "before")
        dataset_id = created.json()["id"]
        port = local_port(created)
        await cluster.wait_replayed()

        # No writes for longer than the bound: the last replayed commit is older than MAX_LAG,
        # yet the standby is current (same WAL position), so lists still read it.
        await asyncio.sleep(MAX_LAG + 0.5)
        age = await cluster.fetchval(
            cluster.standby_port,
            "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())",
        )
        assert age > MAX_LAG, "positive control: a replay-timestamp lag would be over the bound"
        replica_before, lag_before = replica_reads("replica"), fallbacks("lag")
        assert (await dataset_names(http, reader))[dataset_id] == "before"
        assert replica_reads("replica") > replica_before
        assert fallbacks("lag") == lag_before
        assert counter("conveyor_replica_lag_seconds", domain="imports") == 0.0

        await cluster.pause_replay()
        try:
            renamed = await ok(
                http.patch(
                    f"/v1/datasets/{dataset_id}", headers=writer, json={"display_name": "after"}
                )
            )
            paused_at = time.monotonic()
            assert renamed.json()["display_name"] == "after"
            # Another caller may see the old name, but only within the bound...
            assert (await dataset_names(http, reader))[dataset_id] == "before"
            # ...after which its lists read the primary, replay still paused.
            while (await dataset_names(http, reader))[dataset_id] != "after":
                assert time.monotonic() - paused_at < MAX_LAG + 3, "stale beyond the max lag"
                await asyncio.sleep(0.1)
            assert fallbacks("lag") > lag_before
            assert counter("conveyor_replica_lag_seconds", domain="imports") > MAX_LAG
            assert counter("conveyor_replica_lag_bytes", domain="imports") > 0
            assert (
                await cluster.fetchval(
                    cluster.standby_port, "SELECT pg_get_wal_replay_pause_state()"
                )
                == "paused"
            )
        finally:
            await cluster.resume_replay()
        await cluster.wait_replayed()
        replica_before = replica_reads("replica")
        await asyncio.sleep(0.3)  # the next lag check sees the standby current again
        assert (await dataset_names(http, reader))[dataset_id] == "after"
        assert replica_reads("replica") > replica_before
        last = await ok(http.get("/healthz"))
        assert local_port(last) == port, "the keep-alive connection was replaced"


async def test_single_reads_and_a_writers_lists_see_writes_the_standby_has_not_replayed(
    cluster, replica_settings, keys, worker
):
    writer, reader = keys["writer"], keys["reader"]
    # No lag bound: only read-your-writes routing can show these writes while replay is paused.
    unbounded = replica_settings.model_copy(
        update={"replicas": replica_settings.replicas.model_copy(update={"max_lag_seconds": 86400})}
    )
    async with api(unbounded) as http:
        dataset = (await new_dataset(http, writer, "ryw")).json()
        await cluster.wait_replayed()
        await asyncio.sleep(0.3)
        await cluster.pause_replay()
        try:
            created = await new_dataset(http, writer, "made while paused")
            new_id = created.json()["id"]
            token = created.headers["x-conveyor-consistency-token"]
            ryw_before = fallbacks("read_your_writes")
            assert new_id in await dataset_names(http, writer)  # the writer's own list
            assert fallbacks("read_your_writes") > ryw_before
            assert new_id not in await dataset_names(http, reader)  # positive control: stale
            with_token = {**reader, "x-conveyor-consistency-token": token}
            assert new_id in await dataset_names(http, with_token)
            await ok(http.get(f"/v1/datasets/{new_id}", headers=reader))  # single resource

            done = await import_rows(http, writer, dataset["id"], rows=5, bad_every=0)
            records = f"/v1/datasets/{dataset['id']}/records"
            # The record a finished import wrote: 200 for anyone, from the primary.
            record = await ok(http.get(f"{records}/r3", headers=reader))
            assert record.json()["key"] == "r3"
            stale = await ok(http.get(records, headers=reader))
            assert stale.json()["records"] == []  # positive control: the standby has no rows
            mine = await ok(http.get(records, headers=writer))  # the writer's :wait was a write
            assert [r["key"] for r in mine.json()["records"]] == ["r1", "r2", "r3", "r4", "r5"]
            imports = await ok(http.get(f"/v1/datasets/{dataset['id']}/imports", headers=writer))
            assert [i["name"] for i in imports.json()["imports"]] == [done["metadata"]["target"]]
        finally:
            await cluster.resume_replay()

        bad = await http.get(
            "/v1/datasets", headers={**reader, "x-conveyor-consistency-token": "x"}
        )
        assert bad.status_code == 400, bad.text
        assert "x-conveyor-consistency-token" in bad.json()["error"]["message"]


async def test_a_report_generated_while_the_standby_lags_counts_the_latest_import(
    cluster, replica_settings, keys, worker
):
    writer = keys["writer"]
    async with api(replica_settings) as http:
        dataset = (await new_dataset(http, writer, "reported")).json()
        await cluster.wait_replayed()
        await cluster.pause_replay()
        try:
            await import_rows(http, writer, dataset["id"], rows=40, bad_every=10)
            deadline = time.monotonic() + 30
            while not await query(
                replica_settings.database_url,  # the primary
                "SELECT 1 FROM reports.dataset_daily WHERE dataset_id = :d",
                d=dataset["id"],
            ):
                assert time.monotonic() < deadline, "the import was never tallied"
                await asyncio.sleep(0.1)
            assert not await query(
                str(replica_settings.replica_url),
                "SELECT 1 FROM reports.dataset_daily WHERE dataset_id = :d",
                d=dataset["id"],
            ), "positive control: the standby has not replayed the tally"
            report = await ok(
                http.post(
                    "/v1/reports",
                    headers=writer,
                    json={"type": "dataset_daily", "period": "today", "format": "csv"},
                )
            )
            name = op_path(report.json()["name"])
            waited = await ok(
                http.post(f"/v1/operations/{name}:wait", headers=writer, json={"timeout": 30})
            )
            done = waited.json()
            assert done["metadata"]["state"] == "SUCCEEDED", done
            download = await ok(http.get(done["response"]["download_uri"], headers=writer))
        finally:
            await cluster.resume_replay()
    rows = {r["dataset_id"]: r for r in csv.DictReader(io.StringIO(download.text))}
    assert dataset["id"] in rows, download.text
    assert (rows[dataset["id"]]["rows_accepted"], rows[dataset["id"]]["rows_rejected"]) == (
        "36",
        "4",
    )


async def test_reads_fall_back_to_the_primary_while_the_standby_is_down(
    cluster, replica_settings, keys, worker, caplog
):
    caplog.set_level(logging.INFO)
    writer, reader = keys["writer"], keys["reader"]
    async with api(replica_settings) as http:
        dataset = (await new_dataset(http, writer, "fallback")).json()
        done = await import_rows(http, writer, dataset["id"], rows=30, bad_every=10)
        errors_uri = done["response"]["errors_uri"]
        records = f"/v1/datasets/{dataset['id']}/records"
        await cluster.wait_replayed()

        async def read_everything(headers: dict[str, str]) -> dict[str, Any]:
            listed = await ok(http.get(records, headers=headers))
            one = await ok(http.get(f"{records}/r7", headers=headers))
            as_json = await ok(
                http.get(errors_uri, headers={**headers, "accept": "application/json"})
            )
            as_csv = await ok(http.get(errors_uri, headers=headers))
            names = await dataset_names(http, headers)
            operations = await ok(
                http.get(
                    "/v1/operations",
                    params={"filter": 'metadata.domain = "imports"', "page_size": 100},
                    headers=headers,
                )
            )
            return {
                "operations": sorted(o["name"] for o in operations.json()["operations"]),
                "records": [r["key"] for r in listed.json()["records"]],
                "record": one.json()["key"],
                "errors": [e["line"] for e in as_json.json()["errors"]],
                "csv": [int(r[0]) for r in list(csv.reader(io.StringIO(as_csv.text)))[1:]],
                "dataset": names[dataset["id"]],
                "port": local_port(as_csv),
            }

        replica_before = replica_reads("replica")
        healthy = await read_everything(reader)
        assert replica_reads("replica") > replica_before  # positive control: the standby served
        assert done["name"] in healthy["operations"]  # the operations list, from the standby too
        assert healthy["errors"] == healthy["csv"] == [11, 21, 31]
        assert len(healthy["records"]) == 27

        cluster.stop_standby()
        unreachable, primary_before = fallbacks("unreachable"), replica_reads("primary")
        down = await read_everything(reader)
        assert down == healthy  # same answers, same connection
        assert fallbacks("unreachable") > unreachable
        assert replica_reads("primary") > primary_before
        assert counter("conveyor_replica_up", domain="imports") == 0.0
        assert counter("conveyor_replica_errors_total", domain="imports") > 0
        breaker = fallbacks("breaker_open")
        await read_everything(reader)
        assert fallbacks("breaker_open") > breaker  # no new connection attempt per read

        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["replicas"]["imports"].startswith("unreachable")
        exposition = (await ok(http.get("/metrics"))).text
        for name in (
            "conveyor_replica_fallbacks_total",
            "conveyor_replica_lag_seconds",
            "conveyor_replica_errors_total",
            "conveyor_replica_up",
        ):
            assert name in exposition

        cluster.stop_primary()
        standby_started = False
        try:
            outage = await http.get("/v1/datasets", headers=reader)
            assert outage.status_code == 503, outage.text
            error = outage.json()["error"]
            assert error["status"] == "UNAVAILABLE"
            assert "imports primary database" in error["message"], error
            assert "replica" in error["message"], error
            assert error["details"][0]["reason"] == "DEPENDENCY_UNAVAILABLE", error
            assert outage.headers["retry-after"] == "1"
            after = await ok(http.get("/healthz"))
            assert local_port(after) == healthy["port"], "the 503 closed the connection"

            # The standby back while the primary is still down: a list it can answer alone
            # (the key is cached) comes from it rather than failing.
            cluster.start_standby()
            standby_started = True
            await asyncio.sleep(REPLICAS["retry_seconds"] + 0.2)  # the breaker closes
            replica_before = replica_reads("replica")
            assert (await dataset_names(http, reader))[dataset["id"]] == "fallback"
            assert replica_reads("replica") > replica_before
        finally:
            cluster.start_primary()
            if not standby_started:
                cluster.start_standby()

        await cluster.wait_replayed()
        replica_before = replica_reads("replica")
        deadline = time.monotonic() + 15
        while replica_reads("replica") == replica_before:  # back on the standby by itself
            assert time.monotonic() < deadline, "reads never returned to the standby"
            await ok(http.get(records, headers=reader))
            await asyncio.sleep(0.2)
        ready = await ok(http.get("/readyz"))
        assert ready.json()["replicas"]["imports"] == "ok"
        noise = [r.getMessage() for r in caplog.records if r.exc_info]
        assert not noise, noise  # outages are one-line warnings, never tracebacks
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("read replica of" in w and "failed" in w for w in warnings), warnings
        assert counter("conveyor_replica_up", domain="imports") == 1.0
        assert (await read_everything(reader))["port"] == healthy["port"]
