"""Who came in and who did what: a night's attendance, a kit's latest door scans, and the audit
trail of commands, alert decisions and API changes."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Engine, literal, select

from fleet import db
from fleet.commands.store import command_view
from fleet.db import now_ms
from fleet.ledger.model import HISTORICAL_AFTER_MS


class ActivityViews:
    def __init__(self, engine: Engine, historical_after_ms: int = HISTORICAL_AFTER_MS):
        self.engine = engine
        self.historical_after_ms = historical_after_ms

    def attendance(self, event_id: str, devices: set[str] | None = None) -> dict | None:
        """Who came in, through which scanner, and which tickets got in twice; ``devices``: through
        these scanners only (a crew user's), None: all."""
        c = db.checkins.c
        q = select(c.ticket, c.verdict, c.device_id, c.scan_ms, c.hub_checked).where(c.event_id == event_id)
        if devices is not None:
            q = q.where(c.device_id.in_(sorted(devices)))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(c.scan_ms, c.id)).all()
        if not rows:
            return None
        by_verdict: dict[str, int] = defaultdict(int)
        by_scanner: dict[str, dict[str, int]] = defaultdict(lambda: {"admitted": 0, "refused": 0})
        admissions: dict[str, list] = defaultdict(list)
        for r in rows:
            by_verdict[r.verdict] += 1
            admitted = r.verdict == "admitted"
            by_scanner[r.device_id]["admitted" if admitted else "refused"] += 1
            if admitted:
                admissions[r.ticket].append(dict(device_id=r.device_id, scan_ms=r.scan_ms, hub_checked=r.hub_checked))
        doubles = [dict(ticket=t, scans=scans) for t, scans in admissions.items() if len(scans) > 1]
        return dict(event_id=event_id, scans=len(rows), admitted=len(admissions), by_verdict=dict(by_verdict),
                    by_scanner=dict(by_scanner), double_entries=doubles)

    def recent_checkins(self, kit_id: str, limit: int = 20) -> list[dict] | None:
        """The kit's latest door scans by scan time (a late upload takes its place by when it was
        scanned), newest first; None for an unknown kit. The (device, boot, seq) key finds the
        kit's rows; a kit's share of the scans is sorted, not the whole table."""
        c, d = db.checkins.c, db.devices.c
        with self.engine.connect() as conn:
            if conn.execute(select(db.kits.c.id).where(db.kits.c.id == kit_id)).first() is None:
                return None
            doors = select(d.id).where(d.kit_id == kit_id)
            rows = conn.execute(
                select(c.device_id, c.scan_ms, c.event_id, c.ticket, c.tier, c.verdict, c.hub_checked, c.received_ms)
                .where(c.device_id.in_(doors)).order_by(c.scan_ms.desc(), c.id.desc()).limit(limit)
            ).mappings().all()
        return [dict(r, historical=r.received_ms is not None and r.received_ms - r.scan_ms > self.historical_after_ms)
                for r in rows]

    def audit(self, limit: int = 100, before_ms: int | None = None, kits: set[str] | None = None,
              venues: set[str] | None = None, me: str | None = None, by: str | None = None,
              action: str | None = None, kit: str | None = None, since_ms: int | None = None) -> list[dict]:
        """Who did what to which device or alert, when, and how it ended: commands, alert
        acknowledgements/resolutions by people, each notification sent (by "webhook"), and every
        other change made through the API (fleet/auth/audit.py), newest first (``before_ms``: the next page).
        A crew or venue user's view: ``kits`` and ``venues`` they see (None: all), and ``me``, whose
        own changes they always see. Filters: ``by`` who, ``action`` words in what they did
        ("command", "alert acknowledged", "PUT /api/v1/users"; case-insensitive), ``kit`` the kit
        it touched, ``since_ms`` (inclusive) to ``before_ms`` (exclusive)."""
        c, e, a, r = db.commands.c, db.alert_events.c, db.alerts.c, db.api_audit.c
        cq = select(db.commands).order_by(c.ts_ms.desc()).limit(limit)
        eq = (select(e.ts_ms, e.what, e.by, e.detail, a.id, a.rule, a.subject)
              .select_from(db.alert_events.join(db.alerts, a.id == e.alert_id))
              .where(e.what.in_(("acknowledged", "resolved", "notified", "notify_failed")), e.by != "auto")
              .order_by(e.ts_ms.desc()).limit(limit))
        rq = select(db.api_audit).order_by(r.ts_ms.desc(), r.id.desc()).limit(limit)
        if before_ms is not None:
            cq, eq, rq = cq.where(c.ts_ms < before_ms), eq.where(e.ts_ms < before_ms), rq.where(r.ts_ms < before_ms)
        if since_ms is not None:
            cq, eq, rq = cq.where(c.ts_ms >= since_ms), eq.where(e.ts_ms >= since_ms), rq.where(r.ts_ms >= since_ms)
        if by is not None:
            cq, eq, rq = cq.where(c.requested_by == by), eq.where(e.by == by), rq.where(r.by == by)
        if action:
            # Matched against the text each row shows as "what", in SQL, so a page holds ``limit`` matches.
            words = action.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            like = f"%{words}%"
            cq = cq.where(literal("command ").concat(c.action).ilike(like, escape="\\"))
            eq = eq.where(literal("alert ").concat(e.what).ilike(like, escape="\\"))
            rq = rq.where(r.method.concat(" ").concat(r.route).ilike(like, escape="\\"))
        if kit is not None:
            cq = cq.where(c.device_id.in_(select(db.devices.c.id).where(db.devices.c.kit_id == kit)))
            eq, rq = eq.where(a.kit_id == kit), rq.where(r.kit_id == kit)
        if kits is not None or venues is not None:
            kits, venues = sorted(kits or ()), sorted(venues or ())
            cq = cq.where(c.device_id.in_(select(db.devices.c.id).where(db.devices.c.kit_id.in_(kits))))
            eq = eq.where(a.kit_id.in_(kits))
            rq = rq.where(r.kit_id.in_(kits) | r.venue_id.in_(venues) | (r.by == me))
        now = now_ms()
        with self.engine.connect() as conn:
            out = [dict(ts=r["ts_ms"], by=r["requested_by"], what=f"command {r['action']}", target=r["device_id"],
                        ref=r["id"], result=v["status"] + (f": {v['detail']}" if v["detail"] else ""))
                   for r in conn.execute(cq).mappings() for v in (command_view(r, now),)]
            out += [dict(ts=r.ts_ms, by=r.by, what=f"alert {r.what}", target=r.subject, ref=str(r.id),
                         result=f"{r.rule}" + (f": {r.detail}" if r.detail else "")) for r in conn.execute(eq)]
            out += [dict(ts=r.ts_ms, by=r.by, what=f"{r.method} {r.route}", target=r.path, ref=f"request {r.id}",
                         result=str(r.status)) for r in conn.execute(rq)]
        return sorted(out, key=lambda x: x["ts"], reverse=True)[:limit]
