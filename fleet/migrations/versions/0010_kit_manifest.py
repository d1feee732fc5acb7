"""What only a kit's manifest says, stored with the kit: its agent, its event window and each
device's telemetry period. Until now only the process that loaded the manifest knew them, so a
second worker (or a fleet started without --kit) had no event end to forecast against.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_KIT_COLUMNS = (
    ("agent_id", sa.String(63)),
    ("doors_open_ms", sa.BigInteger()),
    ("ends_ms", sa.BigInteger()),
    ("manifest_ms", sa.BigInteger()),  # null: registered before 0010, its manifest's facts unknown
)


def upgrade() -> None:
    with op.batch_alter_table("kits") as batch:
        for name, type_ in _KIT_COLUMNS:
            batch.add_column(sa.Column(name, type_, nullable=True))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("telemetry_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("telemetry_s")
    with op.batch_alter_table("kits") as batch:
        for name, _type in reversed(_KIT_COLUMNS):
            batch.drop_column(name)
