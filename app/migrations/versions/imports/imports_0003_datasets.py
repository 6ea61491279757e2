"""imports: datasets, imports, chunks, staged records, row errors and records.

Revision ID: imports_0003
Revises: imports_0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "imports_0003"
down_revision = "imports_0002"
branch_labels = None
depends_on = None
SCHEMA = "imports"


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("fields", pg.JSONB, nullable=False),
        sa.Column("key_field", sa.Text, nullable=False),
        sa.Column("source_uri", sa.Text),
        sa.Column("record_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        schema=SCHEMA,
    )
    op.create_index("ix_datasets_tenant_id", "datasets", ["tenant", "id"], schema=SCHEMA)
    op.create_table(
        "imports",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
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
        sa.PrimaryKeyConstraint("id", name="pk_imports"),
        schema=SCHEMA,
    )
    op.create_index("ix_imports_dataset_id_id", "imports", ["dataset_id", "id"], schema=SCHEMA)
    op.create_index("ix_imports_operation_id", "imports", ["operation_id"], schema=SCHEMA)
    op.create_table(
        "import_chunks",
        sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        sa.Column("start_offset", sa.BigInteger, nullable=False),
        sa.Column("end_offset", sa.BigInteger, nullable=False),
        sa.Column("first_line", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("rows_accepted", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_rejected", sa.Integer, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("import_id", "chunk_no", name="pk_import_chunks"),
        schema=SCHEMA,
    )
    op.create_table(
        "staged_records",
        sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("data", pg.JSONB, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_staged_records_import_id", "staged_records", ["import_id"], schema=SCHEMA)
    op.create_table(
        "row_errors",
        sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("raw_value", sa.Text, nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_row_errors_import_id_line", "row_errors", ["import_id", "line"], schema=SCHEMA
    )
    op.create_table(
        "records",
        sa.Column("dataset_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("data", pg.JSONB, nullable=False),
        sa.Column("import_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "key", name="pk_records"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    for table in (
        "records",
        "row_errors",
        "staged_records",
        "import_chunks",
        "imports",
        "datasets",
    ):
        op.drop_table(table, schema=SCHEMA)
