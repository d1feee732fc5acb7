"""The alerts table and its history: what the evaluator (fleet/alerts/rules.py) opens, updates and
resolves, what people acknowledge and resolve, and what the notifier (fleet/alerts/notify.py) sends."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, and_, func, or_, select, update
from sqlalchemy.exc import OperationalError

from fleet import db
from fleet.alerts.rules import EvalResult
from fleet.db import now_ms


class AlertStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    def scanner_error_counts(self, since_ms: int, verdicts: tuple[str, ...]) -> dict[str, int]:
        """Check-ins per scanner with one of ``verdicts`` scanned at or after ``since_ms``."""
        c = db.checkins.c
        q = (select(c.device_id, func.count().label("n"))
             .where(c.scan_ms >= since_ms, c.verdict.in_(verdicts)).group_by(c.device_id))
        with self.engine.connect() as conn:
            return {r.device_id: int(r.n) for r in conn.execute(q)}

    def double_entries(self, since_ms: int) -> dict[str, list[dict]]:
        """Tickets admitted more than once whose latest admission was scanned at or after ``since_ms``,
        by the kit of that latest door: ``{kit: [{event, ticket, scans: [{device_id, scan_ms,
        hub_checked}]}]}``, scans oldest first. Only recent admissions are looked up, then each one's
        ticket through ix_checkins_event_ticket: the night's scans, not the whole table."""
        c, d = db.checkins.c, db.devices.c
        recent = (select(c.event_id, c.ticket).where(c.verdict == "admitted", c.scan_ms >= since_ms)
                  .distinct().subquery())
        q = (select(c.event_id, c.ticket, c.device_id, c.scan_ms, c.hub_checked, d.kit_id)
             .select_from(db.checkins.join(recent, and_(c.event_id == recent.c.event_id, c.ticket == recent.c.ticket))
                          .join(db.devices, d.id == c.device_id))
             .where(c.verdict == "admitted").order_by(c.event_id, c.ticket, c.scan_ms, c.id))
        by_ticket: dict[tuple, list] = {}
        with self.engine.connect() as conn:
            for r in conn.execute(q):
                by_ticket.setdefault((r.event_id, r.ticket), []).append(r)
        out: dict[str, list[dict]] = {}
        for (event, ticket), rows in by_ticket.items():
            if len(rows) < 2:
                continue
            scans = [dict(device_id=r.device_id, scan_ms=r.scan_ms, hub_checked=bool(r.hub_checked)) for r in rows]
            out.setdefault(rows[-1].kit_id, []).append(dict(event=event, ticket=ticket, scans=scans))
        return out

    def sync(self, firing: list, unknown: set, now: int, attempts: int = 3):
        """Open, update and auto-resolve alerts to match ``firing`` (fleet.alerts.Firing), in one
        transaction: the alerts evaluator's write. (subject, rule) pairs in ``unknown`` are left as
        they are. Safe with several workers at once: one non-resolved alert per (subject, rule) is
        a unique partial index, and an insert it refuses updates the other worker's row instead."""
        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now, not mid-way
                    return self._sync(conn, firing, unknown, now)
            except OperationalError:
                # PostgreSQL deadlock / SQLite busy: another worker's evaluation; do it again.
                if attempt == attempts - 1:
                    raise

    def _sync(self, conn, firing: list, unknown: set, now: int):
        a = db.alerts.c
        result = EvalResult()
        active = {(r.subject, r.rule): r for r in conn.execute(
            select(db.alerts).where(a.state != "resolved").order_by(a.subject, a.rule))}
        wanted = {f.key: f for f in firing}
        history: list[dict] = []
        for key in sorted(wanted):  # one order for every worker: no lock-order deadlocks
            f = wanted[key]
            details = dict(f.details, evidence=_evidence(f.evidence))
            row = active.get(key)
            if row is None:
                stmt = (self._insert(db.alerts)
                        .values(subject=f.subject, kit_id=f.kit_id, rule=f.rule, severity=f.severity, state="open",
                                first_seen_ms=now, last_seen_ms=now, count=1, message=f.message[:300],
                                details=details, notify_count=0)
                        .on_conflict_do_nothing(index_elements=["subject", "rule"], index_where=a.state != "resolved")
                        .returning(a.id))
                new_id = conn.execute(stmt).scalar()
                if new_id is not None:
                    history.append(dict(alert_id=new_id, ts_ms=now, what="opened", by="auto", detail=f.message[:500]))
                    result.opened += 1
                    continue
                # Another worker opened it since we looked: update theirs.
                row = conn.execute(select(db.alerts).where(a.subject == f.subject, a.rule == f.rule,
                                                           a.state != "resolved")).first()
                if row is None:
                    continue
            new_evidence = (row.details or {}).get("evidence") != details["evidence"]
            conn.execute(update(db.alerts).where(a.id == row.id, a.state != "resolved").values(
                last_seen_ms=now, severity=f.severity, message=f.message[:300], details=details,
                count=a.count + (1 if new_evidence else 0)))
            if row.severity != f.severity:
                history.append(dict(alert_id=row.id, ts_ms=now, what="updated", by="auto",
                                    detail=f"severity {row.severity} -> {f.severity}: {f.message}"[:500]))
            result.updated += 1
        for key in sorted(set(active) - set(wanted) - set(unknown)):
            row = active[key]
            done = conn.execute(update(db.alerts).where(a.id == row.id, a.state != "resolved").values(
                state="resolved", resolved_ms=now, resolved_by="auto"))
            if done.rowcount:
                history.append(dict(alert_id=row.id, ts_ms=now, what="resolved", by="auto", detail="back to normal"))
                result.resolved += 1
        if history:
            conn.execute(db.alert_events.insert(), history)
        return result

    def list(self, state: str | None = None, kit_id: str | None = None, rule: str | None = None,
                    severity: str | None = None, subject: str | None = None, before_id: int | None = None,
                    limit: int = 100) -> list[dict]:
        """Alerts, newest first (by id); ``state="active"`` means open or acknowledged. ``before_id``
        continues a page (keyset pagination)."""
        a = db.alerts.c
        q = select(db.alerts)
        if state == "active":
            q = q.where(a.state != "resolved")
        elif state is not None:
            q = q.where(a.state == state)
        for col, value in ((a.kit_id, kit_id), (a.rule, rule), (a.severity, severity), (a.subject, subject)):
            if value is not None:
                q = q.where(col == value)
        if before_id is not None:
            q = q.where(a.id < before_id)
        with self.engine.connect() as conn:
            return [_alert_view(r) for r in conn.execute(q.order_by(a.id.desc()).limit(limit)).mappings()]

    def get(self, alert_id: int, history: bool = True) -> dict | None:
        e = db.alert_events.c
        with self.engine.connect() as conn:
            r = conn.execute(select(db.alerts).where(db.alerts.c.id == alert_id)).mappings().first()
            if r is None:
                return None
            out = _alert_view(r)
            if history:
                rows = conn.execute(select(db.alert_events).where(e.alert_id == alert_id).order_by(e.id)).mappings()
                out["history"] = [dict(ts=h["ts_ms"], what=h["what"], by=h["by"], detail=h["detail"]) for h in rows]
        return out

    def acknowledge(self, alert_id: int, by: str, note: str | None = None, now: int | None = None) -> str:
        """Mark an open alert acknowledged (no more repeat notifications). Returns "done",
        "already" (acknowledged before: unchanged), "resolved" or "missing"."""
        return self._set_alert_state(alert_id, "acknowledged", by, note, now or now_ms())

    def resolve(self, alert_id: int, by: str, note: str | None = None, now: int | None = None) -> str:
        """Resolve an open or acknowledged alert by hand. Returns "done", "resolved" (before) or "missing".
        If its rule still fires, the next evaluation opens a new alert."""
        return self._set_alert_state(alert_id, "resolved", by, note, now or now_ms())

    def _set_alert_state(self, alert_id: int, to: str, by: str, note: str | None, now: int) -> str:
        a = db.alerts.c
        with self.engine.begin() as conn:
            r = conn.execute(select(a.state).where(a.id == alert_id)).first()
            if r is None:
                return "missing"
            if r.state == "resolved":
                return "resolved"
            if r.state == to:
                return "already"
            if to == "acknowledged":
                values = dict(state=to, acknowledged_by=by, acknowledged_ms=now)
            else:
                values = dict(state=to, resolved_by=by, resolved_ms=now)
            done = conn.execute(update(db.alerts).where(a.id == alert_id, a.state == r.state).values(**values))
            if not done.rowcount:
                return "resolved"  # resolved meanwhile (the only state change that can race us)
            conn.execute(db.alert_events.insert().values(alert_id=alert_id, ts_ms=now, what=to, by=by,
                                                         detail=(note or None) and note[:500]))
        return "done"

    def due_notifications(self, now: int, grace_ms: int, repeat_ms: int, limit: int = 100) -> list[dict]:
        """Alerts whose webhook is due: open (not acknowledged) for ``grace_ms`` and never tried, or
        last tried ``repeat_ms`` ago; resolved after a successful notification, not yet told."""
        a = db.alerts.c
        due_open = and_(a.state == "open", or_(
            and_(a.last_notified_ms.is_(None), a.first_seen_ms <= now - grace_ms),
            a.last_notified_ms <= now - repeat_ms))
        due_resolved = and_(a.state == "resolved", a.notify_count > 0, a.last_notified_ms < a.resolved_ms)
        q = select(db.alerts).where(or_(due_open, due_resolved)).order_by(a.id).limit(limit)
        with self.engine.connect() as conn:
            return [_alert_view(r) for r in conn.execute(q).mappings()]

    def claim_notification(self, alert: dict, now: int) -> bool:
        """Take the notification of ``alert`` (as due_notifications returned it) for this worker:
        compare-and-set of last_notified_ms, so of several workers exactly one sends."""
        a = db.alerts.c
        prev = alert["last_notified_ms"]
        same = a.last_notified_ms.is_(None) if prev is None else a.last_notified_ms == prev
        with self.engine.begin() as conn:
            done = conn.execute(update(db.alerts).where(a.id == alert["id"], a.state == alert["state"], same)
                                .values(last_notified_ms=now))
        return bool(done.rowcount)

    def record_notification(self, alert_id: int, ok: bool, detail: str, now: int | None = None) -> None:
        a = db.alerts.c
        with self.engine.begin() as conn:
            if ok:
                conn.execute(update(db.alerts).where(a.id == alert_id).values(notify_count=a.notify_count + 1))
            conn.execute(db.alert_events.insert().values(alert_id=alert_id, ts_ms=now or now_ms(),
                                                         what="notified" if ok else "notify_failed", by="webhook",
                                                         detail=detail[:500]))

    def open_counts(self) -> dict[tuple[str, str], int]:
        """Non-resolved (open or acknowledged) alerts per (rule, severity): the /metrics gauge."""
        a = db.alerts.c
        q = select(a.rule, a.severity, func.count().label("n")).where(a.state != "resolved").group_by(a.rule, a.severity)
        with self.engine.connect() as conn:
            return {(r.rule, r.severity): int(r.n) for r in conn.execute(q)}


def _evidence(value: Any) -> Any:
    """An alert's evidence as JSON keeps it (so the next evaluation compares like with like)."""
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def _alert_view(r) -> dict:
    return dict(id=r["id"], subject=r["subject"], kit_id=r["kit_id"], rule=r["rule"], severity=r["severity"],
                state=r["state"], first_seen_ms=r["first_seen_ms"], last_seen_ms=r["last_seen_ms"], count=r["count"],
                message=r["message"], details=r["details"] or {}, acknowledged_by=r["acknowledged_by"],
                acknowledged_ms=r["acknowledged_ms"], resolved_ms=r["resolved_ms"], resolved_by=r["resolved_by"],
                last_notified_ms=r["last_notified_ms"], notify_count=r["notify_count"])
