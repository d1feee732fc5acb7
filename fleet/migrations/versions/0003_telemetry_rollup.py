"""Telemetry retention: one-minute aggregates (telemetry_1m) and the maintenance watermark.

fleet/retention.py rolls raw telemetry up into telemetry_1m, then deletes raw rows older than
telemetry_raw_days (rolled-up ones only) and aggregates older than telemetry_rollup_days.
maintenance_state holds how far the rollup got (the raw telemetry id below which all is rolled up).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "telemetry_1m",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("minute_ms", sa.BigInteger(), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("last_ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("last", sa.Text(), nullable=False),
        sa.Column("v_min", sa.Float(), nullable=True),
        sa.Column("v_avg", sa.Float(), nullable=True),
        sa.Column("v_max", sa.Float(), nullable=True),
        sa.Column("i_min", sa.Float(), nullable=True),
        sa.Column("i_avg", sa.Float(), nullable=True),
        sa.Column("i_max", sa.Float(), nullable=True),
        sa.Column("p_avg", sa.Float(), nullable=True),
        sa.Column("soc_min", sa.Float(), nullable=True),
        sa.Column("soc_avg", sa.Float(), nullable=True),
        sa.Column("soc_max", sa.Float(), nullable=True),
    )
    op.create_table(
        "maintenance_state",
        sa.Column("name", sa.String(40), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("maintenance_state")
    op.drop_table("telemetry_1m")
