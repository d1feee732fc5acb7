"""Kits and devices with their health, readiness and battery forecasts: the views ops watch.

Each pass reads the devices (fleet/views/devices.py), then the facts health needs in three more
queries whatever the number of kits, and what each kit's manifest says from the registry."""

from __future__ import annotations

import json
from collections import defaultdict

from sqlalchemy import Engine, and_, case, func, select, true

from fleet import db
from fleet.db import now_ms
from fleet.fits import FitCache
from fleet.forecast import Forecast, against_event
from fleet.health import DeviceFacts, HealthConfig, device_health, kit_health, readiness_view
from fleet.registry.store import RegistryStore
from fleet.views.devices import DeviceViews
from kits.contract import ROOT


class HealthViews:
    def __init__(self, engine: Engine, devices: DeviceViews, registry: RegistryStore):
        self.engine = engine
        self.devices = devices
        self.registry = registry
        # Each pack's time-to-empty fit, refit only when it may have moved (fleet/fits.py).
        self.fits = FitCache()

    def kits_with_health(self, cfg: HealthConfig, kit_id: str | None = None, now: int | None = None) -> list[dict]:
        """list_kits (or get_kit) with each device's health, the kit's worst status, its last
        readiness report and a time-to-empty forecast per power bank: three more queries in all,
        whatever the number of kits. Over every kit, a pack's fit is refit only when it may have
        moved (fleet/fits.py); one kit's packs are always refit."""
        now = now or now_ms()
        rows: dict = {}  # each kit's row, with what its manifest says
        if kit_id is None:
            kits = self.devices.list_kits(rows)
        else:
            kit = self.devices.get_kit(kit_id, rows)
            kits = [kit] if kit is not None else []
        if not kits:
            return []
        devs = [d for k in kits for d in k["devices"]]
        packs = [(d["id"], d["latest"].get("battery")) for d in devs if _is_pack(d)]
        refit = {i for i, _ in packs} if kit_id is not None else set(self.fits.stale(packs, now, cfg.forecast_refit_s))
        window_ms = int(cfg.forecast_window_s * 1000)
        with self.engine.connect() as conn:
            facts = self._health_facts(conn, devs, now - int(cfg.rejected_window_s * 1000), kit_id=kit_id)
            readiness = self._latest_readiness(conn, kit_id=kit_id)
            history = {}
            if refit:
                some = None if len(refit) == len(packs) else sorted(refit)  # all: no IN list of every pack
                history = self._battery_history(conn, window_ms, kit_id=kit_id, device_ids=some)
        infos = self.registry.infos_for(rows)
        for kit in kits:
            info = infos.get(kit["id"])
            ends = info.ends_ms if info else None
            batteries = []
            for dev in kit["devices"]:
                fc = None
                if _is_pack(dev):
                    pack, latest = dev["id"], dev["latest"].get("battery")
                    if pack in refit:
                        tte = self.fits.fit(pack, latest, history.get(pack, ()), now)
                    else:
                        tte = self.fits.kept(pack) or self.fits.fit(pack, latest, self._pack_history(pack, window_ms), now)
                    fc = _battery_view(dev, tte, ends, now)
                if fc is not None:
                    batteries.append(fc)
                period = info.telemetry_s.get(dev["id"]) if info else None
                dev["health"] = device_health(dev, facts.get(dev["id"]), cfg, now, period, fc)
            kit["health"] = kit_health([d["health"] for d in kit["devices"]])
            kit["readiness"] = readiness.get(kit["id"])
            kit["event"] = info.event_view() if info else None
            kit["batteries"] = batteries
        if kit_id is None:
            self.fits.keep_only({i for i, _ in packs})
        return kits

    def device_with_health(self, device_id: str, cfg: HealthConfig, now: int | None = None) -> dict | None:
        """get_device with its health and, for a battery, the time-to-empty forecast."""
        now = now or now_ms()
        dev = self.devices.get_device(device_id)
        if dev is None:
            return None
        info = self.registry.kit_info(dev["kit_id"])
        pack = _is_pack(dev)
        with self.engine.connect() as conn:
            facts = self._health_facts(conn, [dev], now - int(cfg.rejected_window_s * 1000), device_id=device_id)
            history = self._battery_history(conn, int(cfg.forecast_window_s * 1000), device_id=device_id) if pack else {}
        fc = None
        if pack:
            tte = self.fits.fit(device_id, dev["latest"].get("battery"), history.get(device_id, ()), now)
            fc = _battery_view(dev, tte, info.ends_ms if info else None, now)
        period = info.telemetry_s.get(device_id) if info else None
        dev["battery_forecast"] = fc
        dev["health"] = device_health(dev, facts.get(device_id), cfg, now, period, fc)
        return dev

    def _health_facts(self, conn, devs: list[dict], rejected_since_ms: int, kit_id: str | None = None,
                      device_id: str | None = None) -> dict[str, DeviceFacts]:
        """Sequence gaps, recent dead letters and desired config per device: three queries."""
        d, s, dc, dl = db.devices.c, db.streams.c, db.desired_config.c, db.dead_letters.c
        scope = [d.kit_id == kit_id] if kit_id is not None else []
        if device_id is not None:
            scope.append(d.id == device_id)
        facts: dict[str, DeviceFacts] = defaultdict(DeviceFacts)
        missing = s.max_seq - s.received
        q = (select(s.device_id, func.sum(missing).label("gaps"),
                    func.sum(case((s.boot == d.boot, missing), else_=0)).label("this_boot"))
             .select_from(db.streams.join(db.devices, d.id == s.device_id)).where(*scope).group_by(s.device_id))
        for r in conn.execute(q):
            f = facts[r.device_id]
            f.gaps, f.gaps_this_boot = int(r.gaps or 0), int(r.this_boot or 0)
        q = (select(dc.device_id, dc.version, dc.ts_ms)
             .select_from(db.desired_config.join(db.devices, d.id == dc.device_id)).where(dc.version > 0, *scope))
        for r in conn.execute(q):
            f = facts[r.device_id]
            f.desired_version, f.desired_ts_ms = r.version, r.ts_ms
        # Dead letters name no device, only a topic: count per topic (the table is capped, and
        # scoped by topic prefix), then match popkit/v1/<kit>/<device>/... to the devices.
        q = select(dl.topic, func.count().label("n")).where(dl.received_ms >= rejected_since_ms)
        if device_id is not None and devs:
            q = q.where(dl.topic.startswith(f"{ROOT}/{devs[0]['kit_id']}/{device_id}/", autoescape=True))
        elif kit_id is not None:
            q = q.where(dl.topic.startswith(f"{ROOT}/{kit_id}/", autoescape=True))
        by_kit_device: dict[tuple[str, str], int] = defaultdict(int)
        for r in conn.execute(q.group_by(dl.topic)):
            parts = r.topic.split("/")
            if len(parts) >= 4:
                by_kit_device[(parts[2], parts[3])] += r.n
        for dev in devs:
            n = by_kit_device.get((dev["kit_id"], dev["id"]))
            if n:
                facts[dev["id"]].rejected = n
        return facts

    def _latest_readiness(self, conn, kit_id: str | None = None) -> dict[str, dict]:
        """The newest ``readiness`` event of each kit's agent: one query, one index walk per agent
        (ix_events_device_ts, newest first, until the first readiness)."""
        d, e = db.devices.c, db.events.c
        newest = (select(e.body).where(e.device_id == d.id, e.channel == "event", e.kind == "readiness")
                  .order_by(e.ts_ms.desc(), e.id.desc()).limit(1).correlate(db.devices).scalar_subquery())
        q = select(d.kit_id, d.id, newest.label("body")).where(d.role == "agent")
        if kit_id is not None:
            q = q.where(d.kit_id == kit_id)
        out: dict[str, dict] = {}
        for r in conn.execute(q):
            if r.body is None:
                continue
            view = readiness_view(r.id, _reading(r.body))
            mine = out.get(r.kit_id)
            if mine is None or (view["ts"] or 0) > (mine["ts"] or 0):
                out[r.kit_id] = view
        return out

    def _pack_history(self, device_id: str, window_ms: int) -> list[dict]:
        """One pack's readings (a fit forgotten between a pass's look and its use: a rare race)."""
        with self.engine.connect() as conn:
            return self._battery_history(conn, window_ms, device_id=device_id).get(device_id, [])

    def _battery_history(self, conn, window_ms: int, kit_id: str | None = None, device_id: str | None = None,
                         device_ids: list[str] | None = None) -> dict[str, list[dict]]:
        """Battery readings of the last ``window_ms`` before each battery's latest reading: one
        query, a range scan of ix_telemetry_device_ts per battery."""
        l, t, d = db.device_latest.c, db.telemetry.c, db.devices.c
        in_window = and_(t.ts_ms >= l.ts_ms - window_ms, t.ts_ms <= l.ts_ms, t.kind == "battery")
        if conn.dialect.name == "postgresql":
            # LATERAL: an index range scan per battery, never a hash join over all of telemetry.
            # OFFSET 0 keeps the planner from flattening it into exactly that hash join once the
            # table is analysed (bench.api: 176 ms -> 14 ms for 1,000 batteries at 1M rows).
            per = select(t.device_id, t.body).where(t.device_id == l.device_id, in_window).offset(0).lateral()
            q = select(per.c.device_id, per.c.body).select_from(db.device_latest.join(per, true()))
        else:
            # SQLite without ANALYZE statistics would scan telemetry and look device_latest up per
            # row; `|| ''` keeps it from looking device_latest up, so it drives from it instead.
            q = select(t.device_id, t.body).select_from(
                db.device_latest.join(db.telemetry, and_(t.device_id == l.device_id.concat(""), in_window)))
        q = q.where(l.kind == "battery")
        if device_id is not None:
            q = q.where(l.device_id == device_id)
        elif kit_id is not None:
            q = q.where(l.device_id.in_(select(d.id).where(d.kit_id == kit_id)))
        if device_ids is not None:
            q = q.where(l.device_id.in_(device_ids))
        out: dict[str, list[dict]] = defaultdict(list)
        for r in conn.execute(q):
            out[r.device_id].append(_reading(r.body))
        return out


def _is_pack(dev: dict) -> bool:
    """A power bank, or any device that sends battery readings."""
    return dev["role"] == "powerbank" or "battery" in dev["latest"]


def _battery_view(dev: dict, tte: Forecast, ends_ms: int | None, now: int) -> dict:
    """A power bank's latest reading next to its time-to-empty (fleet/fits.py) against the event's end."""
    latest = dev["latest"].get("battery") or {}
    v, i, p = latest.get("v"), latest.get("i"), latest.get("p")
    if p is None and v is not None and i is not None:
        p = round(v * i, 2)  # a BMS reports no power; the sign follows the current's
    fc = against_event(tte, ends_ms, now)
    return dict(device_id=dev["id"], ts=latest.get("ts"), soc=latest.get("soc"), v=v, i=i, p=p, **fc.as_dict())


def _reading(body: str) -> dict:
    return json.loads(body)
