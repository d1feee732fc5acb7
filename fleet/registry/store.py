"""The kits and devices tables: registration from a manifest, and the lookups ingest and the views need."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine, case, select

from fleet import db
from fleet.changes import Changes
from fleet.db import now_ms
from fleet.registry.model import DeviceRef, KitInfo, epoch_ms
from kits.manifest import KitManifest


class RegistryStore:
    def __init__(self, engine: Engine, changes: Changes):
        self.engine = engine
        self.changes = changes
        self._insert = db.upsert_for(engine)
        self.kit_of: dict[str, str] = {}  # device -> kit, to name what a batch changed
        # kit -> (its manifest_ms, its KitInfo): the telemetry periods are read again only when a
        # registration (by any process) moved manifest_ms.
        self._infos: dict[str, tuple[int, KitInfo]] = {}

    def register_kit(self, manifest: KitManifest) -> None:
        """Create or update a kit and its devices from its manifest, with its event window."""
        now = now_ms()
        ev = manifest.event
        facts = dict(name=manifest.name, agent_id=manifest.agent,
                     doors_open_ms=epoch_ms(ev.doors_open) if ev and ev.doors_open else None,
                     ends_ms=epoch_ms(ev.ends) if ev else None)
        k = db.kits.c
        with self.engine.begin() as conn:
            stmt = self._insert(db.kits).values(id=manifest.id, created_ms=now, manifest_ms=now, **facts)
            # manifest_ms only ever moves up, even for two registrations within a millisecond:
            # it is what tells every process's cache that the kit's facts changed.
            manifest_ms = conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=dict(
                facts, manifest_ms=case((k.manifest_ms >= now, k.manifest_ms + 1), else_=now)))
                .returning(k.manifest_ms)).scalar_one()
            for spec in manifest.all_devices():
                host = manifest.agent if spec.hosted else None
                row = dict(id=spec.id, kit_id=manifest.id, role=spec.role, model=spec.model, host_id=host,
                           telemetry_s=spec.telemetry_s)
                stmt = self._insert(db.devices).values(**row, online=False, received=0, duplicates=0)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["id"], set_={c: row[c] for c in ("kit_id", "role", "model", "host_id", "telemetry_s")}))
        self._infos[manifest.id] = (manifest_ms, KitInfo(
            manifest.id, manifest.agent, facts["doors_open_ms"], facts["ends_ms"],
            {spec.id: spec.telemetry_s for spec in manifest.all_devices()}))
        devices = {spec.id for spec in manifest.all_devices()}
        self.kit_of.update((d, manifest.id) for d in devices)
        self.changes.tell({manifest.id}, devices)

    def device_refs(self) -> dict[str, DeviceRef]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.devices.c.id, db.devices.c.kit_id, db.devices.c.role))
            return {r.id: DeviceRef(r.id, r.kit_id, r.role) for r in rows}

    def device_ref(self, device_id: str) -> DeviceRef | None:
        with self.engine.connect() as conn:
            r = conn.execute(
                select(db.devices.c.id, db.devices.c.kit_id, db.devices.c.role).where(db.devices.c.id == device_id)
            ).first()
        return DeviceRef(r.id, r.kit_id, r.role) if r else None

    def kits_of(self, devices: set[str]) -> dict[str, str]:
        """device -> kit for those of ``devices`` that are registered (by this process or another)."""
        if any(d not in self.kit_of for d in devices):
            self.kit_of = {d: ref.kit_id for d, ref in self.device_refs().items()}
        return self.kit_of

    def kit_info(self, kit_id: str) -> KitInfo | None:
        return self.kit_infos(kit_id).get(kit_id)

    def kit_infos(self, kit_id: str | None = None) -> dict[str, KitInfo]:
        """What each kit's manifest says (one kit's, or every kit's), as last registered by any
        process; a kit registered before the fleet stored it is left out (nothing known)."""
        k = db.kits.c
        q = select(k.id, k.agent_id, k.doors_open_ms, k.ends_ms, k.manifest_ms)
        if kit_id is not None:
            q = q.where(k.id == kit_id)
        with self.engine.connect() as conn:
            rows = {r.id: r._mapping for r in conn.execute(q)}
        if kit_id is None:
            for gone in set(self._infos) - set(rows):
                self._infos.pop(gone, None)
        return self.infos_for(rows)

    def infos_for(self, rows: dict[str, Mapping[str, Any]]) -> dict[str, KitInfo]:
        """KitInfo for kits whose rows (with their manifest columns) the caller has read already:
        the telemetry periods are read only for kits registered since this process last looked."""
        known = {i: r for i, r in rows.items() if r["manifest_ms"] is not None}
        stale = sorted(i for i, r in known.items() if i not in self._infos or self._infos[i][0] != r["manifest_ms"])
        if stale:
            d = db.devices.c
            q = select(d.kit_id, d.id, d.telemetry_s).where(d.telemetry_s.is_not(None))
            if len(stale) <= 500:  # else every device: one scan, not an IN list of thousands
                q = q.where(d.kit_id.in_(stale))
            periods: dict[str, dict[str, float]] = defaultdict(dict)
            with self.engine.connect() as conn:
                for r in conn.execute(q):
                    periods[r.kit_id][r.id] = r.telemetry_s
            for i in stale:
                r = known[i]
                self._infos[i] = (r["manifest_ms"], KitInfo(i, r["agent_id"], r["doors_open_ms"], r["ends_ms"],
                                                            periods.get(i, {})))
        return {i: self._infos[i][1] for i in known}
