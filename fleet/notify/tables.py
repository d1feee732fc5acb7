"""Notification tables, on the fleet's one schema (fleet.db.metadata; migration 0016).

Here rather than in fleet/db.py so the feature keeps its storage with it; fleet/store.py imports
this package, so every process that opens a Store has them on the metadata, and the migrations'
env.py imports it for autogenerate.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Float, Index, Integer, String, Table

from fleet.db import BigId, metadata

# Where notifications go, in escalation order (position, then id). Filters left empty match all.
notify_targets = Table(
    "notify_targets",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(63), nullable=False, unique=True),
    Column("kind", String(10), nullable=False),  # webhook
    Column("url", String(500), nullable=False),
    Column("audience", String(10), nullable=False),  # ops | crew | venue: who reads it
    Column("kits", JSON, nullable=False),  # [] = every kit
    Column("rules", JSON, nullable=False),  # [] = every rule
    Column("min_severity", String(10), nullable=False),  # warning | critical
    Column("position", Integer, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("repeat_s", Float, nullable=True),  # None: the policy's
    Column("repeats", Integer, nullable=True),  # None: the policy's
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# The escalation policy: one row (id 1) once ops saved it; before that, the settings' defaults.
notify_policy = Table(
    "notify_policy",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("grace_s", Float, nullable=False),
    Column("repeat_s", Float, nullable=False),
    Column("repeats", Integer, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(63), nullable=False),
)

# Where each alert stands in its escalation. ``step`` counts the sends planned for it: the planner's
# compare-and-set, so of several fleet workers one plans each step.
notify_escalations = Table(
    "notify_escalations",
    metadata,
    Column("alert_id", BigId, primary_key=True),
    Column("step", Integer, nullable=False),
    Column("level", Integer, nullable=False),  # index of the current target in the alert's chain
    Column("at_level", Integer, nullable=False),  # sends to that target: the first, then its repeats
    Column("target_id", BigInteger, nullable=True),  # the current target
    Column("next_ms", BigInteger, nullable=False),  # when the next reminder or escalation is due
    Column("resolved_told", Boolean, nullable=False),
)

# Every send, and its outcome: the outbox the delivery works through, oldest first per target.
notify_sends = Table(
    "notify_sends",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("target_id", BigInteger, nullable=False),
    Column("target_name", String(63), nullable=False),
    Column("alert_id", BigInteger, nullable=True),  # None: a test send
    Column("kit_id", String(63), nullable=True),
    Column("event", String(10), nullable=False),  # opened | reminder | escalated | resolved | test
    Column("body", JSON, nullable=False),
    Column("state", String(8), nullable=False),  # pending | sent | failed
    Column("attempts", Integer, nullable=False),
    Column("next_try_ms", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("done_ms", BigInteger, nullable=True),
    Column("outcome", String(300), nullable=True),  # "HTTP 200", or the last error
    Column("reason", String(16), nullable=True),  # why it failed: timeout | connection | http_4xx | http_5xx | other
    Index("ix_notify_sends_due", "state", "target_id", "id"),
    Index("ix_notify_sends_alert", "alert_id", "target_id"),
)
