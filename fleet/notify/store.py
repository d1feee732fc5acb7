"""Notification targets, the policy, each alert's escalation and every send, in the database
(fleet/notify/tables.py).

Of several fleet workers, one plans each step of an escalation (a compare-and-set of its ``step``,
in the transaction that queues the send) and one makes each attempt of a send (a compare-and-set of
its ``attempts`` that also pushes ``next_try_ms`` past the attempt, a lease: a worker that dies
mid-send leaves the send to be tried again once the lease runs out).
"""

from __future__ import annotations

from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from fleet import db
from fleet.db import now_ms
from fleet.notify import tables as t
from fleet.notify.model import Escalation, Policy, Target

TOLD_EVENTS = ("opened", "reminder", "escalated")


class TargetConflict(Exception):
    """Another target already has that name."""


def _target(r) -> Target:
    return Target(id=r.id, name=r.name, url=r.url, kind=r.kind, audience=r.audience, kits=tuple(r.kits or ()),
                  rules=tuple(r.rules or ()), min_severity=r.min_severity, position=r.position, enabled=r.enabled,
                  repeat_s=r.repeat_s, repeats=r.repeats, created_ms=r.created_ms, updated_ms=r.updated_ms)


def _escalation(r) -> Escalation:
    return Escalation(step=r.step, level=r.level, at_level=r.at_level, target_id=r.target_id, next_ms=r.next_ms,
                      resolved_told=r.resolved_told)


def _send_view(r) -> dict:
    return dict(id=r.id, target_id=r.target_id, target=r.target_name, alert_id=r.alert_id, kit_id=r.kit_id,
                event=r.event, state=r.state, attempts=r.attempts, created_ms=r.created_ms, done_ms=r.done_ms,
                next_try_ms=r.next_try_ms if r.state == "pending" else None, outcome=r.outcome, reason=r.reason)


class NotifyStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    # ------------------------------------------------------------ targets

    def targets(self) -> list[Target]:
        """Every target, in escalation order."""
        q = select(t.notify_targets).order_by(t.notify_targets.c.position, t.notify_targets.c.id)
        with self.engine.connect() as conn:
            return [_target(r) for r in conn.execute(q)]

    def target(self, target_id: int) -> Target | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(t.notify_targets).where(t.notify_targets.c.id == target_id)).first()
        return _target(r) if r else None

    def add_target(self, fields: dict) -> Target:
        """A new target (``fields``: Target's, without id). Raises TargetConflict on a taken name."""
        now = now_ms()
        values = dict(fields, kits=list(fields.get("kits") or ()), rules=list(fields.get("rules") or ()),
                      created_ms=now, updated_ms=now)
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(t.notify_targets.insert().values(**values).returning(t.notify_targets.c.id)).scalar()
        except IntegrityError as exc:
            raise TargetConflict(f"a target named {fields['name']!r} exists already") from exc
        return self.target(int(new_id))

    def update_target(self, target_id: int, fields: dict) -> Target | None:
        """Change a target (None: no such target). Raises TargetConflict on a taken name."""
        values = dict(fields, kits=list(fields.get("kits") or ()), rules=list(fields.get("rules") or ()),
                      updated_ms=now_ms())
        try:
            with self.engine.begin() as conn:
                done = conn.execute(update(t.notify_targets).where(t.notify_targets.c.id == target_id).values(**values))
        except IntegrityError as exc:
            raise TargetConflict(f"a target named {fields['name']!r} exists already") from exc
        return self.target(target_id) if done.rowcount else None

    def delete_target(self, target_id: int) -> bool:
        """Remove a target; its sends stay in the record (those still pending fail: no target)."""
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(t.notify_targets).where(t.notify_targets.c.id == target_id)).rowcount)

    # ------------------------------------------------------------ policy

    def policy(self, default: Policy) -> Policy:
        """The policy ops saved, else ``default`` (from the settings)."""
        with self.engine.connect() as conn:
            r = conn.execute(select(t.notify_policy).where(t.notify_policy.c.id == 1)).first()
        return Policy(grace_s=r.grace_s, repeat_s=r.repeat_s, repeats=r.repeats) if r else default

    def set_policy(self, policy: Policy, by: str) -> Policy:
        values = dict(grace_s=policy.grace_s, repeat_s=policy.repeat_s, repeats=policy.repeats, updated_ms=now_ms(),
                      updated_by=by)
        stmt = self._insert(t.notify_policy).values(id=1, **values)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))
        return policy

    # ------------------------------------------------------------ escalations

    def due_open(self, now: int, grace_ms: int, limit: int = 100) -> list[tuple[int, Escalation | None]]:
        """Open (unacknowledged) alerts whose next step is due: never notified and past the grace
        period, or their escalation's next send due. (alert id, escalation) pairs, oldest first."""
        a, e = db.alerts.c, t.notify_escalations.c
        q = (select(a.id, t.notify_escalations)
             .select_from(db.alerts.outerjoin(t.notify_escalations, e.alert_id == a.id))
             .where(a.state == "open", or_(and_(e.alert_id.is_(None), a.first_seen_ms <= now - grace_ms),
                                           e.next_ms <= now))
             .order_by(a.id).limit(limit))
        with self.engine.connect() as conn:
            return [(r.id, _escalation(r) if r.alert_id is not None else None) for r in conn.execute(q)]

    def due_resolved(self, limit: int = 100) -> list[int]:
        """Resolved alerts whose targets have not yet been told that they are back to normal."""
        a, e = db.alerts.c, t.notify_escalations.c
        q = (select(a.id).select_from(db.alerts.join(t.notify_escalations, e.alert_id == a.id))
             .where(a.state == "resolved", e.resolved_told.is_(False)).order_by(a.id).limit(limit))
        with self.engine.connect() as conn:
            return [r.id for r in conn.execute(q)]

    def escalation(self, alert_id: int) -> Escalation | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(t.notify_escalations).where(t.notify_escalations.c.alert_id == alert_id)).first()
        return _escalation(r) if r else None

    def plan(self, alert_id: int, prev: Escalation | None, after: Escalation, send: dict) -> bool:
        """Take the next step of an alert's escalation and queue its send, if no other worker took it
        (False: one did)."""
        e = t.notify_escalations.c
        values = dict(step=after.step, level=after.level, at_level=after.at_level, target_id=after.target_id,
                      next_ms=after.next_ms, resolved_told=False)
        with self.engine.begin() as conn:
            if prev is None:
                # RETURNING, not rowcount: PostgreSQL's driver gives -1 for an INSERT ... ON CONFLICT DO NOTHING.
                taken = conn.execute(self._insert(t.notify_escalations).values(alert_id=alert_id, **values)
                                     .on_conflict_do_nothing(index_elements=["alert_id"])
                                     .returning(e.alert_id)).first() is not None
            else:
                taken = bool(conn.execute(update(t.notify_escalations)
                                          .where(e.alert_id == alert_id, e.step == prev.step).values(**values)).rowcount)
            if not taken:
                return False
            conn.execute(t.notify_sends.insert().values(**self._new_send(send)))
        return True

    def plan_resolved(self, alert_id: int, sends: list[dict]) -> bool:
        """Mark the alert's targets told of its end and queue those sends (False: another worker did)."""
        e = t.notify_escalations.c
        with self.engine.begin() as conn:
            done = conn.execute(update(t.notify_escalations)
                                .where(e.alert_id == alert_id, e.resolved_told.is_(False)).values(resolved_told=True))
            if not done.rowcount:
                return False
            if sends:
                conn.execute(t.notify_sends.insert(), [self._new_send(s) for s in sends])
        return True

    def told(self, alert_id: int) -> list[int]:
        """The targets told of the alert: a send delivered to them, or still on its way (a send that
        gave up told no one)."""
        s = t.notify_sends.c
        q = (select(s.target_id).where(s.alert_id == alert_id, s.event.in_(TOLD_EVENTS), s.state.in_(("sent", "pending")))
             .group_by(s.target_id).order_by(func.min(s.id)))
        with self.engine.connect() as conn:
            return [r.target_id for r in conn.execute(q)]

    # ------------------------------------------------------------ sends

    @staticmethod
    def _new_send(send: dict) -> dict:
        now = send.get("created_ms") or now_ms()
        return dict(send, state="pending", attempts=0, next_try_ms=send.get("next_try_ms", now), created_ms=now)

    def queue(self, send: dict) -> int:
        """Queue a send outside an escalation (a test send); its id."""
        with self.engine.begin() as conn:
            return int(conn.execute(t.notify_sends.insert().values(**self._new_send(send))
                                    .returning(t.notify_sends.c.id)).scalar())

    def pending_targets(self) -> list[int]:
        s = t.notify_sends.c
        with self.engine.connect() as conn:
            return [r.target_id for r in conn.execute(select(s.target_id).where(s.state == "pending").distinct())]

    def oldest_pending(self, target_id: int) -> dict | None:
        """The target's oldest send not yet done, with its body: sends to one target go in order."""
        s = t.notify_sends.c
        return self._pending(s.target_id == target_id)

    def pending_send(self, send_id: int) -> dict | None:
        """One send not yet done, with its body (None: done, or no such send)."""
        return self._pending(t.notify_sends.c.id == send_id)

    def _pending(self, which) -> dict | None:
        s = t.notify_sends.c
        q = select(t.notify_sends).where(s.state == "pending", which).order_by(s.id).limit(1)
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        return dict(_send_view(r), body=r.body, next_try_ms=r.next_try_ms) if r else None

    def claim(self, send: dict, now: int, lease_ms: int) -> bool:
        """Take one attempt of ``send`` (as oldest_pending returned it) for this worker."""
        s = t.notify_sends.c
        with self.engine.begin() as conn:
            done = conn.execute(update(t.notify_sends)
                                .where(s.id == send["id"], s.state == "pending", s.attempts == send["attempts"])
                                .values(attempts=s.attempts + 1, next_try_ms=now + lease_ms))
        return bool(done.rowcount)

    def finish(self, send_id: int, state: str, outcome: str, reason: str | None, now: int,
               next_try_ms: int | None = None) -> None:
        """Record an attempt's outcome: ``state`` sent or failed (done), or pending (tried again at
        ``next_try_ms``)."""
        values: dict = dict(state=state, outcome=outcome[:300], reason=reason)
        if state == "pending":
            values["next_try_ms"] = next_try_ms
        else:
            values["done_ms"] = now
        with self.engine.begin() as conn:
            conn.execute(update(t.notify_sends).where(t.notify_sends.c.id == send_id).values(**values))

    def sends(self, limit: int = 50, target_id: int | None = None, alert_id: int | None = None,
              before_id: int | None = None) -> list[dict]:
        """Sends, newest first, with their outcome."""
        s = t.notify_sends.c
        q = select(t.notify_sends)
        for col, value in ((s.target_id, target_id), (s.alert_id, alert_id)):
            if value is not None:
                q = q.where(col == value)
        if before_id is not None:
            q = q.where(s.id < before_id)
        with self.engine.connect() as conn:
            return [_send_view(r) for r in conn.execute(q.order_by(s.id.desc()).limit(limit))]

    def send(self, send_id: int) -> dict | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(t.notify_sends).where(t.notify_sends.c.id == send_id)).first()
        return _send_view(r) if r else None
