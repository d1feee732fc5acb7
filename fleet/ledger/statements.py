"""Ingest's statements, built once and compiled once: at 1,000 msg/s building a statement and its
cache key on every batch cost a third of the writer thread (SQLAlchemy memoizes the key per
statement object)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, and_, bindparam, case, func, not_, or_, select, update

from fleet import db

# A device's smallest lateness (received - ts) is kept per window of this long, and judged over the
# current and the previous window (db.devices clock_lag_*): at least this much history, at most twice.
CLOCK_LAG_WINDOW_MS = 300_000

# Ingest's per-batch device updates (LedgerStore._update_devices, _apply_state); built once, compiled once.
_dc = db.devices.c
_lag = bindparam("b_lag", type_=BigInteger)
_new_window = or_(_dc.clock_lag_since_ms.is_(None), bindparam("b_seen") - _dc.clock_lag_since_ms >= bindparam("b_window"))
DEVICE_COUNTS = update(db.devices).where(_dc.id == bindparam("b_id")).values(
    received=_dc.received + bindparam("b_new"), duplicates=_dc.duplicates + bindparam("b_dup"),
    last_seen_ms=bindparam("b_seen"),
    # No new message (a state only, or duplicates): the lateness is left as it is. A new window
    # starts with this batch, the old one becomes the previous; else the smallest so far stays.
    clock_lag_ms=case((_lag.is_(None), _dc.clock_lag_ms), (_new_window, _lag),
                      (_lag < _dc.clock_lag_ms, _lag), else_=_dc.clock_lag_ms),
    clock_lag_prev_ms=case((_lag.is_(None), _dc.clock_lag_prev_ms), (_dc.clock_lag_since_ms.is_(None), None),
                           (_new_window, _dc.clock_lag_ms), else_=_dc.clock_lag_prev_ms),
    clock_lag_since_ms=case((_lag.is_(None), _dc.clock_lag_since_ms), (_new_window, bindparam("b_seen")),
                            else_=_dc.clock_lag_since_ms))
# A state applies if it is not older than the one applied (its ts: its session's start). Where a clock
# is `unset` a ts means nothing (a device booted in 2000): such a birth always applies (a new
# session), such a Will or shutdown only for the boot the device is in; and while the applied state
# is of a session with no time, an offline state of another boot (an old session's late Will) never does.
_unset = bindparam("b_unset", type_=Boolean)
_online = bindparam("b_online", type_=Boolean)
DEVICE_STATE = update(db.devices).where(
    _dc.id == bindparam("b_id"),
    or_(_dc.state_ms.is_(None), _dc.state_ms <= bindparam("b_ts"),
        and_(_unset, or_(_online, _dc.boot == bindparam("b_boot")))),
    not_(and_(not_(_online), func.coalesce(_dc.clock, "") == "unset",
              _dc.boot.is_distinct_from(bindparam("b_boot"))))).values(
    online=bindparam("b_online"), boot=bindparam("b_boot"), fw=bindparam("b_fw"),
    config_version=bindparam("b_config"), state_ms=bindparam("b_ts"),
    clock=bindparam("b_clock"), reset_cause=bindparam("b_reset"),
    # Since when the fleet knows this clock value: reset by a change of value or of boot (a reboot
    # starts its grace again: fleet/alerts/rules.py clock_unset).
    clock_since_ms=case((or_(_dc.clock.is_distinct_from(bindparam("b_clock")), _dc.boot.is_distinct_from(bindparam("b_boot"))),
                         bindparam("b_received")), else_=_dc.clock_since_ms))

# The seqs of one stream in a span, both ledger tables (LedgerStore.missing_seqs); built once, compiled once.
STORED_SEQS = select(db.telemetry.c.seq).where(
    db.telemetry.c.device_id == bindparam("d"), db.telemetry.c.boot == bindparam("b"),
    db.telemetry.c.seq.between(bindparam("lo"), bindparam("hi"))).union_all(select(db.events.c.seq).where(
        db.events.c.device_id == bindparam("d"), db.events.c.boot == bindparam("b"),
        db.events.c.seq.between(bindparam("lo"), bindparam("hi"))))

_LEDGER_ARRAY_TYPES = {"device_id": "text[]", "boot": "text[]", "seq": "bigint[]", "ts_ms": "bigint[]", "received_ms": "bigint[]",
                       "channel": "text[]", "kind": "text[]", "body": "text[]"}
TELEMETRY_COLUMNS = ("device_id", "boot", "seq", "ts_ms", "received_ms", "kind", "body")
EVENT_COLUMNS = ("device_id", "boot", "seq", "ts_ms", "received_ms", "channel", "kind", "body")
_ON_CONFLICT_RETURNING = " ON CONFLICT (device_id, boot, seq) DO NOTHING RETURNING device_id, boot, seq"


def insert_new_keys(conn, table: str, columns: tuple[str, ...], rows: list[tuple]) -> set[tuple[str, str, int]]:
    """INSERT rows, skipping any whose (device_id, boot, seq) is stored already; return the keys inserted.

    What ``insert().on_conflict_do_nothing().returning()`` does, written out: on the hot path
    SQLAlchemy's per-row parameter processing cost as much as SQLite's own work, and psycopg
    parsed the thousands of placeholders of a multi-row VALUES in Python on every batch.
    PostgreSQL (psycopg 3) gets one array per column (``unnest``): a short statement, one
    parameter per column. SQLite gets multi-row VALUES, a few thousand parameters per statement.
    """
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        arrays = ", ".join(f"%b::{_LEDGER_ARRAY_TYPES[c]}" for c in columns)  # %b: binary, no quoting
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})" + _ON_CONFLICT_RETURNING
        return set(map(tuple, conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*rows))).all()))
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    per_statement = max(1, conn.dialect.insertmanyvalues_max_parameters // len(columns))
    keys: set[tuple[str, str, int]] = set()
    for i in range(0, len(rows), per_statement):
        part = rows[i : i + per_statement]
        sql = f"INSERT INTO {table} ({names}) VALUES " + ", ".join([one] * len(part)) + _ON_CONFLICT_RETURNING
        keys.update(map(tuple, conn.exec_driver_sql(sql, tuple(value for row in part for value in row)).all()))
    return keys
