"""Venue lighting (fleet/venues/): venues, zones, scenes, schedules and overrides as documents.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "venue_docs",
        sa.Column("venue_id", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(10), primary_key=True),
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=True),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(63), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("venue_docs")
