"""reports: list indexes (tenant, filtered column, create_time, id) and retention indexes.

Revision ID: reports_0006
Revises: reports_0005
Create Date: 2026-12-04
"""

from alembic import op

from app.migrations.baseline import add_scale_indexes, drop_scale_indexes

revision = "reports_0006"
down_revision = "reports_0005"
branch_labels = None
depends_on = None
SCHEMA = "reports"


def upgrade() -> None:
    add_scale_indexes(SCHEMA)
    op.drop_index("ix_reports_tenant_id", "reports", schema=SCHEMA)
    for suffix, columns in (
        ("create_time", []),
        ("type", ["type"]),
        ("format", ["format"]),
        ("type_format", ["type", "format"]),
    ):
        op.create_index(
            f"ix_reports_tenant_{suffix}",
            "reports",
            ["tenant", *columns, "create_time", "id"],
            schema=SCHEMA,
        )


def downgrade() -> None:
    for suffix in ("create_time", "type", "format", "type_format"):
        op.drop_index(f"ix_reports_tenant_{suffix}", "reports", schema=SCHEMA)
    op.create_index("ix_reports_tenant_id", "reports", ["tenant", "id"], schema=SCHEMA)
    drop_scale_indexes(SCHEMA)
