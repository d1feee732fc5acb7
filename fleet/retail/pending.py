"""Each kit's latest report of the orders its till holds without the fleet's receipt (``retail_pending``).

The kit's agent says it in its device telemetry (kits.contract.DeviceTelemetry: ``orders_pending``,
``orders_oldest_ms``). The latest report (by its own ts) per kit is kept, so the
``orders_not_uploaded`` alert (fleet/alerts/rules.py) still judges a kit that has gone silent since:
its oldest pending order keeps growing older.
"""

from __future__ import annotations

from sqlalchemy import Engine, and_, select

from fleet import db
from fleet.retail import order_tables as t

P = t.retail_pending.c


def report_of(m) -> tuple[int, int | None] | None:
    """(orders pending, oldest's ts or None) if this ledger message is a till's pending report."""
    if m.channel != "telemetry" or getattr(m.msg, "kind", None) != "device":
        return None
    n = getattr(m.msg, "orders_pending", None)
    if n is None:
        return None
    return n, (getattr(m.msg, "orders_oldest_ms", None) if n else None)


class PendingReports:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    def record(self, conn, new: list) -> None:
        """Inside ingest's transaction: the newest report of each agent in the batch, where newer than stored."""
        latest: dict[str, tuple] = {}
        for m in new:
            r = report_of(m)
            if r is not None and (m.device_id not in latest or m.msg.ts >= latest[m.device_id][0]):
                latest[m.device_id] = (m.msg.ts, *r)
        if not latest:
            return
        d = db.devices.c
        kits = dict(conn.execute(select(d.id, d.kit_id).where(and_(d.id.in_(sorted(latest)), d.role == "agent"))).all())
        now = db.now_ms()
        for device_id in sorted(kits):
            ts, n, oldest = latest[device_id]
            row = dict(kit_id=kits[device_id], device_id=device_id, orders=n, oldest_ms=oldest, reported_ms=ts,
                       received_ms=now)
            stmt = self._insert(t.retail_pending).values(**row)
            conn.execute(stmt.on_conflict_do_update(index_elements=["kit_id"], set_=row,
                                                    where=stmt.excluded.reported_ms >= t.retail_pending.c.reported_ms))

    def latest(self, kits: list[str] | None = None) -> dict[str, dict]:
        """kit -> its latest report: {device, orders, oldest_ms, reported_ms, received_ms}."""
        q = select(t.retail_pending)
        if kits is not None:
            q = q.where(P.kit_id.in_(kits))
        with self.engine.connect() as conn:
            return {r.kit_id: dict(device=r.device_id, orders=r.orders, oldest_ms=r.oldest_ms,
                                   reported_ms=r.reported_ms, received_ms=r.received_ms) for r in conn.execute(q)}
