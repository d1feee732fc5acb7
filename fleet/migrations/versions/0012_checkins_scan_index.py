"""Check-ins by scan time: the rollout worker asks, once a step, which kits had a check-in in the
last 10 minutes (a kit in use is never offered an update; fleet/updates/store.py windows).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_checkins_scan_ms", "checkins", ["scan_ms"])


def downgrade() -> None:
    op.drop_index("ix_checkins_scan_ms", table_name="checkins")
