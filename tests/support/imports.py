"""Helpers for imports tests: datasets, generated CSV files with known bad rows, uploads."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import itertools
import random
from typing import Any

import httpx

FIELDS: list[dict[str, Any]] = [
    {"name": "id", "type": "string", "required": True},
    {"name": "amount", "type": "number", "required": True},
    {"name": "qty", "type": "integer"},
    {"name": "country", "type": "enum", "values": ["DE", "FR", "US", "GB"]},
    {"name": "paid", "type": "boolean"},
    {"name": "ordered_on", "type": "date"},
    {"name": "created", "type": "timestamp"},
    {"name": "customer", "type": "string"},
    {"name": "score", "type": "number"},
    {"name": "note", "type": "string"},
]
"""Ten typed columns (the benchmark's shape too)."""

COLUMNS = [f["name"] for f in FIELDS]


@dataclasses.dataclass
class GeneratedCsv:
    """A generated CSV and what importing it must give.

    Attributes:
        data: The file.
        rows: Data rows.
        bad_lines: Line numbers of the invalid rows.
        expected: Valid rows by key.
    """

    data: bytes
    rows: int
    bad_lines: list[int]
    expected: dict[str, dict[str, Any]]


def row_values(i: int, rnd: random.Random) -> list[str]:
    """Returns the cells of a valid row ``i``."""
    day = dt.date(2026, 1, 1) + dt.timedelta(days=i % 365)
    return [
        f"k{i:08d}",
        f"{(i % 1000) + 0.5}",
        str(i % 50),
        ("DE", "FR", "US", "GB")[i % 4],
        "true" if i % 2 else "false",
        day.isoformat(),
        f"{day.isoformat()}T12:{i % 60:02d}:00Z",
        f"customer {i % 977}",
        f"{rnd.random():.4f}",
        "note, with comma" if i % 10 == 0 else "plain",
    ]


def generate_csv(rows: int, *, bad_every: int = 100, seed: int = 7) -> GeneratedCsv:
    """Generates a CSV with a header and ``rows`` rows; every ``bad_every``-th row is invalid
    (an amount that is not a number), so ``rows // bad_every`` rows are rejected.

    Args:
        rows: Data rows.
        bad_every: Period of invalid rows (0 for none).
        seed: Random seed.

    Returns:
        The file and the expected outcome.
    """
    rnd = random.Random(seed)
    out = io.StringIO()
    out.write(",".join(COLUMNS) + "\n")
    bad: list[int] = []
    expected: dict[str, dict[str, Any]] = {}
    for i in range(1, rows + 1):
        cells = row_values(i, rnd)
        line = i + 1
        if bad_every and i % bad_every == 0:
            cells[1] = "not-a-number"
            bad.append(line)
        else:
            expected[cells[0]] = {"amount": float(cells[1]), "country": cells[3]}
        out.write(",".join(f'"{c}"' if "," in c else c for c in cells) + "\n")
    return GeneratedCsv(out.getvalue().encode(), rows, bad, expected)


async def create_dataset(
    client: httpx.AsyncClient, *, fields: list[dict[str, Any]] | None = None, key_field: str = "id"
) -> dict[str, Any]:
    """Creates a dataset through the API and returns it."""
    response = await client.post(
        "/v1/datasets",
        json={"display_name": "Orders", "fields": fields or FIELDS, "key_field": key_field},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def upload(
    client: httpx.AsyncClient,
    dataset_id: str,
    data: bytes,
    *,
    filename: str = "orders.csv",
    request_id: str | None = None,
    format: str | None = None,
) -> httpx.Response:
    """Uploads a file as multipart/form-data."""
    form: dict[str, str] = {}
    if request_id:
        form["request_id"] = request_id
    if format:
        form["format"] = format
    return await client.post(
        f"/v1/datasets/{dataset_id}/imports",
        files={"file": (filename, data, "text/csv")},
        data=form,
    )


def columnar_matches_row_validator(
    fields: Any,
    key_field: str,
    columns: list[str],
    rows: list[tuple[int, list[str]]],
    **limits: Any,
) -> Any:
    """Validates ``rows`` with both validators and asserts the same outcome: counts, row errors
    (line, field, reason, raw value), and for every accepted row the same line, key and record.

    The columnar payload is typed COPY text (``line, $key`` then the CSV columns,
    ``\\N`` for NULL): each cell is read back as its column type would (numbers by value, so
    ``1e-07`` and ``1e-7`` are one number) and compared with the row validator's JSON record.

    Returns:
        The columnar result.
    """
    import json

    from domains.imports import parsing
    from domains.imports.columnar import ColumnarValidator

    row_validator = parsing.RowValidator(fields, key_field, columns, **limits)
    expected_staged, expected_errors, rejected = [], [], 0
    for line, cells in rows:
        result = row_validator.csv_row(line, cells)
        if isinstance(result, tuple):
            expected_staged.append((line, result[0], json.loads(result[1])))
        else:
            rejected += 1
            expected_errors += [(e.line, e.field, e.reason, e.raw_value) for e in result]
    got = ColumnarValidator(fields, key_field, columns, **limits).validate(rows, chunk_no=7)
    assert (got.accepted, got.rejected) == (len(expected_staged), rejected)
    assert sorted(got.errors) == sorted(expected_errors)
    types = {f.name: f.type for f in fields}
    staged = []
    for text in bytes(got.staged_copy).decode().split("\n")[:-1]:
        line, key, *cells = text.split("\t")
        assert len(cells) == len(columns)
        record = {
            name: _typed_cell(types[name], _copy_unescape(cell))
            for name, cell in zip(columns, cells, strict=True)
            if cell != "\\N"
        }
        staged.append((int(line), _copy_unescape(key), record))
    # The payload may be in key order rather than file order (see keys_sorted).
    by_line = sorted(staged, key=lambda s: s[0])
    assert by_line == sorted(
        (
            (line, key, {k: _typed_cell(types[k], v) for k, v in record.items()})
            for line, key, record in expected_staged
        ),
        key=lambda s: s[0],
    )
    keys = [key.encode() for _, key, _ in staged]
    if got.keys_sorted:
        assert all(a < b for a, b in itertools.pairwise(keys)), "keys_sorted: bytewise, distinct"
    elif keys:
        assert len(set(keys)) < len(keys), "distinct keys are always staged in key order"
        assert [s[0] for s in staged] == [s[0] for s in expected_staged], "file order"
    return got


def _typed_cell(field_type: str, value: Any) -> Any:
    """A value as its typed column holds it (text from COPY, or the JSON value)."""
    if field_type == "number":
        return float(value)
    if field_type == "integer":
        return int(value)
    if field_type == "boolean":
        return value if isinstance(value, bool) else value == "true"
    if field_type == "timestamp":
        return dt.datetime.fromisoformat(value)
    return value


def _copy_unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\":
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[value[i + 1]])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def staging_table(import_id: Any, chunk_no: int | None = None) -> str:
    """Returns the name of a chunk's staging table (``imports."staged_<hex>_<chunk>"``, dropped
    by its merge), or without ``chunk_no`` the common prefix of an import's staging tables
    (see :data:`STAGING_TABLES_SQL`)."""
    import uuid

    prefix = f"staged_{uuid.UUID(str(import_id)).hex}"
    return prefix if chunk_no is None else f"{prefix}_{chunk_no}"


STAGING_TABLES_SQL = "SELECT count(*) FROM pg_class WHERE left(relname, 39) = :n"
"""Counts an import's staging tables; ``n`` = :func:`staging_table` of the import."""


def records_table_sql(dataset_id: Any) -> str:
    """Returns the quoted name of a dataset's typed records table (hex digits only)."""
    import uuid as _uuid

    return f'imports."records_{_uuid.UUID(str(dataset_id)).hex}"'


def count_records_sql(dataset_id: Any) -> str:
    """Returns ``SELECT count(*)`` over a dataset's records table."""
    return f"SELECT count(*) FROM {records_table_sql(dataset_id)}"


def insert_record_sql(dataset_id: Any) -> str:
    """Returns an INSERT of one record given as ``:k``, ``:data`` (jsonb text), ``:i``.

    The JSON object's values are cast to the typed columns by ``jsonb_populate_record``.
    """
    table = records_table_sql(dataset_id)
    return (
        f"INSERT INTO {table} SELECT (jsonb_populate_record(NULL::{table},"
        " CAST(:data AS jsonb) || jsonb_build_object('$key', CAST(:k AS text), '$line', 0,"
        " '$import_id', CAST(:i AS uuid), '$update_time', now()))).*"
    )
