"""A device's readings as the API pages them: raw (oldest first, a page joined by the database)
and in buckets (per-minute aggregates from retention's rollups, the raw tail aggregated alike)."""

from __future__ import annotations

import json

from sqlalchemy import Engine, Text, and_, case, cast, func, literal, literal_column, select, type_coerce
from sqlalchemy.dialects.postgresql import aggregate_order_by

from fleet import db
from fleet.ledger.model import HISTORICAL_AFTER_MS
from fleet.retention.rollup import MINUTE_MS, aggregate_minutes, bucket_items


class TelemetryViews:
    def __init__(self, engine: Engine, historical_after_ms: int = HISTORICAL_AFTER_MS):
        self.engine = engine
        self.historical_after_ms = historical_after_ms

    def readings(self, device_id: str, since_ms: int | None, limit: int, kind: str | None = None) -> list[dict]:
        return [_reading(body) for _ts, body in self.bodies(device_id, since_ms, None, limit, kind)]

    def bodies(self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int,
                         kind: str | None = None) -> list[tuple[int, str]]:
        """Raw readings taken in [since_ms, until_ms), oldest first, as (ts_ms, the JSON the device sent)."""
        q = self._raw_readings(device_id, since_ms, until_ms, kind, db.telemetry.c.ts_ms, db.telemetry.c.body)
        with self.engine.connect() as conn:
            return [(r.ts_ms, r.body) for r in conn.execute(q.limit(limit))]

    def page(self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int,
                       kind: str | None = None) -> tuple[str, int, int | None]:
        """A page of raw readings as one JSON array's inside: (the readings joined by commas, oldest
        first; how many; where the next page starts, None if this is the last).

        A stored body passed the contract, which requires its ``kind``: it is the reading as the API
        shows it, so the page is joined by the database, one row back instead of one per reading.
        Per row, Python's sqlite3 hands the GIL back and forth: with 8 clients at once, 720 rows a
        request tripled the CPU per request (bench.api)."""
        t = db.telemetry.c
        page = self._raw_readings(device_id, since_ms, until_ms, kind, t.ts_ms, t.seq,
                                  marked_body(t, self.historical_after_ms).label("body")).limit(limit).subquery()
        if self.engine.dialect.name == "postgresql":
            joined = func.string_agg(page.c.body, aggregate_order_by(literal_column("','"), page.c.ts_ms, page.c.seq))
        else:
            # SQLite (3.40 has no ORDER BY inside an aggregate) concatenates in the order the
            # LIMITed subquery yields its rows, which is its ORDER BY (tests/test_api.py checks it).
            joined = func.group_concat(page.c.body, ",")
        with self.engine.connect() as conn:
            body, n, last = conn.execute(select(joined, func.count(), func.max(page.c.ts_ms))).one()
            more = n == limit and conn.execute(
                self._raw_readings(device_id, since_ms, until_ms, kind, t.id).offset(limit).limit(1)).first()
        return body or "", int(n), int(last) if more else None

    @staticmethod
    def _raw_readings(device_id: str, since_ms: int | None, until_ms: int | None, kind: str | None, *columns):
        t = db.telemetry.c
        q = select(*columns).where(t.device_id == device_id)
        if since_ms is not None:
            q = q.where(t.ts_ms >= since_ms)
        if until_ms is not None:
            q = q.where(t.ts_ms < until_ms)
        if kind:
            q = q.where(t.kind == kind)
        return q.order_by(t.ts_ms, t.seq)

    def count_raw(self, device_id: str, since_ms: int, until_ms: int, kind: str | None = None,
                            cap: int = 5000) -> int:
        """Raw readings of a device in [since_ms, until_ms), counted up to ``cap`` + 1 (an index range)."""
        t = db.telemetry.c
        q = select(t.id).where(t.device_id == device_id, t.ts_ms >= since_ms, t.ts_ms < until_ms)
        if kind:
            q = q.where(t.kind == kind)
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(q.limit(cap + 1).subquery())).scalar() or 0)

    def buckets(self, device_id: str, since_ms: int | None, until_ms: int | None, bucket_ms: int,
                          limit: int, kind: str | None = None) -> tuple[list[dict], int | None]:
        """A device's history in ``bucket_ms`` buckets (a multiple of a minute, aligned to the epoch),
        oldest first: from telemetry_1m, and after each kind's last aggregate (minutes not rolled up
        yet) from the raw readings, aggregated the same way. ``since_ms`` is rounded down to its
        bucket (whole buckets only); None: from the device's first reading. Returns at most ``limit``
        items and where the next page starts (a bucket start; None: nothing more before ``until_ms``)."""
        c, t, lt = db.telemetry_1m.c, db.telemetry.c, db.device_latest.c
        mine_1m = [c.device_id == device_id] + ([c.kind == kind] if kind else [])
        mine_raw = [t.device_id == device_id] + ([t.kind == kind] if kind else [])
        with self.engine.connect() as conn:
            kq = select(lt.kind).where(lt.device_id == device_id)
            kinds = [r[0] for r in conn.execute(kq.where(lt.kind == kind) if kind else kq)]
            if not kinds:
                return [], None
            if since_ms is None:  # from the first reading: two index lookups
                firsts = [int(f) for f in (conn.execute(select(func.min(c.minute_ms)).where(*mine_1m)).scalar(),
                                           conn.execute(select(func.min(t.ts_ms)).where(*mine_raw)).scalar())
                          if f is not None]
                if not firsts:
                    return [], None
                since_ms = min(firsts)
            start: int = since_ms
            start -= start % bucket_ms
            end = until_ms if until_ms is not None else 2**62
            next_from: int | None = None
            # Enough aggregate rows for limit + 1 buckets of every kind; a page ends on a bucket edge.
            cap = (limit + 1) * (bucket_ms // MINUTE_MS) * len(kinds)
            minutes = [dict(r) for r in conn.execute(
                select(db.telemetry_1m).where(*mine_1m, c.minute_ms >= start, c.minute_ms < end)
                .order_by(c.minute_ms, c.kind).limit(cap)).mappings()]
            if len(minutes) == cap:
                edge = minutes[-1]["minute_ms"]
                end = next_from = max(edge - edge % bucket_ms, start + bucket_ms)
                minutes = [m for m in minutes if m["minute_ms"] < end]
            last: dict[str, int] = {}
            for m in minutes:
                last[m["kind"]] = m["minute_ms"]
            froms = {k: last[k] + MINUTE_MS if k in last else start for k in kinds}
            tail_from = min(froms.values())
            # The raw tail is read at most limit + 1 buckets long (normally: since the last pass).
            tail_end = tail_from - tail_from % bucket_ms + (limit + 1) * bucket_ms
            if tail_end < end:
                more = conn.execute(select(t.id).where(*mine_raw, t.ts_ms >= tail_end, t.ts_ms < end).limit(1)).first()
                if more is not None:
                    end = next_from = tail_end
                    minutes = [m for m in minutes if m["minute_ms"] < end]
            raw = [r for r in conn.execute(select(t.device_id, t.kind, t.ts_ms, t.id, t.body)
                                           .where(*mine_raw, t.ts_ms >= tail_from, t.ts_ms < end))
                   if r.ts_ms >= froms.get(r.kind, start)]
        minutes.extend(aggregate_minutes(raw).values())
        items = bucket_items(minutes, bucket_ms)
        if len(items) > limit:
            nxt = items[limit]["ts"]
            page = [i for i in items[:limit] if i["ts"] < nxt]  # a bucket's kinds stay on one page
            return (page, nxt) if page else (items[:limit], items[limit]["ts"] + bucket_ms)
        return items, next_from


def _reading(body: str) -> dict:
    return json.loads(body)


def marked_body(t, after_ms: int):
    """A stored reading as the API shows it: a historical one (held by the kit, received over
    ``after_ms`` after it happened) gains ``"historical": true`` and its ``received_ms``, so a
    chart can tell a backlog from live data. Built in SQL, so pages stay one row back (TelemetryViews.page)."""
    late = and_(t.received_ms.is_not(None), t.received_ms - t.ts_ms > after_ms)
    body = func.rtrim(t.body, literal(" \t\r\n"))  # a stored body is a JSON object: it ends in "}"
    head = type_coerce(func.substr(body, 1, func.length(body) - 1), Text)  # Text: "+" is "||"
    marked = head + literal(',"historical":true,"received_ms":') + cast(t.received_ms, Text) + literal("}")
    return case((late, marked), else_=t.body)
