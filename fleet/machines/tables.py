"""The machine tokens' table, on the fleet's one schema (fleet.db.metadata; migration 0015).

Here rather than in fleet/db.py so the feature keeps its storage with it; fleet/store.py imports
this package, so every process that opens a Store has it on the metadata, and the migrations'
env.py imports it for autogenerate.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, String, Table

from fleet.db import BigId, metadata

# One row per token ops made for a machine (Prometheus, a script). Only the token's sha256 is kept:
# the token itself is shown once, at creation. Revoked tokens stay listed, for the record.
machine_tokens = Table(
    "machine_tokens",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("name", String(63), nullable=False),
    Column("scope", String(80), nullable=False),  # metrics | read | kit:<kit id>
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("prefix", String(12), nullable=False),  # the token's first characters, to tell tokens apart
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(63), nullable=False),
    Column("expires_ms", BigInteger, nullable=True),
    Column("last_used_ms", BigInteger, nullable=True),
    Column("revoked_ms", BigInteger, nullable=True),
    Column("revoked_by", String(63), nullable=True),
    Index("ix_machine_tokens_name", "name"),
)
