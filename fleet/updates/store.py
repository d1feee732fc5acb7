"""Releases, rollouts, device updates and kit holds in the database (fleet/updates/tables.py).

Each change is one transaction. A device's move from pending to offered is a conditional update,
so two fleet workers stepping the same rollout cannot offer one device twice.
"""

from __future__ import annotations

from dataclasses import replace

from sqlalchemy import Engine, and_, delete, func, select, update

from fleet import db
from fleet.db import now_ms, upsert_for
from fleet.updates import tables as t
from fleet.updates.model import (FAILED, FINAL, IN_USE_MS, NOT_STARTED, PROGRESS, DeviceUpdate, KitWindow, Plan,
                                 Release, Rollout, Target, apply_report, assign_groups)

ACTIVE = ("running", "paused")

# A device's news counts for an offer only from a session begun after it, give or take this much:
# the kit's clock may be behind the fleet's, and a retained state of an earlier update (days old)
# is far outside it. (The switch to the new slot reboots the device: a new session.)
STALE_SESSION_MS = 15 * 60_000


class UpdateConflict(Exception):
    """The change contradicts what is stored (a release uploaded twice, a device in two rollouts...)."""


def _release(r) -> Release:
    return Release(r.role, r.version, r.fw, r.manifest, r.key_id, r.size, r.created_ms, r.retired_ms, r.created_by)


def _rollout(r) -> Rollout:
    target = r.target or {}
    return Rollout(r.id, r.release_id, r.role, Target(tuple(target.get("kits") or ()), tuple(target.get("devices") or ())),
                   tuple(r.groups), r.success_threshold, r.error_threshold, r.rate_per_min, r.state, r.pause_reason,
                   r.failures_acknowledged, r.created_ms, r.created_by, r.updated_ms, r.downgrade)


def _update(r) -> DeviceUpdate:
    return DeviceUpdate(r.device_id, r.kit_id, r.rollout_id, r.group_index, r.state, r.reason, r.offered_ms,
                        r.updated_ms)


class UpdateStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = upsert_for(engine)

    # ------------------------------------------------------------ releases

    def add_release(self, release: Release, manifest_sha256: str) -> None:
        """Raises UpdateConflict if a release of that role and version is there already (a version is
        never re-used for other bytes: devices compare versions, not contents)."""
        with self.engine.begin() as conn:
            if conn.execute(select(t.releases.c.id).where(t.releases.c.id == release.id)).first():
                raise UpdateConflict(f"release {release.id} exists: give the new build a new version")
            conn.execute(t.releases.insert().values(
                id=release.id, role=release.role, version=release.version, fw=release.fw, manifest=release.manifest,
                manifest_sha256=manifest_sha256, key_id=release.key_id, size=release.size,
                created_ms=release.created_ms, created_by=release.by))

    def releases(self) -> list[Release]:
        r = t.releases.c
        with self.engine.connect() as conn:
            return [_release(x) for x in conn.execute(select(t.releases).order_by(r.created_ms.desc(), r.id))]

    def release(self, release_id: str) -> Release | None:
        with self.engine.connect() as conn:
            x = conn.execute(select(t.releases).where(t.releases.c.id == release_id)).first()
        return _release(x) if x else None

    def manifest_sha256(self, release_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(t.releases.c.manifest_sha256).where(t.releases.c.id == release_id)).scalar()

    def retire(self, release_id: str, by: str, now: int | None = None) -> Release | None:
        """Raises KeyError (no such release) or UpdateConflict (a running or paused rollout uses it)."""
        with self.engine.begin() as conn:
            if not conn.execute(select(t.releases.c.id).where(t.releases.c.id == release_id)).first():
                raise KeyError(release_id)
            busy = conn.execute(select(t.rollouts.c.id).where(and_(
                t.rollouts.c.release_id == release_id, t.rollouts.c.state.in_(ACTIVE)))).scalar()
            if busy is not None:
                raise UpdateConflict(f"release {release_id} is in rollout {busy}: abort it first")
            conn.execute(update(t.releases).where(and_(t.releases.c.id == release_id, t.releases.c.retired_ms.is_(None)))
                         .values(retired_ms=now or now_ms(), retired_by=by))
        return self.release(release_id)

    # ------------------------------------------------------------ rollouts

    def create_rollout(self, release: Release, target: Target, groups: tuple[str, ...], success_threshold: float,
                       error_threshold: float, rate_per_min: int, devices: list[tuple[str, str]], by: str,
                       now: int | None = None, downgrade: bool = False, running: frozenset[str] | set[str] = frozenset()) -> Rollout | None:
        """A running rollout of ``release`` to ``devices`` ((device, kit), already narrowed to the target),
        each put in its group; those of ``running`` already run the release, so their update is committed
        from the start. Raises UpdateConflict for a retired release, no device, or a device whose
        update in another running or paused rollout is not over."""
        now = now or now_ms()
        if release.retired_ms is not None:
            raise UpdateConflict(f"release {release.id} is retired")
        members = assign_groups(groups, devices)
        if not members:
            raise UpdateConflict(f"no {release.role} device matches the target")
        u, r = t.device_updates.c, t.rollouts.c
        with self.engine.begin() as conn:
            busy = conn.execute(select(u.device_id, u.rollout_id).select_from(
                t.device_updates.join(t.rollouts, r.id == u.rollout_id)).where(and_(
                    r.state.in_(ACTIVE), u.state.not_in(FINAL), u.device_id.in_([d for d, _k, _g in members])))
            ).first()
            if busy is not None:
                raise UpdateConflict(f"device {busy.device_id} is in rollout {busy.rollout_id}, not over: "
                                     f"abort that one first")
            rollout_id = conn.execute(t.rollouts.insert().values(
                release_id=release.id, role=release.role,
                target=dict(kits=list(target.kits), devices=list(target.devices)), groups=list(groups),
                success_threshold=success_threshold, error_threshold=error_threshold, rate_per_min=rate_per_min,
                downgrade=downgrade, state="running", failures_acknowledged=0, created_ms=now, created_by=by, updated_ms=now,
                updated_by=by).returning(r.id)).scalar_one()
            conn.execute(t.device_updates.insert(), [
                dict(rollout_id=rollout_id, device_id=d, kit_id=k, group_index=g, updated_ms=now,
                     **(dict(state="committed", reason=f"already runs {release.fw}") if d in running
                        else dict(state="pending", reason=None))) for d, k, g in members])
        return self.rollout(rollout_id)

    def rollouts(self, states: tuple[str, ...] | None = None) -> list[Rollout]:
        r = t.rollouts.c
        q = select(t.rollouts).order_by(r.id.desc())
        if states:
            q = q.where(r.state.in_(states))
        with self.engine.connect() as conn:
            return [_rollout(x) for x in conn.execute(q)]

    def totals(self) -> dict[int, dict[str, int]]:
        """rollout -> its devices counted by where their update is (size, committed, failed, in_flight,
        not_started), every rollout in one grouped query: the list shows progress without a read per rollout."""
        u = t.device_updates.c
        out: dict[int, dict[str, int]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(u.rollout_id, u.state, func.count()).group_by(u.rollout_id, u.state)).all()
        for rid, state, n in rows:
            c = out.setdefault(rid, dict(size=0, committed=0, failed=0, in_flight=0, not_started=0))
            c["size"] += n
            c["committed" if state == "committed" else "failed" if state in FAILED
              else "not_started" if state in NOT_STARTED else "in_flight"] += n
        return out

    def rollout(self, rollout_id: int) -> Rollout | None:
        with self.engine.connect() as conn:
            x = conn.execute(select(t.rollouts).where(t.rollouts.c.id == rollout_id)).first()
        return _rollout(x) if x else None

    def updates(self, rollout_id: int) -> list[DeviceUpdate]:
        u = t.device_updates.c
        with self.engine.connect() as conn:
            return [_update(x) for x in conn.execute(select(t.device_updates).where(u.rollout_id == rollout_id)
                                                      .order_by(u.group_index, u.device_id))]

    def set_state(self, rollout_id: int, state: str, by: str, reason: str | None = None,
                  only_from: tuple[str, ...] = ACTIVE, now: int | None = None) -> Rollout | None:
        """Move a rollout to ``state`` if it is in one of ``only_from``; None if it was not (nothing changed).
        Resuming acknowledges the failures seen so far: only a new one pauses it again."""
        r, u = t.rollouts.c, t.device_updates.c
        values = dict(state=state, pause_reason=reason, updated_ms=now or now_ms(), updated_by=by)
        with self.engine.begin() as conn:
            if state == "running":
                values["failures_acknowledged"] = conn.execute(select(func.count()).where(and_(
                    u.rollout_id == rollout_id, u.state.in_(FAILED)))).scalar_one()
            done = conn.execute(update(t.rollouts).where(and_(r.id == rollout_id, r.state.in_(only_from)))
                                .values(**values)).rowcount
        return self.rollout(rollout_id) if done else None

    def apply_plan(self, rollout: Rollout, plan: Plan, offers: dict[str, dict], now: int | None = None) -> list[str]:
        """Record a step of the planner in one transaction: the offered devices (each with its offer),
        why the others wait, a pause or the end. Returns the devices this call offered (another
        worker may have offered one first)."""
        now = now or now_ms()
        u, r = t.device_updates.c, t.rollouts.c
        offered = []
        with self.engine.begin() as conn:
            # Only a rollout still running is stepped: a pause or abort that just landed wins.
            if not conn.execute(update(t.rollouts).where(and_(r.id == rollout.id, r.state == "running"))
                                .values(updated_ms=r.updated_ms)).rowcount:
                return []
            for device in plan.offer:
                if conn.execute(update(t.device_updates).where(and_(
                        u.rollout_id == rollout.id, u.device_id == device, u.state.in_(NOT_STARTED))).values(
                        state="offered", reason=None, offered_ms=now, updated_ms=now, offer=offers.get(device))).rowcount:
                    offered.append(device)
            # One statement per reason, not per device: a thousand devices waiting for the same group
            # get their new count ("4/10 committed") together.
            by_reason: dict[str, list[str]] = {}
            for device, why in plan.waits.items():
                by_reason.setdefault(why[:300], []).append(device)
            for why, devices in by_reason.items():
                for i in range(0, len(devices), 500):
                    conn.execute(update(t.device_updates).where(and_(
                        u.rollout_id == rollout.id, u.device_id.in_(devices[i:i + 500]), u.state.in_(NOT_STARTED),
                        func.coalesce(u.reason, "") != why)).values(state="waiting", reason=why, updated_ms=now))
            if plan.pause or plan.done:
                conn.execute(update(t.rollouts).where(and_(r.id == rollout.id, r.state == "running")).values(
                    state="paused" if plan.pause else "done", pause_reason=plan.pause and plan.pause[:300],
                    updated_ms=now, updated_by="auto"))
        return offered

    def device_reported(self, device: str, state: str, reason: str | None = None,
                        now: int | None = None, fw: str | None = None) -> DeviceUpdate | None:
        """A device said where its update is (offered, downloading, trial, committed, rolled_back,
        failed): applied to its update in the latest rollout that offered it. None when it changes
        nothing (no such update, or a state behind the one recorded, or an update already over)."""
        with self.engine.begin() as conn:
            return self._report(conn, device, state, reason, now or now_ms(), fw)

    def states_reported(self, conn, states: list) -> None:
        """The ledger's state hook (fleet/ledger/store.py): each device state carrying ``update``
        (kits/contract.py) moves that device's update, in the batch's own transaction. Safe mode is
        not a step of an update: the device's state shows it, its update record stays where it is."""
        now = now_ms()
        # An agent says nothing of a self-update that worked: it runs the new version (its fw). Agents'
        # births come in storms (a thousand kits reconnecting): one query finds those mid-update.
        agents = [d for d, st in states if st.update is None and st.role == "agent" and st.fw and st.online]
        mid_update: set[str] = set()
        if agents:
            u = t.device_updates.c
            mid_update = set(conn.execute(select(u.device_id).where(and_(
                u.device_id.in_(agents), u.state.in_(PROGRESS)))).scalars())
        for device, st in states:
            news = st.update
            # A session's start is only a time where the device's clock was set.
            session = st.ts if st.clock != "unset" else None
            if news is not None and news.state != "safe_mode":
                self._report(conn, device, news.state, news.why, now, news.fw, session)
            elif device in mid_update:
                self._report(conn, device, "committed", f"runs {st.fw}", now, st.fw, session, same_fw=True)

    def acks_reported(self, conn, new: list) -> None:
        """The ledger's event hook: a kit's agent's answer to an ``update`` command (fleet/updates/worker.py)
        moves the device it was for. ``error``, ``rejected`` or ``expired``: that device's update has
        failed, with the agent's reason. ``ok``: news, so the offer's timeout counts from it. In the
        batch's own transaction, after the command itself is settled (fleet/commands/store.py)."""
        acks = {m.msg.cmd_id: m for m in new if m.channel == "ack"}
        if not acks:
            return
        c = db.commands.c
        rows = conn.execute(select(c.id, c.device_id, c.args).where(and_(
            c.id.in_(list(acks)), c.action == "update"))).all()
        now = now_ms()
        u = t.device_updates.c
        for r in rows:
            m = acks[r.id]
            args = r.args or {}
            if m.device_id != r.device_id or not isinstance(args.get("rollout"), int) or not args.get("device"):
                continue  # only the agent the command went to answers for it
            mine = and_(u.rollout_id == args["rollout"], u.device_id == args["device"])
            status, detail = m.msg.status, (m.msg.detail or "").strip()
            if status == "ok":
                conn.execute(update(t.device_updates).where(and_(mine, u.state == "offered")).values(updated_ms=now))
                continue
            why = {"error": detail or "the kit's agent could not take it",
                   "rejected": f"refused by the kit's agent: {detail or 'no reason given'}",
                   "expired": "the update command expired before the kit's agent got it"}[status]
            conn.execute(update(t.device_updates).where(and_(mine, u.state.not_in(FINAL | NOT_STARTED)))
                         .values(state="failed", reason=why[:300], updated_ms=now))

    def expire_offers(self, older_than_ms: int, reason: str, now: int | None = None) -> int:
        """Offered devices with no news since ``older_than_ms`` (no ack of their command, no state) have
        failed, with ``reason``: they count toward their rollout's error threshold. Returns how many."""
        u = t.device_updates.c
        with self.engine.begin() as conn:
            return conn.execute(update(t.device_updates).where(and_(u.state == "offered", u.updated_ms < older_than_ms))
                                .values(state="failed", reason=reason[:300], updated_ms=now or now_ms())).rowcount

    def not_sent(self, rollout_id: int, device: str, reason: str, failed: bool, now: int | None = None) -> None:
        """An offer that never left the fleet: back to waiting (``reason``: why; the next step offers it
        again), or failed for good."""
        u = t.device_updates.c
        values = (dict(state="failed", reason=reason[:300]) if failed
                  else dict(state="waiting", reason=reason[:300], offered_ms=None, offer=None))
        with self.engine.begin() as conn:
            conn.execute(update(t.device_updates).where(and_(
                u.rollout_id == rollout_id, u.device_id == device, u.state == "offered"))
                .values(updated_ms=now or now_ms(), **values))

    def _report(self, conn, device: str, state: str, reason: str | None, now: int,
                fw: str | None, session_ms: int | None = None, same_fw: bool = False) -> DeviceUpdate | None:
        """``same_fw``: the report counts only if ``fw`` is the offered release's (an agent's state)."""
        u = t.device_updates.c
        row = conn.execute(select(t.device_updates).where(and_(
            u.device_id == device, u.state.not_in(NOT_STARTED))).order_by(u.rollout_id.desc()).limit(1)).first()
        if row is None:
            return None
        if same_fw and not (row.offer and row.offer.get("fw") == fw):
            return None
        if fw and row.offer and row.offer.get("fw") and row.offer["fw"] != fw:
            return None  # news of another release's slot (a state retained from before this offer)
        if session_ms is not None and row.offered_ms and session_ms < row.offered_ms - STALE_SESSION_MS:
            return None  # a session begun well before the offer: its news is of an earlier update (retained)
        new = apply_report(_update(row), state, reason and reason[:300], now)
        if new is None:
            return None
        conn.execute(update(t.device_updates).where(and_(u.rollout_id == row.rollout_id, u.device_id == device,
                                                         u.state == row.state))
                     .values(state=new.state, reason=new.reason, updated_ms=now))
        return new

    def kit_updates(self, kit_id: str) -> list[tuple[DeviceUpdate, str]]:
        """Each device of the kit in its latest rollout: (its update, the rollout's release)."""
        u, r = t.device_updates.c, t.rollouts.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.device_updates, r.release_id).select_from(
                t.device_updates.join(t.rollouts, r.id == u.rollout_id)).where(u.kit_id == kit_id)
                .order_by(u.device_id, u.rollout_id.desc())).all()
        latest: dict[str, tuple[DeviceUpdate, str]] = {}
        for x in rows:
            latest.setdefault(x.device_id, (_update(x), x.release_id))
        return list(latest.values())

    # ------------------------------------------------------------ holds

    def hold(self, kit_id: str, by: str, reason: str | None = None, now: int | None = None) -> dict:
        row = dict(kit_id=kit_id, by=by, reason=reason, since_ms=now or now_ms())
        stmt = self._insert(t.kit_update_holds).values(**row)
        with self.engine.begin() as conn:
            conn.execute(stmt.on_conflict_do_update(index_elements=["kit_id"],
                                                    set_=dict(by=by, reason=reason, since_ms=row["since_ms"])))
        return row

    def lift_hold(self, kit_id: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(t.kit_update_holds).where(t.kit_update_holds.c.kit_id == kit_id)).rowcount)

    def holds(self) -> dict[str, dict]:
        with self.engine.connect() as conn:
            return {x.kit_id: dict(x._mapping) for x in conn.execute(select(t.kit_update_holds))}

    def windows(self, kit_infos: dict, now: int | None = None) -> dict[str, KitWindow]:
        """What the planner knows of each kit as of ``now``: its event window and agent (``kit_infos``:
        the registry's KitInfo by kit), its hold, and its latest check-in if it is in use."""
        holds = self.holds()
        in_use = self.last_checkins((now or now_ms()) - IN_USE_MS)
        out = {k: KitWindow(i.doors_open_ms, i.ends_ms, last_checkin_ms=in_use.get(k), has_agent=bool(i.agent))
               for k, i in kit_infos.items()}
        for k, h in holds.items():
            out[k] = replace(out.get(k, KitWindow()), held_by=h["by"], hold_reason=h["reason"])
        return out

    def last_checkins(self, since_ms: int) -> dict[str, int]:
        """kit -> its latest check-in (scan time) after ``since_ms``: one range scan of the check-ins'
        scan time (ix_checkins_scan_ms) for every kit at once."""
        c, d = db.checkins.c, db.devices.c
        q = (select(d.kit_id, func.max(c.scan_ms)).select_from(db.checkins.join(db.devices, d.id == c.device_id))
             .where(c.scan_ms > since_ms).group_by(d.kit_id))
        with self.engine.connect() as conn:
            return {k: ms for k, ms in conn.execute(q)}
