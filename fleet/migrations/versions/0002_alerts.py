"""Alerts (fleet/alerts.py) and their history; at most one non-resolved alert per (subject, rule).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ACTIVE = sa.text("state != 'resolved'")


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("subject", sa.String(63), nullable=False),
        sa.Column("kit_id", sa.String(63), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("severity", sa.String(10), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("first_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("message", sa.String(300), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("acknowledged_by", sa.String(63), nullable=True),
        sa.Column("acknowledged_ms", sa.BigInteger(), nullable=True),
        sa.Column("resolved_ms", sa.BigInteger(), nullable=True),
        sa.Column("resolved_by", sa.String(63), nullable=True),
        sa.Column("last_notified_ms", sa.BigInteger(), nullable=True),
        sa.Column("notify_count", sa.Integer(), nullable=False),
    )
    # The guarantee: one alert per (subject, rule) until it is resolved (a partial index on both backends).
    op.create_index("uq_alerts_active", "alerts", ["subject", "rule"], unique=True,
                    sqlite_where=ACTIVE, postgresql_where=ACTIVE)
    op.create_index("ix_alerts_state", "alerts", ["state", "id"])
    op.create_index("ix_alerts_kit", "alerts", ["kit_id", "id"])
    op.create_table(
        "alert_events",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("alert_id", BIG_ID, sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("what", sa.String(16), nullable=False),
        sa.Column("by", sa.String(63), nullable=True),
        sa.Column("detail", sa.String(500), nullable=True),
    )
    op.create_index("ix_alert_events_alert", "alert_events", ["alert_id", "id"])


def downgrade() -> None:
    op.drop_table("alert_events")  # its indexes go with it
    op.drop_table("alerts")
