"""Retention's writes: raw telemetry rolled up into per-minute aggregates (telemetry_1m), then the
raw rows and old aggregates deleted (fleet/retention/rollup.py runs the passes). Events are never
touched: they are the kit's record."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Engine, and_, delete, func, select

from fleet import db
from fleet.db import now_ms
from fleet.retention.rollup import MINUTE_MS, aggregate_minutes, minute_of

ROLLUP_WATERMARK = "telemetry_rollup_id"


class RetentionStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    def watermark(self) -> int:
        """Every raw telemetry row with an id at or below this is rolled up into telemetry_1m."""
        m = db.maintenance_state.c
        with self.engine.connect() as conn:
            v = conn.execute(select(m.value).where(m.name == ROLLUP_WATERMARK)).scalar()
        return int(v or 0)

    def _telemetry_top(self) -> int:
        """The highest raw telemetry id such that every row at or below it is committed (or never will
        be). PostgreSQL hands ids out in nextval order, not commit order: a SHARE lock waits for the
        inserts in flight (one ingest batch) and is released at once, so ingest pauses only that long."""
        t = db.telemetry.c
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                conn.exec_driver_sql("LOCK TABLE telemetry IN SHARE MODE")
            return int(conn.execute(select(func.max(t.id))).scalar() or 0)

    def rollup(self, now: int | None = None, chunk: int = 5000) -> tuple[int, int]:
        """Recompute the telemetry_1m row of every (device, kind, minute) that raw rows added since
        the last pass fall in, ``chunk`` raw rows at a time. Readings of the current minute (up to
        two minutes ahead: clock skew) wait for a pass after it ends; a reading further ahead is
        rolled up anyway, and its minute recomputed when more arrive. Idempotent, and safe with
        several workers at once (see _upsert_rollups). Returns (minutes written, new watermark)."""
        now = now if now is not None else now_ms()
        t = db.telemetry.c
        mark = self.watermark()
        top = self._telemetry_top()
        current = minute_of(now)
        held: int | None = None  # the lowest id left for a later pass
        after, written = mark, 0
        while after < top:
            with self.engine.connect() as conn:
                rows = conn.execute(select(t.id, t.device_id, t.kind, t.ts_ms)
                                    .where(t.id > after, t.id <= top).order_by(t.id).limit(chunk)).all()
            if not rows:
                break
            touched: dict[tuple[str, str], set[int]] = defaultdict(set)
            for r in rows:
                if current <= r.ts_ms < current + 3 * MINUTE_MS:
                    held = r.id if held is None else held
                    continue
                touched[(r.device_id, r.kind)].add(minute_of(r.ts_ms))
            written += self._rollup_minutes(touched, chunk)
            after = rows[-1].id
        new = min(top, held - 1) if held is not None else top
        if new > mark:
            m = db.maintenance_state.c
            stmt = self._insert(db.maintenance_state).values(name=ROLLUP_WATERMARK, value=new, updated_ms=now)
            ex = stmt.excluded
            with self.engine.begin() as conn:  # only ever goes up (another worker may be ahead)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["name"], set_={"value": ex.value, "updated_ms": ex.updated_ms},
                    where=ex.value > m.value))
        return written, max(new, mark)

    def _rollup_minutes(self, touched: dict[tuple[str, str], set[int]], chunk: int) -> int:
        """Aggregate the given minutes from all their raw rows: one range scan of
        ix_telemetry_device_ts per run of nearby minutes of a (device, kind)."""
        t = db.telemetry.c
        out: list[dict] = []
        with self.engine.connect() as conn:
            for (device_id, kind), minutes in sorted(touched.items()):
                ordered = sorted(minutes)
                runs, lo, hi = [], ordered[0], ordered[0]
                for mm in ordered[1:]:
                    if mm - hi > 60 * MINUTE_MS:  # a gap over an hour: two scans, not one long one
                        runs.append((lo, hi))
                        lo = mm
                    hi = mm
                runs.append((lo, hi))
                for lo, hi in runs:
                    q = (select(t.device_id, t.kind, t.ts_ms, t.id, t.body)
                         .where(t.device_id == device_id, t.ts_ms >= lo, t.ts_ms < hi + MINUTE_MS, t.kind == kind))
                    aggs = aggregate_minutes(conn.execute(q))
                    out.extend(row for key, row in aggs.items() if key[2] in minutes)
        out.sort(key=lambda r: (r["device_id"], r["kind"], r["minute_ms"]))  # one lock order for every worker
        for i in range(0, len(out), chunk):
            self._upsert_rollups(out[i : i + chunk])
        return len(out)

    def _upsert_rollups(self, rows: list[dict]) -> None:
        """Write telemetry_1m rows in one transaction. A row replaces the stored one only if it counts
        at least as many readings: a minute's raw rows only grow while they are kept, so a worker
        that read before a late reading committed never undoes one that read after, and a minute
        recomputed after its raw rows were deleted (a resend stored again) keeps its aggregate."""
        if not rows:
            return
        c = db.telemetry_1m.c
        stmt = self._insert(db.telemetry_1m)
        ex = stmt.excluded
        cols = [col.name for col in db.telemetry_1m.columns if not col.primary_key]
        stmt = stmt.on_conflict_do_update(index_elements=["device_id", "kind", "minute_ms"],
                                          set_={k: ex[k] for k in cols}, where=ex.n >= c.n)
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def delete_rolled_up(self, before_ms: int, chunk: int = 5000) -> int:
        """Delete raw telemetry taken before ``before_ms`` that is rolled up (id at or below the
        watermark), per device, ``chunk`` rows per transaction. The newest row (highest id) is always
        kept: SQLite gives a new row max(id)+1, and an emptied table would hand out ids below the
        watermark again. Events are never touched."""
        t, latest = db.telemetry.c, db.device_latest.c
        safe = self.watermark()
        with self.engine.connect() as conn:
            top = conn.execute(select(func.max(t.id))).scalar() or 0
            devices = [r[0] for r in conn.execute(select(latest.device_id).distinct().order_by(latest.device_id))]
        safe = min(safe, top - 1)
        if safe <= 0:
            return 0
        total = 0
        for device_id in devices:
            while True:
                ids = (select(t.id).where(t.device_id == device_id, t.ts_ms < before_ms, t.id <= safe)
                       .order_by(t.ts_ms).limit(chunk))
                with self.engine.begin() as conn:
                    n = conn.execute(delete(db.telemetry).where(t.id.in_(ids))).rowcount
                total += n
                if n < chunk:
                    break
        return total

    def delete_old_rollups(self, before_ms: int, chunk: int = 5000) -> int:
        """Delete telemetry_1m rows of minutes before ``before_ms``, per (device, kind), at most
        ``chunk`` rows per transaction (a primary-key range each)."""
        c, latest = db.telemetry_1m.c, db.device_latest.c
        with self.engine.connect() as conn:
            pairs = conn.execute(select(latest.device_id, latest.kind).order_by(latest.device_id, latest.kind)).all()
        total = 0
        for device_id, kind in pairs:
            mine = and_(c.device_id == device_id, c.kind == kind)
            while True:
                with self.engine.begin() as conn:
                    edge = conn.execute(select(c.minute_ms).where(mine, c.minute_ms < before_ms)
                                        .order_by(c.minute_ms).offset(chunk - 1).limit(1)).scalar()
                    upto = c.minute_ms <= edge if edge is not None else c.minute_ms < before_ms
                    n = conn.execute(delete(db.telemetry_1m).where(mine, upto)).rowcount
                total += n
                if edge is None:
                    break
        return total
