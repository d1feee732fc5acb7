"""The initial schema: what metadata.create_all made before there were migrations.

One function per table, in foreign-key order, listed in TABLES: fleet.migrations also uses them to
create the tables an old create_all database lacks before stamping it at this revision.
Frozen: a later change to fleet/db.py goes in a new revision, never here.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _ledger(name: str, *extra: sa.Column) -> None:
    """A table of sequenced device messages, unique by (device, boot, seq)."""
    op.create_table(
        name,
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("boot", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        *extra,
        sa.Column("body", sa.Text(), nullable=False),
        sa.UniqueConstraint("device_id", "boot", "seq", name=f"uq_{name}_message"),
    )
    op.create_index(f"ix_{name}_device_ts", name, ["device_id", "ts_ms"])


def kits() -> None:
    op.create_table(
        "kits",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(120), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
    )


def devices() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("kit_id", sa.String(63), sa.ForeignKey("kits.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("model", sa.String(60), nullable=False),
        sa.Column("host_id", sa.String(63), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("boot", sa.String(32), nullable=True),
        sa.Column("fw", sa.String(40), nullable=True),
        sa.Column("config_version", sa.Integer(), nullable=True),
        sa.Column("state_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=True),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_devices_kit_id", "devices", ["kit_id"])


def streams() -> None:
    op.create_table(
        "streams",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("boot", sa.String(32), primary_key=True),
        sa.Column("max_seq", sa.BigInteger(), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("first_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_ms", sa.BigInteger(), nullable=False),
    )


def telemetry() -> None:
    _ledger("telemetry", sa.Column("kind", sa.String(20), nullable=False))


def events() -> None:
    _ledger(
        "events",
        sa.Column("channel", sa.String(10), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
    )


def checkins() -> None:
    op.create_table(
        "checkins",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(63), nullable=True),
        sa.Column("ticket", sa.String(40), nullable=True),
        sa.Column("tier", sa.String(20), nullable=True),
        sa.Column("verdict", sa.String(20), nullable=False),
        sa.Column("hub_checked", sa.Boolean(), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("boot", sa.String(32), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("scan_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("device_id", "boot", "seq", name="uq_checkins_message"),
    )
    op.create_index("ix_checkins_event_ticket", "checkins", ["event_id", "ticket"])


def device_latest() -> None:
    op.create_table(
        "device_latest",
        sa.Column("device_id", sa.String(63), primary_key=True),
        sa.Column("kind", sa.String(20), primary_key=True),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )


def commands() -> None:
    op.create_table(
        "commands",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(63), sa.ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("detail", sa.String(200), nullable=True),
        sa.Column("acked_ms", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_commands_device_ts", "commands", ["device_id", "ts_ms"])


def desired_config() -> None:
    op.create_table(
        "desired_config",
        sa.Column("device_id", sa.String(63), sa.ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )


def dead_letters() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.String(30), nullable=False),
        sa.Column("topic", sa.String(300), nullable=False),
        sa.Column("payload_head", sa.LargeBinary(), nullable=False),
        sa.Column("payload_size", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(300), nullable=False),
    )


TABLES = {f.__name__: f for f in (kits, devices, streams, telemetry, events, checkins, device_latest,
                                  commands, desired_config, dead_letters)}


def upgrade() -> None:
    for create in TABLES.values():
        create()


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)  # its indexes go with it
