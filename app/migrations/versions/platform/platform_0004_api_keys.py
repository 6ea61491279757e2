"""platform: API keys (prefix + SHA-256 of the secret, never the secret); pings record a tenant.

Revision ID: platform_0004
Revises: platform_0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "platform_0004"
down_revision = "platform_0003"
branch_labels = None
depends_on = None
SCHEMA = "platform"


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("scopes", pg.JSONB, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True)),
        sa.Column("revoke_time", sa.DateTime(timezone=True)),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        schema=SCHEMA,
    )
    op.create_index("uq_api_keys_prefix", "api_keys", ["prefix"], unique=True, schema=SCHEMA)
    op.create_index("ix_api_keys_tenant", "api_keys", ["tenant"], schema=SCHEMA)
    # Pings made before tenancy belong to the default tenant.
    op.add_column(
        "pings",
        sa.Column("tenant", sa.Text, nullable=False, server_default="default"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("pings", "tenant", schema=SCHEMA)
    op.drop_index("ix_api_keys_tenant", table_name="api_keys", schema=SCHEMA)
    op.drop_index("uq_api_keys_prefix", table_name="api_keys", schema=SCHEMA)
    op.drop_table("api_keys", schema=SCHEMA)
