"""Each device's clock, from its state (synced | kit | unset, and why it last booted), and how late its
recent messages arrived (the fleet judges clock drift from that: fleet/alerts.py clock_drift).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("clock", sa.String(8)),
    ("reset_cause", sa.String(10)),
    ("clock_since_ms", sa.BigInteger()),
    ("clock_lag_ms", sa.BigInteger()),
    ("clock_lag_prev_ms", sa.BigInteger()),
    ("clock_lag_since_ms", sa.BigInteger()),
)


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))  # null: no state or message since 0009


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        for name, _type in reversed(_COLUMNS):
            batch.drop_column(name)
