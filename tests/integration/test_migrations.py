"""Integration: the real Alembic migrations, per domain schema, on fresh databases.

These tests are sync on purpose: Alembic's env.py runs its own event loop (asyncio.run).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from app.config import DOMAINS, Settings, load_settings
from app.container import DOMAIN_TABLES
from app.db import migrate
from domains.shared import partitions
from tests.support import services


@pytest.fixture
def fresh_settings(admin_url: str) -> Iterator[Settings]:
    """Settings on a brand-new, empty database (dropped at the end)."""
    name = f"conveyor_test_mig_{secrets.token_hex(4)}"
    url = services.create_database(admin_url, name)
    try:
        yield load_settings(database_url=url, broker_url="redis://unused")
    finally:
        services.drop_database(admin_url, name)


def run_sync(url: str, fn: Callable[[sa.Connection], Any]) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return await conn.run_sync(fn)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def snapshot(url: str) -> dict[str, Any]:
    """Every domain schema's tables, indexes, constraints and version."""

    def read(conn: sa.Connection) -> dict[str, Any]:
        inspector = sa.inspect(conn)
        result: dict[str, Any] = {}
        for schema in DOMAINS:
            if schema not in inspector.get_schema_names():
                continue
            tables = {}
            for table in sorted(inspector.get_table_names(schema=schema)):
                tables[table] = {
                    "columns": [c["name"] for c in inspector.get_columns(table, schema=schema)],
                    "indexes": sorted(
                        i["name"] for i in inspector.get_indexes(table, schema=schema)
                    ),
                    "checks": sorted(
                        c["name"] for c in inspector.get_check_constraints(table, schema=schema)
                    ),
                    "pk": inspector.get_pk_constraint(table, schema=schema)["constrained_columns"],
                }
            versions = []
            if "alembic_version" in tables:
                versions = list(
                    conn.execute(sa.text(f'SELECT version_num FROM "{schema}".alembic_version'))
                    .scalars()
                    .all()
                )
            result[schema] = {"tables": tables, "versions": versions}
        return result

    return run_sync(url, read)


def heads(settings: Settings) -> dict[str, str]:
    return {domain: migrate.revisions(settings, domain)[-1] for domain in DOMAINS}


def test_upgrade_twice_is_a_no_op(fresh_settings: Settings):
    url = str(fresh_settings.database_url)
    migrate.upgrade(fresh_settings)
    first = snapshot(url)
    migrate.upgrade(fresh_settings)
    assert snapshot(url) == first
    assert set(first) == set(DOMAINS)
    for domain, head in heads(fresh_settings).items():
        assert first[domain]["versions"] == [head]


def test_each_schema_has_its_own_version_table_at_head(fresh_settings: Settings):
    migrate.upgrade(fresh_settings)
    url = str(fresh_settings.database_url)

    def version_tables(conn: sa.Connection) -> list[tuple[str, str]]:
        rows = conn.execute(
            sa.text(
                "SELECT schemaname, tablename FROM pg_tables WHERE tablename = 'alembic_version'"
                " ORDER BY schemaname"
            )
        )
        return [(r[0], r[1]) for r in rows]

    # One per domain schema, none in public.
    assert sorted(run_sync(url, version_tables)) == sorted(
        (domain, "alembic_version") for domain in DOMAINS
    )
    state = snapshot(url)
    for domain, head in heads(fresh_settings).items():
        assert head.startswith(f"{domain}_")
        assert state[domain]["versions"] == [head]


def test_every_domain_schema_has_operations_and_outbox(fresh_settings: Settings):
    migrate.upgrade(fresh_settings)
    state = snapshot(str(fresh_settings.database_url))
    for domain in DOMAINS:
        assert {"operations", "outbox", "alembic_version"} <= set(state[domain]["tables"])
    assert "pings" in state["platform"]["tables"]
    # Request ids are unique per tenant in operation_requests (operations is partitioned).
    assert state["imports"]["tables"]["operation_requests"]["pk"] == ["tenant", "request_id"]
    today = dt.datetime.now(dt.UTC).date()
    for table in ("operations", "outbox"):
        assert {f"{table}_p_legacy", f"{table}_p_default", f"{table}_p{today:%Y%m%d}"} <= set(
            state["webhooks"]["tables"]
        )
    assert "ck_operations_state" in state["reports"]["tables"]["operations"]["checks"]


def test_migrating_one_domain_leaves_the_others_untouched(fresh_settings: Settings):
    migrate.upgrade(fresh_settings, domains=["webhooks"])
    state = snapshot(str(fresh_settings.database_url))
    assert set(state) == {"webhooks"}


@pytest.mark.parametrize("domain", DOMAINS)
def test_stairway_each_revision_goes_up_down_and_up_again(fresh_settings: Settings, domain: str):
    url = str(fresh_settings.database_url)
    revisions = migrate.revisions(fresh_settings, domain)
    assert revisions, f"{domain} has no migrations"
    migrate.upgrade(fresh_settings, domains=[domain], revision="head")
    at_head = snapshot(url)[domain]
    previous = "base"
    # Step by step: each revision up, back down to the one before, and up again.
    migrate.downgrade(fresh_settings, domain, "base")
    for revision in revisions:
        migrate.upgrade(fresh_settings, domains=[domain], revision=revision)
        migrate.downgrade(fresh_settings, domain, previous)
        migrate.upgrade(fresh_settings, domains=[domain], revision=revision)
        previous = revision
    assert snapshot(url)[domain] == at_head
    # And the whole way: head -> base -> head.
    migrate.downgrade(fresh_settings, domain, "base")
    at_base = snapshot(url)[domain]
    assert set(at_base["tables"]) == {"alembic_version"}
    assert at_base["versions"] == []
    migrate.upgrade(fresh_settings, domains=[domain])
    assert snapshot(url)[domain] == at_head


def _is_partition(name: str | None, type_: str) -> bool:
    return type_ == "table" and any(
        partitions.is_partition_name(table, name or "") for table in ("operations", "outbox")
    )


def test_migrated_schema_matches_the_table_definitions(fresh_settings: Settings):
    """No drift between the migrations and the tables the repositories query."""
    migrate.upgrade(fresh_settings)

    def diff(conn: sa.Connection) -> dict[str, list[Any]]:
        found = {}
        for domain in DOMAINS:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": True,
                    "version_table_schema": domain,
                    "include_name": lambda name, type_, parent, d=domain: (
                        name == d if type_ == "schema" else not _is_partition(name, type_)
                    ),
                },
            )
            changes = compare_metadata(context, DOMAIN_TABLES[domain].metadata)
            if changes:
                found[domain] = changes
        return found

    assert run_sync(str(fresh_settings.database_url), diff) == {}


def test_typed_records_migration_keeps_existing_jsonb_records_up_and_down(
    fresh_settings: Settings,
):
    url = str(fresh_settings.database_url)
    migrate.upgrade(fresh_settings, domains=["imports"], revision="imports_0008")
    dataset_id = "01900000-0000-7000-8000-000000000001"
    import_id = "01900000-0000-7000-8000-0000000000aa"
    fields = [
        {"name": "id", "type": "string", "required": True, "values": []},
        {"name": "n", "type": "number", "required": False, "values": []},
        {"name": "q", "type": "integer", "required": False, "values": []},
        {"name": "ok", "type": "boolean", "required": False, "values": []},
        {"name": "day", "type": "date", "required": False, "values": []},
        {"name": "at", "type": "timestamp", "required": False, "values": []},
        {"name": "c", "type": "enum", "required": False, "values": ["A", "B"], "indexed": True},
    ]
    stored = {
        "r1": {
            "id": "r1",
            "n": 2.5,
            "q": 2**62,
            "ok": True,
            "day": "2026-01-31",
            "at": "2026-01-31T12:00:00+00:00",
            "c": "A",
        },
        "r2": {"id": "r2", "n": 7, "at": "2026-02-01T00:00:00.123400+00:00"},
    }

    def seed(conn: sa.Connection) -> None:
        conn.execute(
            sa.text(
                "INSERT INTO imports.datasets (id, tenant, display_name, fields, key_field,"
                " record_count, create_time, update_time, request_id)"
                " VALUES (CAST(:d AS uuid), 't1', 'Old', CAST(:f AS jsonb), 'id', 2, now(),"
                " now(), 'req-1')"
            ),
            {"d": dataset_id, "f": json.dumps(fields)},
        )
        for key, data in stored.items():
            conn.execute(
                sa.text(
                    "INSERT INTO imports.records (dataset_id, key, data, import_id, update_time)"
                    " VALUES (CAST(:d AS uuid), :k, CAST(:data AS jsonb), CAST(:i AS uuid),"
                    " now())"
                ),
                {"d": dataset_id, "k": key, "data": json.dumps(data), "i": import_id},
            )
        conn.commit()

    run_sync(url, seed)
    migrate.upgrade(fresh_settings, domains=["imports"])
    table = f'imports."records_{dataset_id.replace("-", "")}"'

    def typed(conn: sa.Connection) -> list[Any]:
        rows = conn.execute(
            sa.text(
                f'SELECT "$key", "$import_id"::text, n, q, ok, day::text, c FROM {table} ORDER BY 1'
            )
        )
        return [tuple(r) for r in rows]

    assert run_sync(url, typed) == [
        ("r1", import_id, 2.5, 2**62, True, "2026-01-31", "A"),
        ("r2", import_id, 7.0, None, None, None, None),
    ]
    assert "records" not in snapshot(url)["imports"]["tables"]

    def request_id(conn: sa.Connection) -> Any:
        return conn.execute(sa.text("SELECT request_id FROM imports.datasets")).scalar()

    assert run_sync(url, request_id) == "req-1"
    migrate.downgrade(fresh_settings, "imports", "imports_0008")

    def jsonb(conn: sa.Connection) -> dict[str, Any]:
        rows = conn.execute(sa.text("SELECT key, data FROM imports.records"))
        return {r[0]: r[1] for r in rows}

    assert run_sync(url, jsonb) == stored
    assert run_sync(url, request_id) == "req-1"
    migrate.upgrade(fresh_settings, domains=["imports"])
    assert len(run_sync(url, typed)) == 2


def test_latency_histogram_migration_keeps_every_sample_up_and_down(fresh_settings: Settings):
    url = str(fresh_settings.database_url)
    migrate.upgrade(fresh_settings, domains=["reports"], revision="reports_0008")
    samples = [12.34, 12.3, 12.31, 0.0, 1234.5, 7.0]

    def seed(conn: sa.Connection) -> None:
        for ms in samples:
            conn.execute(
                sa.text(
                    "INSERT INTO reports.delivery_latencies (event_id, tenant, endpoint_id, day,"
                    " latency_ms) VALUES (gen_random_uuid(), 't1', 'ep', DATE '2026-11-24', :ms)"
                ),
                {"ms": ms},
            )
        conn.commit()

    def counts(conn: sa.Connection) -> list[Any]:
        rows = conn.execute(
            sa.text(
                "SELECT latency_ms, samples FROM reports.delivery_latency_counts"
                " WHERE tenant = 't1' ORDER BY 1"
            )
        )
        return [tuple(r) for r in rows]

    def old_samples(conn: sa.Connection) -> list[float]:
        rows = conn.execute(sa.text("SELECT latency_ms FROM reports.delivery_latencies"))
        return sorted(r[0] for r in rows)

    run_sync(url, seed)
    migrate.upgrade(fresh_settings, domains=["reports"])
    # Rounded to 3 significant digits, as new samples are (domains.reports.events).
    assert run_sync(url, counts) == [(0.0, 1), (7.0, 1), (12.3, 3), (1230.0, 1)]
    migrate.downgrade(fresh_settings, "reports", "reports_0008")
    assert run_sync(url, old_samples) == [0.0, 7.0, 12.3, 12.3, 12.3, 1230.0]
