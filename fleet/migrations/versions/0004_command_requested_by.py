"""Who asked for each command: commands.requested_by, for the audit log (GET /api/v1/audit).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.add_column(sa.Column("requested_by", sa.String(63), nullable=True))  # null: sent before 0004


def downgrade() -> None:
    with op.batch_alter_table("commands") as batch:
        batch.drop_column("requested_by")
