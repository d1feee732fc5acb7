"""The devices and kits as the API shows them: each device's row with its latest reading of each
kind, a hosted device online only while its agent is."""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import Engine, and_, func, or_, select, true

from fleet import db
from fleet.updates import tables as ut


class DeviceViews:
    def __init__(self, engine: Engine):
        self.engine = engine

    def list_kits(self, rows: dict | None = None) -> list[dict]:
        """Every kit with its devices; ``rows``, if given, gets each kit's row (with what its
        manifest says: fleet/registry) by kit id, for the caller that needs it too."""
        with self.engine.connect() as conn:
            kit_rows = conn.execute(select(db.kits).order_by(db.kits.c.id)).mappings().all()
            devs = self._devices(conn)
        by_kit: dict[str, list[dict]] = defaultdict(list)
        for dev in devs:
            by_kit[dev["kit_id"]].append(dev)
        if rows is not None:
            rows.update((k["id"], k) for k in kit_rows)
        return [self._kit_view(k, by_kit.get(k["id"], [])) for k in kit_rows]

    def get_kit(self, kit_id: str, rows: dict | None = None) -> dict | None:
        with self.engine.connect() as conn:
            k = conn.execute(select(db.kits).where(db.kits.c.id == kit_id)).mappings().first()
            if k is None:
                return None
            devs = self._devices(conn, db.devices.c.kit_id == kit_id)
        if rows is not None:
            rows[kit_id] = k
        return self._kit_view(k, devs)

    def get_device(self, device_id: str) -> dict | None:
        with self.engine.connect() as conn:
            devs = self._devices(conn, db.devices.c.id == device_id)
            if not devs:
                return None
            dev = devs[0]
            rows = conn.execute(
                select(db.streams).where(db.streams.c.device_id == device_id).order_by(db.streams.c.first_ms)
            ).mappings()
            dev["streams"] = [
                dict(boot=r["boot"], max_seq=r["max_seq"], received=r["received"], missing=r["max_seq"] - r["received"],
                     first_ms=r["first_ms"], last_ms=r["last_ms"])
                for r in rows
            ]
        dev["missing"] = sum(s["missing"] for s in dev["streams"])
        return dev

    def online_counts(self) -> tuple[int, int]:
        """(online, total) devices in one COUNT: /healthz must stay cheap with 10,000 devices.
        A hosted device is online only while its agent is (as in _devices)."""
        d = db.devices.alias("d")
        h = db.devices.alias("h")
        up = and_(d.c.online == true(), or_(d.c.host_id.is_(None), h.c.online == true()))
        q = select(func.count().filter(up), func.count()).select_from(d.outerjoin(h, h.c.id == d.c.host_id))
        with self.engine.connect() as conn:
            online, total = conn.execute(q).one()
        return int(online or 0), int(total)

    def list_devices(self) -> list[dict]:
        with self.engine.connect() as conn:
            return self._devices(conn)

    _DEVICE_COLUMNS = ("id", "kit_id", "role", "model", "host_id", "online", "boot", "fw", "config_version",
                       "last_seen_ms", "received", "duplicates", "clock", "reset_cause", "clock_since_ms",
                       "clock_lag_ms", "clock_lag_prev_ms")

    def _devices(self, conn, *where) -> list[dict]:
        # Plain rows, not mappings: at 5,000 devices building RowMappings cost more than SQLite's read.
        d = db.devices.c
        rows = conn.execute(select(*(d[c] for c in self._DEVICE_COLUMNS)).where(*where).order_by(d.kit_id, d.id)).all()
        latest: dict[str, dict] = defaultdict(dict)
        if rows:
            lq = select(db.device_latest.c.device_id, db.device_latest.c.kind, db.device_latest.c.body)
            if where:  # every device: the whole table, not an IN list of thousands of ids
                lq = lq.where(db.device_latest.c.device_id.in_([r[0] for r in rows]))
            for device_id, kind, body in conn.execute(lq):
                latest[device_id][kind] = _reading(body)
        # A hosted device (printer, power bank) is only as online as the agent that drives it.
        online_by_id = {r[0]: bool(r[5]) for r in rows}
        host_ids = {r[4] for r in rows if r[4] and r[4] not in online_by_id}
        if host_ids:
            for r in conn.execute(select(d.id, d.online).where(d.id.in_(host_ids))):
                online_by_id[r.id] = bool(r.online)
        updates = self._updates(conn, [r[0] for r in rows] if where else None) if rows else {}
        out = []
        for (id_, kit_id, role, model, host_id, online, boot, fw, config_version, last_seen_ms, received,
             duplicates, clock, reset_cause, clock_since_ms, lag, lag_prev) in rows:
            out.append(dict(
                id=id_, kit_id=kit_id, role=role, model=model, host_id=host_id,
                online=bool(online) and (host_id is None or online_by_id.get(host_id, False)),
                boot=boot, fw=fw, config_version=config_version, last_seen_ms=last_seen_ms, received=received,
                duplicates=duplicates, latest=latest.get(id_, {}), clock=clock, reset_cause=reset_cause,
                clock_since_ms=clock_since_ms, clock_lag_ms=_smallest(lag, lag_prev), update=updates.get(id_)))
        return out

    @staticmethod
    def _updates(conn, device_ids: list[str] | None) -> dict[str, dict]:
        """Each device's update in its latest rollout (fleet/updates/): state, why, the release's fw, the
        rollout. One query: these devices (ix_device_updates_device), or every device's latest."""
        u, r = ut.device_updates.c, ut.rollouts.c
        latest = select(u.device_id, func.max(u.rollout_id).label("rollout_id")).group_by(u.device_id)
        if device_ids is not None:
            latest = latest.where(u.device_id.in_(device_ids))
        latest = latest.subquery()
        q = (select(u.device_id, u.rollout_id, u.state, u.reason, u.updated_ms, r.release_id, ut.releases.c.fw)
             .select_from(ut.device_updates
                          .join(latest, and_(latest.c.device_id == u.device_id, latest.c.rollout_id == u.rollout_id))
                          .join(ut.rollouts, r.id == u.rollout_id)
                          .join(ut.releases, ut.releases.c.id == r.release_id)))
        return {x.device_id: dict(state=x.state, why=x.reason, fw=x.fw, rollout=x.rollout_id, release=x.release_id,
                                  updated_ms=x.updated_ms) for x in conn.execute(q)}

    @staticmethod
    def _kit_view(kit, devs: list[dict]) -> dict:
        battery = next((d["latest"]["battery"] for d in devs if "battery" in d["latest"]), None)
        return dict(
            id=kit["id"], name=kit["name"], devices=devs,
            devices_online=sum(1 for d in devs if d["online"]), devices_total=len(devs),
            battery=battery,
        )


def _reading(body: str) -> dict:
    return json.loads(body)


def _smallest(*values: int | None) -> int | None:
    return min((v for v in values if v is not None), default=None)
