"""Event keys and revocations (fleet/tickets/): keys reach scanners through their retained config, and
the fleet keeps the union of revocations made at the fleet and at the kits, with who and where.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "event_keys",
        sa.Column("event_id", sa.String(16), primary_key=True),
        sa.Column("key_hex", sa.String(64), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.Column("expires", sa.BigInteger(), nullable=False),
        sa.Column("kits", sa.JSON(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(63), nullable=True),
    )
    op.create_table(
        "revocations",
        sa.Column("event_id", sa.String(16), primary_key=True),
        sa.Column("ticket", sa.String(16), primary_key=True),
        sa.Column("revoked_by", sa.String(63), nullable=False),
        sa.Column("revoked_at", sa.String(140), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=False),
        sa.Column("kit_id", sa.String(63), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("revocations")
    op.drop_table("event_keys")
