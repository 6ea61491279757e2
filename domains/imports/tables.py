"""Tables of the ``imports`` schema."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

from domains.operations.tables import operations_table
from domains.operations.unit_of_work import DomainTables
from domains.shared.tables import make_metadata, outbox_table

SCHEMA = "imports"
metadata = make_metadata(SCHEMA)
operations = operations_table(metadata)
outbox = outbox_table(metadata)
tables = DomainTables(schema=SCHEMA, metadata=metadata, operations=operations, outbox=outbox)

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text, nullable=False),
    sa.Column("fields", pg.JSONB, nullable=False),
    sa.Column("key_field", sa.Text, nullable=False),
    sa.Column("source_uri", sa.Text),
    sa.Column("record_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("request_hash", sa.Text),
    sa.Index("ix_datasets_tenant_id", "tenant", "id"),
    # AIP-155: one dataset per (tenant, request_id); concurrent twins meet here.
    sa.Index(
        "uq_datasets_tenant_request_id",
        "tenant",
        "request_id",
        unique=True,
        postgresql_where=sa.text("request_id IS NOT NULL"),
    ),
)

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("dataset_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("operation_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("format", sa.Text, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("file_path", sa.Text),
    sa.Column("source_uri", sa.Text),
    sa.Column("size_bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("sha256", sa.Text),
    sa.Column("rows_total", sa.BigInteger),
    sa.Column("rows_accepted", sa.BigInteger),
    sa.Column("rows_rejected", sa.BigInteger),
    sa.Column("chunks_total", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("complete_time", sa.DateTime(timezone=True)),
    sa.Column("columns", pg.JSONB),
    sa.Column("plain_path", sa.Text),
    sa.Column("encoding_errors", sa.Text, nullable=False, server_default="fail"),
    sa.Index("ix_imports_dataset_id_id", "dataset_id", "id"),
    sa.Index("ix_imports_operation_id", "operation_id"),
    # Retention finds finished imports still holding a file without walking the table.
    sa.Index(
        "ix_imports_complete_time",
        "complete_time",
        postgresql_where=sa.text("file_path IS NOT NULL"),
    ),
)

import_chunks = sa.Table(
    "import_chunks",
    metadata,
    sa.Column("import_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("chunk_no", sa.Integer, primary_key=True),
    sa.Column("start_offset", sa.BigInteger, nullable=False),
    sa.Column("end_offset", sa.BigInteger, nullable=False),
    sa.Column("first_line", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("rows_accepted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_rejected", sa.Integer, nullable=False, server_default="0"),
)

# Rows of running imports: invisible until finalize merges them into records in one transaction.
# No primary key or index beyond the import id: COPY speed matters more here.
staged_records = sa.Table(
    "staged_records",
    metadata,
    sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("chunk_no", sa.Integer, nullable=False),
    sa.Column("line", sa.BigInteger, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Index("ix_staged_records_import_id", "import_id"),
)

row_errors = sa.Table(
    "row_errors",
    metadata,
    sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("chunk_no", sa.Integer, nullable=False),
    sa.Column("line", sa.BigInteger, nullable=False),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw_value", sa.Text, nullable=False),
    sa.Index("ix_row_errors_import_id_line", "import_id", "line"),
)

records = sa.Table(
    "records",
    metadata,
    sa.Column("dataset_id", pg.UUID(as_uuid=True), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("data", pg.JSONB, nullable=False),
    sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
    sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
)
