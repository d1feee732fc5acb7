"""When the fleet received each ledger message: telemetry, events and checkins get received_ms, so
a message a kit held through an uplink outage is shown as historical (received long after it happened).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TABLES = ("telemetry", "events", "checkins")


def upgrade() -> None:
    for name in _TABLES:
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("received_ms", sa.BigInteger(), nullable=True))  # null: stored before 0007


def downgrade() -> None:
    for name in _TABLES:
        with op.batch_alter_table(name) as batch:
            batch.drop_column("received_ms")
