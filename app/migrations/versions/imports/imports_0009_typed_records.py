"""imports: typed records, one table per dataset, instead of one jsonb ``records`` table.

Each dataset's records move to ``imports."records_<dataset hex>"``: bookkeeping columns
``$key`` (unique), ``$line``, ``$import_id``, ``$update_time`` and one column per declared
field of its type (string/enum text, integer bigint, number double precision, boolean, date,
timestamp timestamptz); fields declared ``indexed`` get an index. Then ``records`` is dropped.
``import_chunks.rows_inserted`` counts the records each chunk's merge inserted (chunks merge
concurrently, each in its own transaction).
The downgrade rebuilds ``records`` with the same jsonb objects (missing values left out) and
drops the typed tables. ``datasets.request_id`` (0008) is untouched.

Self-contained on purpose (no import of the domain code, which will change): the DDL below
is the table ``domains.imports.tables.records_table`` describes at this revision.

Revision ID: imports_0009
Revises: imports_0008
Create Date: 2026-12-05
"""

import hashlib
import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "imports_0009"
down_revision = "imports_0008"
branch_labels = None
depends_on = None
SCHEMA = "imports"

KEY, LINE, IMPORT_ID, UPDATE_TIME = "$key", "$line", "$import_id", "$update_time"
SQL_TYPES: dict[str, Any] = {
    "string": sa.Text,
    "enum": sa.Text,
    "integer": sa.BigInteger,
    "number": sa.Float(precision=53),
    "boolean": sa.Boolean,
    "date": sa.Date,
    "timestamp": sa.DateTime(timezone=True),
}
# jsonb_build_object takes at most 100 arguments: build the object in parts of 40 fields.
PART = 40

records = sa.Table(
    "records",
    sa.MetaData(),
    sa.Column("dataset_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    schema=SCHEMA,
)


def _typed(dataset_id: uuid.UUID, fields: list[dict[str, Any]]) -> sa.Table:
    name = f"records_{dataset_id.hex}"
    table = sa.Table(
        name,
        sa.MetaData(),
        sa.Column(KEY, sa.Text, nullable=False),
        sa.Column(LINE, sa.BigInteger, nullable=False),
        sa.Column(IMPORT_ID, pg.UUID(as_uuid=True), nullable=False),
        sa.Column(UPDATE_TIME, sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(str(f["name"]), SQL_TYPES[str(f["type"])]) for f in fields),
        schema=SCHEMA,
    )
    sa.Index(f"{name}_key", table.c[KEY], unique=True)
    for f in fields:
        if f.get("indexed"):
            digest = hashlib.sha256(str(f["name"]).encode()).hexdigest()[:16]
            sa.Index(f"ix_{dataset_id.hex}_{digest}", table.c[str(f["name"])])
    return table


def _datasets() -> list[tuple[uuid.UUID, list[dict[str, Any]]]]:
    rows = op.get_bind().execute(sa.text("SELECT id, fields FROM imports.datasets ORDER BY id"))
    return [(row[0], list(row[1])) for row in rows]


def upgrade() -> None:
    op.add_column(
        "import_chunks",
        sa.Column("rows_inserted", sa.Integer, nullable=False, server_default="0"),
        schema=SCHEMA,
    )
    bind = op.get_bind()
    for dataset_id, fields in _datasets():
        table = _typed(dataset_id, fields)
        table.create(bind)
        names = [str(f["name"]) for f in fields]
        source = sa.select(
            records.c.key,
            # Line 0: a version of an earlier import (the merge guard compares lines only
            # between versions of one import).
            sa.literal(0, sa.BigInteger),
            records.c.import_id,
            records.c.update_time,
            *(sa.cast(records.c.data[n].astext, table.c[n].type) for n in names),
        ).where(records.c.dataset_id == dataset_id)
        bind.execute(
            sa.insert(table).from_select([KEY, LINE, IMPORT_ID, UPDATE_TIME, *names], source)
        )
    op.drop_table("records", schema=SCHEMA)


def _json(column: Any, field_type: str) -> Any:
    if field_type != "timestamp":
        return column
    # Python's isoformat() in UTC, as the converters stored it: microseconds only if any.
    utc = sa.func.timezone("UTC", column)
    fraction = sa.case(
        (
            sa.cast(sa.func.date_part("microseconds", column), sa.BigInteger) % 1_000_000 != 0,
            sa.func.to_char(utc, ".US"),
        ),
        else_="",
    )
    return sa.func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS') + fraction + "+00:00"


def downgrade() -> None:
    bind = op.get_bind()
    records.create(bind)
    op.create_primary_key("pk_records", "records", ["dataset_id", "key"], schema=SCHEMA)
    for dataset_id, fields in _datasets():
        table = _typed(dataset_id, fields)
        parts = []
        for start in range(0, len(fields), PART):
            pairs: list[Any] = []
            for f in fields[start : start + PART]:
                name = str(f["name"])
                pairs += [sa.literal(name), _json(table.c[name], str(f["type"]))]
            parts.append(sa.func.jsonb_build_object(*pairs, type_=pg.JSONB))
        data: Any = parts[0]
        for part in parts[1:]:
            data = data.op("||")(part)
        source = sa.select(
            sa.literal(dataset_id, pg.UUID(as_uuid=True)),
            table.c[KEY],
            sa.func.jsonb_strip_nulls(data, type_=pg.JSONB),
            table.c[IMPORT_ID],
            table.c[UPDATE_TIME],
        )
        bind.execute(
            sa.insert(records).from_select(
                ["dataset_id", "key", "data", "import_id", "update_time"], source
            )
        )
        table.drop(bind)
    op.drop_column("import_chunks", "rows_inserted", schema=SCHEMA)
