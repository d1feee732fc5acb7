"""Field updates (fleet/updates/): releases, staged rollouts, each device's update, and crews'
holds on their kits.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "releases",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("fw", sa.String(40), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(63), nullable=True),
        sa.Column("retired_ms", sa.BigInteger(), nullable=True),
        sa.Column("retired_by", sa.String(63), nullable=True),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("release_id", sa.String(80), sa.ForeignKey("releases.id"), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("success_threshold", sa.Float(), nullable=False),
        sa.Column("error_threshold", sa.Float(), nullable=False),
        sa.Column("rate_per_min", sa.Integer(), nullable=False),
        sa.Column("downgrade", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("pause_reason", sa.String(300), nullable=True),
        sa.Column("failures_acknowledged", sa.Integer(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(63), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(63), nullable=True),
    )
    op.create_index("ix_rollouts_state", "rollouts", ["state", "id"])
    op.create_table(
        "device_updates",
        sa.Column("rollout_id", BIG_ID, sa.ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("kit_id", sa.String(63), nullable=False),
        sa.Column("group_index", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("reason", sa.String(300), nullable=True),
        sa.Column("offered_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("offer", sa.JSON(), nullable=True),
    )
    op.create_index("ix_device_updates_device", "device_updates", ["device_id", "rollout_id"])
    op.create_index("ix_device_updates_kit", "device_updates", ["kit_id"])
    op.create_table(
        "kit_update_holds",
        sa.Column("kit_id", sa.String(63), sa.ForeignKey("kits.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("by", sa.String(63), nullable=False),
        sa.Column("reason", sa.String(300), nullable=True),
        sa.Column("since_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kit_update_holds")
    op.drop_index("ix_device_updates_kit", table_name="device_updates")
    op.drop_index("ix_device_updates_device", table_name="device_updates")
    op.drop_table("device_updates")
    op.drop_index("ix_rollouts_state", table_name="rollouts")
    op.drop_table("rollouts")
    op.drop_table("releases")
