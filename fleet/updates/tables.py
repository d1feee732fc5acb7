"""The tables of releases and rollouts, on the fleet's one schema (fleet.db.metadata; migration 0011).

Here rather than in fleet/db.py so the feature keeps its storage with it; fleet/store.py imports
this package, so every process that opens a Store has them on the metadata, and the migrations'
env.py imports it for autogenerate.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, String, Table

from fleet.db import BigId, checkins, metadata

# One row per uploaded bundle whose signature checked out: its manifest as signed, and where its
# files are (release_dir/<id>/, the bundle's own layout). Retired: no new rollout may use it.
releases = Table(
    "releases",
    metadata,
    Column("id", String(80), primary_key=True),  # <role>-<version>
    Column("role", String(16), nullable=False),
    Column("version", String(32), nullable=False),
    Column("fw", String(40), nullable=False),
    Column("manifest", JSON, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(63), nullable=True),
    Column("retired_ms", BigInteger, nullable=True),
    Column("retired_by", String(63), nullable=True),
)

# A staged rollout of a release: its target, groups (cumulative counts and percentages), thresholds
# and rate; state running | paused | aborted | done, and why it paused.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("release_id", String(80), ForeignKey("releases.id"), nullable=False),
    Column("role", String(16), nullable=False),
    Column("target", JSON, nullable=False),  # {"kits": [...], "devices": [...]}: empty lists mean all
    Column("groups", JSON, nullable=False),  # ["1", "10%", "100%"]
    Column("success_threshold", Float, nullable=False),
    Column("error_threshold", Float, nullable=False),
    Column("rate_per_min", Integer, nullable=False),
    Column("downgrade", Boolean, nullable=False),  # ops asked for an older version: a rollback
    Column("state", String(8), nullable=False),
    Column("pause_reason", String(300), nullable=True),
    Column("failures_acknowledged", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(63), nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(63), nullable=True),
    Index("ix_rollouts_state", "state", "id"),
)

# Each target device of a rollout, fixed when the rollout is made: its group and its update's state.
# ``offer``: what was (or will be) sent to the kit's agent for it (fleet/updates/delivery.py).
device_updates = Table(
    "device_updates",
    metadata,
    Column("rollout_id", BigId, ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True),
    Column("device_id", String(63), primary_key=True),
    Column("kit_id", String(63), nullable=False),
    Column("group_index", Integer, nullable=False),
    Column("state", String(12), nullable=False),
    Column("reason", String(300), nullable=True),
    Column("offered_ms", BigInteger, nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Column("offer", JSON, nullable=True),
    Index("ix_device_updates_device", "device_id", "rollout_id"),
    Index("ix_device_updates_kit", "kit_id"),
)

# A crew's hold on its kit: no device of it is offered an update until the hold is lifted.
kit_update_holds = Table(
    "kit_update_holds",
    metadata,
    Column("kit_id", String(63), ForeignKey("kits.id", ondelete="CASCADE"), primary_key=True),
    Column("by", String(63), nullable=False),
    Column("reason", String(300), nullable=True),
    Column("since_ms", BigInteger, nullable=False),
)

# Which kits are in use (a check-in in the last 10 minutes; fleet/updates/model.py IN_USE_MS): one
# range scan a step for the whole fleet. On the ledger's table, kept here with the query that needs it.
ix_checkins_scan_ms = Index("ix_checkins_scan_ms", checkins.c.scan_ms)
