"""Regression guard of a small import's fixed cost (issue #15, "linear from 10k to 1M rows"):
PostgreSQL round trips of the worker's ``imports.run`` for a one-chunk import, counted on the
wire (tests/support/roundtrips.py), through the real service path.

A one-chunk import runs claim, split, chunk and finalize in one task; what it costs beyond
the COPY is a fixed number of statements, transactions and prepares. Counts are stable where
times are not: a change that adds a statement, a transaction, a re-prepare (a DDL construct run
through SQLAlchemy re-prepares every statement of the engine) or a pre-ping fails here with
the new count.
"""

from __future__ import annotations

import pathlib
import urllib.parse
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from app.config import Settings
from app.config.sections.imports import ImportsSettings
from app.container import Container
from app.db import EngineRegistry
from domains.imports.model import FieldDef
from domains.imports.service import ImportsService
from domains.shared.clock import utcnow
from tests.support.imports import FIELDS, generate_csv
from tests.support.roundtrips import RoundTripCounter

INTO_EMPTY_DATASET = 30
"""One-chunk import into a dataset without records (direct load), the whole ``imports.run``
(170 before issue #15's cuts). Statements, by step:

- claim (fused ``UPDATE ... RETURNING``) and the import to RUNNING with its dataset (one CTE),
  each alone in autocommit;
- split, one transaction: the import's counts, the chunks and the records probe in one CTE
  (prepared once per dataset), the load table's DDL (driver, one simple query);
- chunk, one transaction: the operation ``FOR KEY SHARE`` with the relaxed commit, the chunk
  ``FOR UPDATE`` with the load-table probe, COPY of the rows and of the row errors, DONE and the
  heartbeat (with the progress, known for one chunk) in one CTE;
- finalize: its read (one statement, autocommit); the swap's transaction (operation
  ``FOR KEY SHARE``, import ``FOR UPDATE``, load table and chunk sums in one statement, the swap
  as one batch, chunks MERGED); the finish's transaction (operation ``FOR UPDATE``, import
  ``FOR UPDATE`` with its chunk sums, import and ``record_count`` in one CTE, the staging
  lookup, the outbox row, the operation).

Plus BEGIN and COMMIT of each transaction and the COPY protocol's turns. No statement is
prepared twice: the import's DDL runs on the driver, not through SQLAlchemy (whose asyncpg
dialect re-prepares every statement of the engine after any DDL it runs).
"""

INTO_DATASET_WITH_RECORDS = 33
"""One-chunk import into a dataset that holds records: per-chunk staging and a merge by key
(154 before issue #15's cuts)."""

ROWS = 2000
"""Rows of the file (one chunk; every 100th row invalid, so row errors are written too)."""


@pytest.fixture
async def counted(
    settings: Settings, tmp_path: pathlib.Path
) -> AsyncIterator[tuple[ImportsService, ImportsService, RoundTripCounter]]:
    """The worker's imports service behind the round-trip counter, and the API's apart (its
    DDL, a dataset's records table, happens in another process in production)."""
    parts = urllib.parse.urlsplit(settings.database_url or "")
    start = utcnow()
    section = ImportsSettings(storage_dir=str(tmp_path), chunk_rows=50_000)
    async with RoundTripCounter(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        worker_settings = settings.model_copy(
            update={
                "database_url": proxy.url(settings.database_url or ""),
                "imports": section,
                # No throttled progress write and no keepalive beat within a test's import:
                # the count is the import's own statements.
                "progress_interval_seconds": 60.0,
                "operation_lease_seconds": 60.0,
            }
        )
        worker = EngineRegistry(worker_settings)
        api = EngineRegistry(settings.model_copy(update={"imports": section}))
        try:
            yield (
                Container(worker_settings, worker).imports,
                Container(api.settings, api).imports,
                proxy,
            )
        finally:
            # This test's ImportCompleted events stay unsent (no publisher here): drop them, so
            # that a later test relaying the imports outbox finds only its own.
            async with api.engine("imports").begin() as conn:
                await conn.execute(
                    sa.text(
                        "DELETE FROM imports.outbox WHERE sent_time IS NULL"
                        " AND created_time >= :start"
                    ),
                    {"start": start},
                )
            await worker.dispose()
            await api.dispose()


async def _submit(api: ImportsService, data: bytes, dataset_id: object = None) -> object:
    if dataset_id is None:
        fields = [FieldDef.from_dict(f) for f in FIELDS]
        dataset = await api.create_dataset(
            tenant="perf", display_name="d", fields=fields, key_field="id"
        )
        dataset_id = dataset.id
    writer = api.store.writer()
    writer.write(data)
    op = await api.create_import(tenant="perf", dataset_id=dataset_id, stored=await writer.commit())
    return dataset_id, op.id


async def test_round_trips_of_a_one_chunk_import_in_the_worker(
    counted: tuple[ImportsService, ImportsService, RoundTripCounter],
) -> None:
    worker, api, proxy = counted
    data = generate_csv(ROWS).data

    async def run(dataset_id: object = None) -> tuple[object, int]:
        dataset_id, op_id = await _submit(api, data, dataset_id)
        before = proxy.turns
        response = await worker.run_import(op_id)  # type: ignore[arg-type]
        turns = proxy.turns - before
        assert "launch" not in response, "one chunk: the run processes and finalizes it"
        assert (response["rows_total"], response["rows_rejected"]) == (ROWS, ROWS // 100)
        return dataset_id, turns

    for _ in range(2):  # warm up: connections opened, statements prepared
        dataset_id, _ = await run()
        await run(dataset_id)

    direct, upserts = [], []
    for _ in range(3):
        dataset_id, turns = await run()
        direct.append(turns)
        _, turns = await run(dataset_id)
        upserts.append(turns)

    assert direct == [INTO_EMPTY_DATASET] * 3, f"round trips, into an empty dataset: {direct}"
    assert upserts == [INTO_DATASET_WITH_RECORDS] * 3, (
        f"round trips, into a dataset with records: {upserts}"
    )
