"""webhooks: endpoints, deliveries, attempts and received events.

Revision ID: webhooks_0003
Revises: webhooks_0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

revision = "webhooks_0003"
down_revision = "webhooks_0002"
branch_labels = None
depends_on = None
SCHEMA = "webhooks"
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "endpoints",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("event_types", pg.JSONB, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("disabled_reason", sa.Text),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("previous_secret", sa.Text),
        sa.Column("previous_secret_expire_time", TS),
        sa.Column("rate_limit", sa.Float),
        sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failing_since", TS),
        sa.Column("breaker_state", sa.Text, nullable=False, server_default="CLOSED"),
        sa.Column("breaker_until", TS),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_endpoints"),
        sa.CheckConstraint(
            "breaker_state IN ('CLOSED','OPEN','HALF_OPEN')", name="ck_endpoints_breaker_state"
        ),
        schema=SCHEMA,
    )
    op.create_index("ix_endpoints_tenant_id", "endpoints", ["tenant", "id"], schema=SCHEMA)
    op.create_index(
        "ix_endpoints_breaker_until",
        "endpoints",
        ["breaker_until"],
        schema=SCHEMA,
        postgresql_where=sa.text("breaker_state != 'CLOSED'"),
    )
    op.create_table(
        "deliveries",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("endpoint_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("event_type", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cycle_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_time", TS),
        sa.Column("lease_until", TS),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_error", sa.Text),
        sa.Column("create_time", TS, nullable=False),
        sa.Column("update_time", TS, nullable=False),
        sa.Column("end_time", TS),
        sa.PrimaryKeyConstraint("id", name="pk_deliveries"),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            [f"{SCHEMA}.endpoints.id"],
            name="fk_deliveries_endpoint_id_endpoints",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint(
            "state IN ('PENDING','SENDING','SUCCEEDED','FAILED','DEAD','PAUSED')",
            name="ck_deliveries_state",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "uq_deliveries_event_id_endpoint_id",
        "deliveries",
        ["event_id", "endpoint_id"],
        unique=True,
        schema=SCHEMA,
    )
    op.create_index(
        "ix_deliveries_endpoint_id_id", "deliveries", ["endpoint_id", "id"], schema=SCHEMA
    )
    op.create_index(
        "ix_deliveries_endpoint_id_state", "deliveries", ["endpoint_id", "state"], schema=SCHEMA
    )
    op.create_index(
        "ix_deliveries_lease_until",
        "deliveries",
        ["lease_until"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'SENDING'"),
    )
    op.create_index(
        "ix_deliveries_next_attempt_time",
        "deliveries",
        ["next_attempt_time"],
        schema=SCHEMA,
        postgresql_where=sa.text("state = 'PENDING'"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("delivery_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("time", TS, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("response_body", sa.Text, nullable=False, server_default=""),
        sa.Column("error", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_attempts"),
        sa.ForeignKeyConstraint(
            ["delivery_id"],
            [f"{SCHEMA}.deliveries.id"],
            name="fk_attempts_delivery_id_deliveries",
            ondelete="CASCADE",
        ),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_attempts_delivery_id_attempt", "attempts", ["delivery_id", "attempt"], schema=SCHEMA
    )
    op.create_table(
        "received_events",
        sa.Column("event_id", pg.UUID(as_uuid=True), nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("tenant", sa.Text, nullable=False),
        sa.Column("receive_time", TS, nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_received_events"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("received_events", schema=SCHEMA)
    op.drop_table("attempts", schema=SCHEMA)
    op.drop_table("deliveries", schema=SCHEMA)
    op.drop_table("endpoints", schema=SCHEMA)
