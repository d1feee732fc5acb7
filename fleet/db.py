"""The fleet's tables and engine: SQLite (WAL) by default, PostgreSQL in production.

Plain SQLAlchemy Core: ingest writes in batches of hundreds of rows, where the
ORM's per-object bookkeeping would cost more than the write itself.
Timestamps are integer milliseconds since the Unix epoch, as on the wire.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    JSON,
    LargeBinary,
    MetaData,
    String,
    Text,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import make_url

metadata = MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")

kits = Table(
    "kits",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("name", String(120), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # What only the manifest says, kept so every fleet process knows it (not only the one that
    # loaded the manifest): its agent, its event window, and when the manifest was last
    # registered (NULL: a kit registered by a fleet before these columns, window unknown).
    Column("agent_id", String(63)),
    Column("doors_open_ms", BigInteger),
    Column("ends_ms", BigInteger),
    Column("manifest_ms", BigInteger),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(63), primary_key=True),
    Column("kit_id", String(63), ForeignKey("kits.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("role", String(20), nullable=False),
    Column("model", String(60), nullable=False),
    # The agent device that drives this one over serial/BLE/GPIO; it is offline when its host is.
    Column("host_id", String(63), nullable=True),
    Column("online", Boolean, nullable=False, default=False),
    Column("boot", String(32)),
    Column("fw", String(40)),
    Column("config_version", Integer),
    Column("state_ms", BigInteger),  # session start of the state last applied (latest wins)
    # Its clock, from its state (kits/contract.py State.clock: synced | kit | unset) and why it last booted;
    # clock_since_ms: when the fleet received the state that set this clock value in this boot (fleet clock).
    Column("clock", String(8)),
    Column("reset_cause", String(10)),
    Column("clock_since_ms", BigInteger),
    # How late its messages arrive: the smallest (received - ts) of its new messages in the current
    # window (since clock_lag_since_ms, fleet clock) and in the one before. About its clock's offset
    # behind the fleet's (negative: ahead); a backlog delivered late does not raise it (LedgerStore._update_devices).
    Column("clock_lag_ms", BigInteger),
    Column("clock_lag_prev_ms", BigInteger),
    Column("clock_lag_since_ms", BigInteger),
    Column("last_seen_ms", BigInteger),
    Column("received", BigInteger, nullable=False, default=0),
    Column("duplicates", BigInteger, nullable=False, default=0),
    # Its telemetry period from the kit's manifest: a heartbeat is late after a few of these.
    Column("telemetry_s", Float),
)

# One row per (device, boot): how far the sequence got and how many arrived, so gaps = max_seq - received.
streams = Table(
    "streams",
    metadata,
    Column("device_id", String(63), primary_key=True),
    Column("boot", String(32), primary_key=True),
    Column("max_seq", BigInteger, nullable=False),
    Column("received", BigInteger, nullable=False),
    Column("first_ms", BigInteger, nullable=False),
    Column("last_ms", BigInteger, nullable=False),
)


def _ledger_table(name: str, *extra: Column) -> Table:
    """A table of sequenced device messages, unique by (device, boot, seq): the dedup key."""
    return Table(
        name,
        metadata,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("device_id", String(63), nullable=False),
        Column("boot", String(32), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("ts_ms", BigInteger, nullable=False),
        # When the fleet stored it: far after ts_ms means the kit held it (an uplink outage) and
        # the API marks it historical. Null for rows stored before migration 0007.
        Column("received_ms", BigInteger),
        *extra,
        # The validated payload exactly as the device sent it: storing it as text
        # costs nothing on the hot path, where re-serialising a dict per row would.
        Column("body", Text, nullable=False),
        UniqueConstraint("device_id", "boot", "seq", name=f"uq_{name}_message"),
        Index(f"ix_{name}_device_ts", "device_id", "ts_ms"),
    )


telemetry = _ledger_table("telemetry", Column("kind", String(20), nullable=False))
events = _ledger_table(
    "events",
    Column("channel", String(10), nullable=False),  # event | ack
    Column("kind", String(64), nullable=False),
)

# Door scans, one row per checkin event, for attendance and double-entry reconciliation.
checkins = Table(
    "checkins",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("event_id", String(63)),
    Column("ticket", String(40)),
    Column("tier", String(20)),
    Column("verdict", String(20), nullable=False),
    Column("hub_checked", Boolean, nullable=False),
    Column("device_id", String(63), nullable=False),
    Column("boot", String(32), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("scan_ms", BigInteger, nullable=False),  # when the ticket was scanned, not when it arrived
    Column("received_ms", BigInteger),  # ... and when it arrived (null before migration 0007)
    UniqueConstraint("device_id", "boot", "seq", name="uq_checkins_message"),
    Index("ix_checkins_event_ticket", "event_id", "ticket"),
)

# The latest reading of each kind per device: what the overview shows without scanning history.
device_latest = Table(
    "device_latest",
    metadata,
    Column("device_id", String(63), primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("body", Text, nullable=False),
)

# Commands pushed to devices (channel `cmd`): what ops asked, and the device's answer (its `ack`).
commands = Table(
    "commands",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("device_id", String(63), ForeignKey("devices.id", ondelete="CASCADE"), nullable=False),
    Column("action", String(32), nullable=False),
    Column("args", JSON, nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    Column("status", String(10), nullable=False),  # pending | ok | error | expired | rejected
    Column("detail", String(200)),
    Column("acked_ms", BigInteger),  # the ack's ts: when the device answered (device clock)
    Column("requested_by", String(63)),  # who asked (the audit log); null for commands from before 0004
    Index("ix_commands_device_ts", "device_id", "ts_ms"),
)

# The desired config per device (channel `config`, retained). The broker's retained copy is a
# cache of this row; the device reports the version it applied as `config_version` in its state.
desired_config = Table(
    "desired_config",
    metadata,
    Column("device_id", String(63), ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True),
    Column("version", BigInteger, nullable=False),  # per device, only ever goes up, never reused
    Column("ts_ms", BigInteger, nullable=False),
    Column("data", JSON, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("received_ms", BigInteger, nullable=False),
    Column("reason", String(30), nullable=False),
    Column("topic", String(300), nullable=False),
    Column("payload_head", LargeBinary, nullable=False),
    Column("payload_size", Integer, nullable=False),
    Column("detail", String(300), nullable=False),
)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    _wal(cur)
    # FULL: a receipt promises the message is on disk, so the commit must be too.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    # Pages read through a memory map, not read() copies into each connection's own cache: a
    # commit by one connection makes every other one read its pages again, and with ingest, the
    # views and the API on different connections that was a tenth of the fleet's CPU (perf).
    cur.execute("PRAGMA mmap_size=268435456")
    cur.close()


def _wal(cur, wait_s: float = 10.0) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to itself, and SQLite answers
    "locked" at once, without its busy wait, while another connection is in it: two workers opening
    a new file together hit that. So: nothing to do once it is WAL, else retry for a while."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# Connections kept open: the API answers on up to 40 threads (anyio's default), ingest, alerts and
# retention each hold one. A connection past the pool is opened and closed per request, which
# (bench.api, 8 clients) tripled the server's CPU per history request on SQLite.
POOL_SIZE, POOL_OVERFLOW = 16, 32


def now_ms() -> int:
    """The fleet's clock as every table stores it: epoch milliseconds."""
    return int(time.time() * 1000)


def upsert_for(engine: Engine):
    """The dialect's insert (with on_conflict_do_update / do_nothing) for ``engine``."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return pg_insert if engine.dialect.name == "postgresql" else sqlite_insert


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    pool = dict(pool_size=POOL_SIZE, max_overflow=POOL_OVERFLOW)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            pool = {}  # one in-memory database per connection: SQLAlchemy picks its own pool
        # LIFO: the connection just used is taken again, its page cache still warm.
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10},
                               **({**pool, "pool_use_lifo": True} if pool else {}))
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("", "psycopg2"):
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return create_engine(url, pool_pre_ping=True, **pool)


def migrate(engine: Engine) -> None:
    """Bring the database's schema up to date (Alembic: fleet/migrations), creating it if empty.

    The tables above are the schema's current shape; every change to them needs a migration
    (docs/migrations.md), which tests/test_migrations.py checks.
    """
    from fleet import migrations

    migrations.upgrade(engine)


# ------------------------------------------------------------ alerts (fleet/alerts/rules.py, fleet/alerts/notify.py)

# One row per alert: opened when a rule starts firing for a subject (a device or a kit), updated
# while it fires, resolved by hand or by itself ("auto") when the rule stops firing. At most one
# non-resolved alert per (subject, rule): the partial unique index below, on both backends.
alerts = Table(
    "alerts",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("subject", String(63), nullable=False),  # a device id or a kit id
    Column("kit_id", String(63), nullable=False),
    Column("rule", String(32), nullable=False),
    Column("severity", String(10), nullable=False),  # warning | critical
    Column("state", String(12), nullable=False),  # open | acknowledged | resolved
    Column("first_seen_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),  # distinct observations (new evidence) while it fired
    Column("message", String(300), nullable=False),
    Column("details", JSON, nullable=False),
    Column("acknowledged_by", String(63)),
    Column("acknowledged_ms", BigInteger),
    Column("resolved_ms", BigInteger),
    Column("resolved_by", String(63)),  # "auto" or who resolved it
    Column("last_notified_ms", BigInteger),  # last webhook attempt (a claim: one worker sends)
    Column("notify_count", Integer, nullable=False),  # webhook deliveries that succeeded
    Index("uq_alerts_active", "subject", "rule", unique=True,
          sqlite_where=text("state != 'resolved'"), postgresql_where=text("state != 'resolved'")),
    Index("ix_alerts_state", "state", "id"),
    Index("ix_alerts_kit", "kit_id", "id"),
)

# What happened to each alert, oldest first: opened, updated, acknowledged, resolved, notified, notify_failed.
alert_events = Table(
    "alert_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("alert_id", BigId, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
    Column("ts_ms", BigInteger, nullable=False),
    Column("what", String(16), nullable=False),
    Column("by", String(63)),
    Column("detail", String(500)),
    Index("ix_alert_events_alert", "alert_id", "id"),
)


# ------------------------------------------------------------ telemetry retention (fleet/retention/)

# One-minute aggregates of raw telemetry, per (device, kind, minute): what history older than the
# raw retention (telemetry_raw_days) is kept as, for telemetry_rollup_days. Every kind gets a row
# with its reading count and its minute's last reading (`last`, the payload as received), which is
# all a printer/light/device chart needs (states, not quantities). Battery readings also get
# min/avg/max of v, i and soc and the average power (p, or v*i when the device sends none): what
# the dashboard's battery chart draws. An average is over the readings that carry the field.
# Recomputed from the raw rows whenever a new raw row lands in its minute (an upsert that never
# lowers n), so late and resent readings are counted once, and two workers may roll up at once.
telemetry_1m = Table(
    "telemetry_1m",
    metadata,
    Column("device_id", String(63), primary_key=True),
    Column("kind", String(20), primary_key=True),
    Column("minute_ms", BigInteger, primary_key=True),  # start of the minute, UTC, ms since the epoch
    Column("n", Integer, nullable=False),  # raw readings in the minute
    Column("last_ts_ms", BigInteger, nullable=False),  # ts of the minute's last reading
    Column("last", Text, nullable=False),  # the minute's last reading, its payload as received
    Column("v_min", Float), Column("v_avg", Float), Column("v_max", Float),
    Column("i_min", Float), Column("i_avg", Float), Column("i_max", Float),
    Column("p_avg", Float),
    Column("soc_min", Float), Column("soc_avg", Float), Column("soc_max", Float),
)

# Small named counters of the maintenance work; "telemetry_rollup_id": every raw telemetry row with
# an id at or below it has been rolled up into telemetry_1m (so may be deleted once old enough).
maintenance_state = Table(
    "maintenance_state",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# ------------------------------------------------------------ venue lighting (fleet/venues/)

# A venue's lighting as documents: the venue itself (kind "venue", id = the venue's), its zones,
# scenes, schedules and overrides, each the JSON of its model in fleet/venues/model.py. The venue
# page reads them all at once and the compiler wants them all at once: one row per thing, no joins.
venue_docs = Table(
    "venue_docs",
    metadata,
    Column("venue_id", String(63), primary_key=True),
    Column("kind", String(10), primary_key=True),  # venue | zone | scene | schedule | override
    Column("id", String(63), primary_key=True),
    Column("body", JSON, nullable=False),
    Column("expires_ms", BigInteger, nullable=True),  # overrides: over after this (kept for the record)
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(63), nullable=True),
)

# ------------------------------------------------------------ API users and their audit trail (fleet/auth/)

# Who may use the API: a role (ops | crew | venue) and, for crew and venue users, the kits or venues
# they see. token_gen is in every token issued to the user: raising it (a new password, disabled)
# makes every older token invalid at once. password_hash is argon2id (None: no password login).
users = Table(
    "users",
    metadata,
    Column("name", String(63), primary_key=True),
    Column("role", String(8), nullable=False),
    Column("kits", JSON, nullable=False),
    Column("venues", JSON, nullable=False),
    Column("password_hash", String(255), nullable=True),
    Column("disabled", Boolean, nullable=False),
    Column("token_gen", Integer, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Every successful change made through the API: who, the route (method and template), the concrete
# path (ids only: never a body), the kit or venue it touched (what crew and venue users may read back)
# and the HTTP status. Commands and alert actions also have their own richer records.
api_audit = Table(
    "api_audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts_ms", BigInteger, nullable=False),
    Column("by", String(63), nullable=False),
    Column("method", String(8), nullable=False),
    Column("route", String(200), nullable=False),
    Column("path", String(500), nullable=False),
    Column("kit_id", String(63), nullable=True),
    Column("venue_id", String(63), nullable=True),
    Column("status", Integer, nullable=False),
    Index("ix_api_audit_ts", "ts_ms"),
)

# ------------------------------------------------------------ event keys and revocations (fleet/tickets/)

# An event's ticket key as the scanners get it (data.keys of their desired config), with its window
# (Unix seconds): from not_before its tickets verify, from expires the scanners drop it. ``kits``:
# the kits whose scanners hold it (a JSON list; null: every kit). The key is a secret: only the
# delivery reads it back, the API never shows it.
event_keys = Table(
    "event_keys",
    metadata,
    Column("event_id", String(16), primary_key=True),
    Column("key_hex", String(64), nullable=False),
    Column("not_before", BigInteger, nullable=False),
    Column("expires", BigInteger, nullable=False),
    Column("kits", JSON, nullable=True),
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(63), nullable=True),
)

# Every ticket revoked, once: the union of what ops and crews revoked at the fleet and what a kit
# revoked on its own (sent up as events by its agent). ``revoked_by``: the fleet user, or the person
# at the kit; ``revoked_at``: where ("fleet", or "kit <kit>/<agent>"); ``revoked_ms``: when. The
# first revocation of a ticket is the one kept (a later one changes nothing at the doors).
revocations = Table(
    "revocations",
    metadata,
    Column("event_id", String(16), primary_key=True),
    Column("ticket", String(16), primary_key=True),
    Column("revoked_by", String(63), nullable=False),
    Column("revoked_at", String(140), nullable=False),
    Column("revoked_ms", BigInteger, nullable=False),
    Column("kit_id", String(63), nullable=True),  # the kit it was revoked at (null: at the fleet)
)
