"""Notification targets and escalation (fleet/notify/tables.py): the targets, the escalation policy,
where each alert stands in its escalation, and every send with its outcome.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notify_targets",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(63), nullable=False, unique=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("audience", sa.String(10), nullable=False),
        sa.Column("kits", sa.JSON(), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("min_severity", sa.String(10), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("repeat_s", sa.Float(), nullable=True),
        sa.Column("repeats", sa.Integer(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "notify_policy",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("grace_s", sa.Float(), nullable=False),
        sa.Column("repeat_s", sa.Float(), nullable=False),
        sa.Column("repeats", sa.Integer(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(63), nullable=False),
    )
    op.create_table(
        "notify_escalations",
        sa.Column("alert_id", _BIG_ID, primary_key=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("at_level", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.BigInteger(), nullable=True),
        sa.Column("next_ms", sa.BigInteger(), nullable=False),
        sa.Column("resolved_told", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "notify_sends",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("target_id", sa.BigInteger(), nullable=False),
        sa.Column("target_name", sa.String(63), nullable=False),
        sa.Column("alert_id", sa.BigInteger(), nullable=True),
        sa.Column("kit_id", sa.String(63), nullable=True),
        sa.Column("event", sa.String(10), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_try_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("done_ms", sa.BigInteger(), nullable=True),
        sa.Column("outcome", sa.String(300), nullable=True),
        sa.Column("reason", sa.String(16), nullable=True),
    )
    op.create_index("ix_notify_sends_due", "notify_sends", ["state", "target_id", "id"])
    op.create_index("ix_notify_sends_alert", "notify_sends", ["alert_id", "target_id"])


def downgrade() -> None:
    op.drop_index("ix_notify_sends_alert", table_name="notify_sends")
    op.drop_index("ix_notify_sends_due", table_name="notify_sends")
    op.drop_table("notify_sends")
    op.drop_table("notify_escalations")
    op.drop_table("notify_policy")
    op.drop_table("notify_targets")
