"""Everything the fleet writes and reads, over one SQLAlchemy engine (SQLite or PostgreSQL).

Ingest hands ``write_batch`` a few hundred validated messages; they are written
in one transaction whose commit is what the fleet's acknowledgements promise.
Deduplication is the database's unique key on (device, boot, seq), so several
ingest workers can share one database without sharing memory.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
import json
import logging
from typing import Any, Callable

from sqlalchemy import (BigInteger, Boolean, Engine, Text, and_, bindparam, case, cast, delete, func, literal, literal_column,
                        not_, or_, select, true, type_coerce, update)
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fleet import db
from fleet.fits import FitCache
from fleet.forecast import Forecast, against_event
from fleet.health import DeviceFacts, HealthConfig, KitInfo, device_health, kit_health, readiness_view
from kits.contract import MAX_CONFIG_PAYLOAD, ROOT, Command, Config, State, encode
from kits.manifest import KitManifest

log = logging.getLogger("popkit.fleet.store")

DEAD_LETTER_HEAD = 256  # bytes of a rejected payload kept for diagnosis


@dataclass(frozen=True)
class DeviceRef:
    id: str
    kit_id: str
    role: str


@dataclass
class LedgerMessage:
    """A validated telemetry/event/ack message addressed to a known device."""

    device_id: str
    channel: str
    msg: Any  # a contract model with boot, seq, ts
    body: str  # the payload as received (already validated)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.device_id, self.msg.boot, self.msg.seq)


@dataclass
class RejectedMessage:
    topic: str
    payload: bytes
    reason: str
    detail: str


@dataclass
class Batch:
    ledger: list[LedgerMessage] = field(default_factory=list)
    states: list[tuple[str, State]] = field(default_factory=list)
    rejected: list[RejectedMessage] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ledger) + len(self.states) + len(self.rejected)


@dataclass
class BatchResult:
    inserted: int
    duplicates: int


class PayloadTooLarge(ValueError):
    """What the fleet would publish is over the contract's size limit for its channel."""


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


HISTORICAL_AFTER_MS = 60_000  # received this long after it happened: the kit held it (FleetSettings.historical_after_s)

class Store:
    def __init__(self, engine: Engine, dead_letter_cap: int = 10_000, historical_after_ms: int = HISTORICAL_AFTER_MS):
        self.engine = engine
        self.dead_letter_cap = dead_letter_cap
        self.historical_after_ms = historical_after_ms
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        # Called, in order, with (kits, devices) after every write of this process commits (ingest's
        # batches, a registration, a pushed config): the API's kit views recompute them, then the
        # live stream tells the dashboards (fleet/api/app.py). Called on the writer's thread: must not block.
        self.on_change: list[Callable[[set[str], set[str]], None]] = []
        self._kit_of: dict[str, str] = {}  # device -> kit, to name what a batch changed
        # Called with (conn, new ledger messages) inside every ingest batch's transaction, before the
        # commit that the fleet's receipts wait for: a feature package's own record of an event
        # (fleet/tickets: a kit's revocations) is then never behind the receipt that lets the kit forget it.
        self.event_hooks: list[Callable[[Any, list], None]] = []
        # Each pack's time-to-empty fit, refit only when it may have moved (fleet/fits.py).
        self.fits = FitCache()
        # Ingest's upserts, built once (their insert is the dialect's): building one and its cache key on
        # every batch cost a third of the writer thread at 1,000 msg/s (SQLAlchemy memoizes the key per
        # statement object).
        self._upsert_streams = self._streams_upsert()
        self._upsert_latest = self._latest_upsert()

    @classmethod
    def open(cls, url: str, **kwargs) -> "Store":
        engine = db.make_engine(url)
        db.migrate(engine)
        return cls(engine, **kwargs)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ registry

    def register_kit(self, manifest: KitManifest) -> None:
        """Create or update a kit and its devices from its manifest."""
        with self.engine.begin() as conn:
            stmt = self._insert(db.kits).values(id=manifest.id, name=manifest.name, created_ms=now_ms())
            conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"name": manifest.name}))
            for spec in manifest.all_devices():
                host = manifest.agent if spec.hosted else None
                row = dict(id=spec.id, kit_id=manifest.id, role=spec.role, model=spec.model, host_id=host)
                stmt = self._insert(db.devices).values(**row, online=False, received=0, duplicates=0)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["id"],
                        set_={k: row[k] for k in ("kit_id", "role", "model", "host_id")},
                    )
                )
        self.remember_kit(manifest)
        devices = {spec.id for spec in manifest.all_devices()}
        self._kit_of.update((d, manifest.id) for d in devices)
        self._changed({manifest.id}, devices)

    def _changed(self, kits: set[str], devices: set[str]) -> None:
        for fn in self.on_change:
            try:
                fn(kits, devices)
            except Exception:  # noqa: BLE001 - a listener (the dashboard) must never fail a write
                log.exception("a change listener failed")

    def _batch_changed(self, batch: "Batch") -> None:
        """Tell the listeners which kits and devices a committed batch touched."""
        if not self.on_change:
            return
        devices = {d for d, _ in batch.states} | {m.device_id for m in batch.ledger}
        if any(d not in self._kit_of for d in devices):
            # Ingest commits only registered devices: a miss is one another process registered.
            self._kit_of = {d: ref.kit_id for d, ref in self.device_refs().items()}
        kits = {self._kit_of[d] for d in devices if d in self._kit_of}
        # A rejected message counts against its device's health: popkit/v1/<kit>/<device>/...
        # (known devices only: a flood for unknown ones must not reload the registry per batch)
        for r in batch.rejected:
            parts = r.topic.split("/")
            if len(parts) >= 4 and self._kit_of.get(parts[3]) == parts[2]:
                kits.add(parts[2])
                devices.add(parts[3])
        if devices:
            self._changed(kits, devices)

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

    # ------------------------------------------------------------ ingest

    def write_batch(self, batch: Batch, received_ms: int | None = None) -> BatchResult:
        received_ms = received_ms or now_ms()
        # A producer that resent before its receipt arrived can put both copies in one batch.
        unique: dict[tuple[str, str, int], LedgerMessage] = {}
        for m in batch.ledger:
            unique.setdefault(m.key, m)
        # Arrival order, not key order (as the upserts below): ids follow arrival, which retention's
        # watermark relies on (fleet/retention.py). A deadlock on the unique key needs the same message
        # in two workers' batches at once, and the commit's retry covers it.
        ledger = list(unique.values())
        with self.engine.begin() as conn:
            inserted = self._insert_ledger(conn, ledger, received_ms)
            new = [m for key, m in unique.items() if key in inserted]
            self._update_streams(conn, new)
            self._record_checkins(conn, new, received_ms)
            self._record_acks(conn, new)
            for hook in self.event_hooks:
                hook(conn, new)
            self._update_latest(conn, new)
            dup_by_device = self._update_devices(conn, batch, new, received_ms)
            for device_id, state in batch.states:
                self._apply_state(conn, device_id, state, received_ms)
            self._dead_letter(conn, batch.rejected, received_ms)
        self._batch_changed(batch)
        return BatchResult(inserted=len(inserted), duplicates=sum(dup_by_device.values()))

    def _insert_ledger(self, conn, ledger: list[LedgerMessage], received_ms: int) -> set[tuple[str, str, int]]:
        tel_rows, ev_rows = [], []
        for m in ledger:
            msg = m.msg
            if m.channel == "telemetry":
                tel_rows.append((m.device_id, msg.boot, msg.seq, msg.ts, received_ms, msg.kind, m.body))
            else:
                kind = msg.kind if m.channel == "event" else "ack"
                ev_rows.append((m.device_id, msg.boot, msg.seq, msg.ts, received_ms, m.channel, kind, m.body))
        inserted: set[tuple[str, str, int]] = set()
        for table, columns, rows in ((db.telemetry, _TELEMETRY_COLUMNS, tel_rows), (db.events, _EVENT_COLUMNS, ev_rows)):
            if rows:
                inserted.update(_insert_new_keys(conn, table.name, columns, rows))
        return inserted

    def _update_streams(self, conn, new: list[LedgerMessage]) -> None:
        agg: dict[tuple[str, str], list[int]] = {}
        for m in new:
            msg = m.msg
            key = (m.device_id, msg.boot)
            seq, ts = msg.seq, msg.ts
            a = agg.get(key)
            if a is None:
                agg[key] = [seq, 1, ts, ts]
            else:
                if seq > a[0]:
                    a[0] = seq
                a[1] += 1
                if ts < a[2]:
                    a[2] = ts
                elif ts > a[3]:
                    a[3] = ts
        if not agg:
            return
        # In key order: two workers upserting the same streams in different orders deadlocked on PostgreSQL.
        rows = [
            dict(device_id=d, boot=b, max_seq=a[0], received=a[1], first_ms=a[2], last_ms=a[3])
            for (d, b), a in sorted(agg.items())
        ]
        conn.execute(self._upsert_streams, rows)

    def _streams_upsert(self):
        s = db.streams.c
        stmt = self._insert(db.streams)
        ex = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=["device_id", "boot"],
            set_={
                "max_seq": case((ex.max_seq > s.max_seq, ex.max_seq), else_=s.max_seq),
                "received": s.received + ex.received,
                "first_ms": case((ex.first_ms < s.first_ms, ex.first_ms), else_=s.first_ms),
                "last_ms": case((ex.last_ms > s.last_ms, ex.last_ms), else_=s.last_ms),
            },
        )

    def _record_checkins(self, conn, new: list[LedgerMessage], received_ms: int) -> None:
        rows = []
        for m in new:
            if m.channel == "event" and m.msg.kind == "checkin":
                d = m.msg.data  # validated against kits.contract.Checkin at decode
                rows.append(dict(event_id=d.get("event"), ticket=d.get("ticket"), tier=d.get("tier"),
                                 verdict=d["verdict"], hub_checked=d.get("hub_checked", True),
                                 device_id=m.device_id, boot=m.msg.boot, seq=m.msg.seq, scan_ms=m.msg.ts,
                                 received_ms=received_ms))
        if rows:
            conn.execute(db.checkins.insert(), rows)

    def _record_acks(self, conn, new: list[LedgerMessage]) -> None:
        """A device's answer settles its own pending command (the first answer wins; a device
        cannot settle another device's command)."""
        rows = [dict(b_id=m.msg.cmd_id, b_dev=m.device_id, b_status=m.msg.status, b_detail=m.msg.detail, b_ms=m.msg.ts)
                for m in new if m.channel == "ack"]
        if not rows:
            return
        c = db.commands.c
        conn.execute(
            update(db.commands)
            .where(c.id == bindparam("b_id"), c.device_id == bindparam("b_dev"), c.status == "pending")
            .values(status=bindparam("b_status"), detail=bindparam("b_detail"), acked_ms=bindparam("b_ms")),
            rows,
        )

    def _update_latest(self, conn, new: list[LedgerMessage]) -> None:
        latest: dict[tuple[str, str], LedgerMessage] = {}
        for m in new:
            if m.channel != "telemetry":
                continue
            key = (m.device_id, m.msg.kind)
            if key not in latest or m.msg.ts >= latest[key].msg.ts:
                latest[key] = m
        if not latest:
            return
        rows = [dict(device_id=d, kind=k, ts_ms=m.msg.ts, body=m.body) for (d, k), m in sorted(latest.items())]
        conn.execute(self._upsert_latest, rows)

    def _latest_upsert(self):
        stmt = self._insert(db.device_latest)
        ex = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=["device_id", "kind"],
            set_={"ts_ms": ex.ts_ms, "body": ex.body},
            where=ex.ts_ms >= db.device_latest.c.ts_ms,
        )

    def _update_devices(self, conn, batch: Batch, new: list[LedgerMessage], received_ms: int) -> dict[str, int]:
        new_by_device: dict[str, int] = defaultdict(int)
        dup_by_device: dict[str, int] = defaultdict(int)
        for m in new:
            new_by_device[m.device_id] += 1
        for m in batch.ledger:
            dup_by_device[m.device_id] += 1
        for device_id, n in new_by_device.items():
            dup_by_device[device_id] -= n
        dup_by_device = defaultdict(int, {k: v for k, v in dup_by_device.items() if v})
        seen = set(new_by_device) | set(dup_by_device) | {d for d, _ in batch.states}
        if not seen:
            return dup_by_device
        # How late each device's new messages arrived (received - ts): the smallest, for its clock's
        # drift (fleet/alerts.py clock_drift). Duplicates are resends, late by nature: left out.
        lag: dict[str, int] = {}
        for m in new:
            late = received_ms - m.msg.ts
            if late < lag.get(m.device_id, late + 1):
                lag[m.device_id] = late
        conn.execute(
            _DEVICE_COUNTS,
            [dict(b_id=i, b_new=new_by_device.get(i, 0), b_dup=dup_by_device.get(i, 0), b_seen=received_ms,
                  b_lag=lag.get(i), b_window=CLOCK_LAG_WINDOW_MS) for i in sorted(seen)],
        )
        return dup_by_device

    def _apply_state(self, conn, device_id: str, state: State, received_ms: int) -> None:
        conn.execute(_DEVICE_STATE, dict(b_id=device_id, b_online=state.online, b_boot=state.boot, b_fw=state.fw,
                                         b_config=state.config_version, b_ts=state.ts, b_clock=state.clock,
                                         b_unset=state.clock == "unset", b_reset=state.reset_cause,
                                         b_received=received_ms))

    def _dead_letter(self, conn, rejected: list[RejectedMessage], received_ms: int) -> None:
        if not rejected:
            return
        conn.execute(
            db.dead_letters.insert(),
            [
                dict(
                    received_ms=received_ms,
                    reason=r.reason,
                    topic=r.topic[:300],
                    payload_head=bytes(r.payload[:DEAD_LETTER_HEAD]),
                    payload_size=len(r.payload),
                    detail=r.detail[:300],
                )
                for r in rejected
            ],
        )
        # Bounded: keep the newest `dead_letter_cap`. max(id) is an index lookup, so this is cheap,
        # and it runs only for batches that rejected something.
        top = conn.execute(select(func.max(db.dead_letters.c.id))).scalar() or 0
        conn.execute(delete(db.dead_letters).where(db.dead_letters.c.id <= top - self.dead_letter_cap))

    # ------------------------------------------------------------ commands and desired config

    def add_command(self, device_id: str, cmd: Command, requested_by: str | None = None) -> None:
        """Record a command as pending; call before publishing it, so its ack always finds it."""
        with self.engine.begin() as conn:
            conn.execute(db.commands.insert().values(
                id=cmd.id, device_id=device_id, action=cmd.action, args=cmd.args, ts_ms=cmd.ts,
                expires_ms=cmd.expires, status="pending", requested_by=requested_by))

    def pending_commands(self, device_ids: list[str], since_ms: int) -> list[tuple[str, Command]]:
        """(device, command) for each command these devices have not answered, asked since
        ``since_ms``, oldest first: one query for a whole batch of births (a reconnect storm)."""
        c = db.commands.c
        q = (select(c.device_id, c.id, c.ts_ms, c.expires_ms, c.action, c.args)
             .where(c.device_id.in_(device_ids), c.status == "pending", c.ts_ms >= since_ms)
             .order_by(c.ts_ms, c.id))
        with self.engine.connect() as conn:
            return [(r.device_id, Command(id=r.id, ts=r.ts_ms, expires=r.expires_ms, action=r.action,
                                          args=r.args or {})) for r in conn.execute(q)]

    def audit(self, limit: int = 100, before_ms: int | None = None, kits: set[str] | None = None,
              venues: set[str] | None = None, me: str | None = None) -> list[dict]:
        """Who did what to which device or alert, when, and how it ended: commands and alert
        acknowledgements/resolutions by people, and every other change made through the API
        (fleet/auth/audit.py), newest first (``before_ms``: the next page).
        A crew or venue user's view: ``kits`` and ``venues`` they see (None: all), and ``me``, whose
        own changes they always see."""
        c, e, a, r = db.commands.c, db.alert_events.c, db.alerts.c, db.api_audit.c
        cq = select(db.commands).order_by(c.ts_ms.desc()).limit(limit)
        eq = (select(e.ts_ms, e.what, e.by, e.detail, a.id, a.rule, a.subject)
              .select_from(db.alert_events.join(db.alerts, a.id == e.alert_id))
              .where(e.what.in_(("acknowledged", "resolved")), e.by != "auto").order_by(e.ts_ms.desc()).limit(limit))
        rq = select(db.api_audit).order_by(r.ts_ms.desc(), r.id.desc()).limit(limit)
        if before_ms is not None:
            cq, eq, rq = cq.where(c.ts_ms < before_ms), eq.where(e.ts_ms < before_ms), rq.where(r.ts_ms < before_ms)
        if kits is not None or venues is not None:
            kits, venues = sorted(kits or ()), sorted(venues or ())
            cq = cq.where(c.device_id.in_(select(db.devices.c.id).where(db.devices.c.kit_id.in_(kits))))
            eq = eq.where(a.kit_id.in_(kits))
            rq = rq.where(r.kit_id.in_(kits) | r.venue_id.in_(venues) | (r.by == me))
        now = now_ms()
        with self.engine.connect() as conn:
            out = [dict(ts=r["ts_ms"], by=r["requested_by"], what=f"command {r['action']}", target=r["device_id"],
                        ref=r["id"], result=v["status"] + (f": {v['detail']}" if v["detail"] else ""))
                   for r in conn.execute(cq).mappings() for v in (_command_view(r, now),)]
            out += [dict(ts=r.ts_ms, by=r.by, what=f"alert {r.what}", target=r.subject, ref=str(r.id),
                         result=f"{r.rule}" + (f": {r.detail}" if r.detail else "")) for r in conn.execute(eq)]
            out += [dict(ts=r.ts_ms, by=r.by, what=f"{r.method} {r.route}", target=r.path, ref=f"request {r.id}",
                         result=str(r.status)) for r in conn.execute(rq)]
        return sorted(out, key=lambda x: x["ts"], reverse=True)[:limit]

    def commands(self, device_id: str, limit: int = 50, now: int | None = None) -> list[dict]:
        """A device's commands, newest first."""
        c = db.commands.c
        q = select(db.commands).where(c.device_id == device_id).order_by(c.ts_ms.desc(), c.id).limit(limit)
        with self.engine.connect() as conn:
            return [_command_view(r, now or now_ms()) for r in conn.execute(q).mappings()]

    def get_command(self, command_id: str, now: int | None = None) -> dict | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(db.commands).where(db.commands.c.id == command_id)).mappings().first()
        return _command_view(r, now or now_ms()) if r else None

    def desired_config(self, device_id: str) -> dict | None:
        """The desired config next to the version the device reports applied; None for no such device."""
        d, dc = db.devices.c, db.desired_config.c
        q = (select(d.config_version, dc.version, dc.ts_ms, dc.data)
             .select_from(db.devices.outerjoin(db.desired_config, dc.device_id == d.id))
             .where(d.id == device_id))
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        if r is None:
            return None
        return dict(device_id=device_id, version=r.version, ts=r.ts_ms, data=r.data, applied_version=r.config_version,
                    in_sync=r.version is None or r.config_version == r.version)

    def update_configs(self, device_ids: list[str], change: Callable[[dict | None], dict],
                       ts: int | None = None) -> list[tuple[str, Config]]:
        """Set each device's desired config to ``change(current data or None)``, in one transaction.

        The new version is one more than both the last desired version and the version the device
        reports applied, so a version is never reused (not even after the fleet's database was
        rebuilt, which a device would otherwise take for "already applied"). Rows are locked
        (PostgreSQL: FOR UPDATE), so concurrent merges serialise instead of losing each other's
        changes. Raises PayloadTooLarge, writing nothing, if any result is over the contract's
        64 KiB. Returns (device_id, Config) in device id order, to publish after the commit.
        """
        ts = ts or now_ms()
        ids = sorted(set(device_ids))
        if not ids:
            return []
        d, dc = db.devices.c, db.desired_config.c
        out: list[tuple[str, Config]] = []
        kits: set[str] = set()
        with self.engine.begin() as conn:
            # A row to lock even for a device's first config; version 0 never outlives this transaction.
            conn.execute(self._insert(db.desired_config)
                         .values([dict(device_id=i, version=0, ts_ms=ts, data={}) for i in ids])
                         .on_conflict_do_nothing(index_elements=["device_id"]))
            rows = conn.execute(
                select(dc.device_id, dc.version, dc.data, d.config_version, d.kit_id)
                .select_from(db.desired_config.join(db.devices, d.id == dc.device_id))
                .where(dc.device_id.in_(ids)).order_by(dc.device_id)
                .with_for_update(of=db.desired_config)
            ).all()
            for r in rows:
                data = change(r.data if r.version else None)
                version = max(r.version, r.config_version or 0) + 1
                cfg = Config(version=version, ts=ts, data=data)
                size = len(encode(cfg))
                if size > MAX_CONFIG_PAYLOAD:
                    raise PayloadTooLarge(f"config for {r.device_id} would be {size} bytes; "
                                          f"the contract allows {MAX_CONFIG_PAYLOAD}")
                conn.execute(update(db.desired_config).where(dc.device_id == r.device_id)
                             .values(version=version, ts_ms=ts, data=data))
                out.append((r.device_id, cfg))
                kits.add(r.kit_id)
        self._changed(kits, set(ids))
        return out

    def desired_configs(self) -> list[tuple[str, str, Config]]:
        """Every desired config as (kit_id, device_id, Config): to publish again after the broker
        lost its retained messages."""
        d, dc = db.devices.c, db.desired_config.c
        q = (select(d.kit_id, dc.device_id, dc.version, dc.ts_ms, dc.data)
             .select_from(db.desired_config.join(db.devices, d.id == dc.device_id)).where(dc.version > 0)
             .order_by(dc.device_id))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [(r.kit_id, r.device_id, Config(version=r.version, ts=r.ts_ms, data=r.data)) for r in rows]

    # ------------------------------------------------------------ reads

    def list_kits(self) -> list[dict]:
        with self.engine.connect() as conn:
            kit_rows = conn.execute(select(db.kits).order_by(db.kits.c.id)).mappings().all()
            devs = self._devices(conn)
        by_kit: dict[str, list[dict]] = defaultdict(list)
        for dev in devs:
            by_kit[dev["kit_id"]].append(dev)
        return [self._kit_view(k, by_kit.get(k["id"], [])) for k in kit_rows]

    def get_kit(self, kit_id: str) -> dict | None:
        with self.engine.connect() as conn:
            k = conn.execute(select(db.kits).where(db.kits.c.id == kit_id)).mappings().first()
            if k is None:
                return None
            devs = self._devices(conn, db.devices.c.kit_id == kit_id)
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

    def telemetry(self, device_id: str, since_ms: int | None, limit: int, kind: str | None = None) -> list[dict]:
        return [_reading(body) for _ts, body in self.telemetry_bodies(device_id, since_ms, None, limit, kind)]

    def telemetry_bodies(self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int,
                         kind: str | None = None) -> list[tuple[int, str]]:
        """Raw readings taken in [since_ms, until_ms), oldest first, as (ts_ms, the JSON the device sent)."""
        q = self._raw_readings(device_id, since_ms, until_ms, kind, db.telemetry.c.ts_ms, db.telemetry.c.body)
        with self.engine.connect() as conn:
            return [(r.ts_ms, r.body) for r in conn.execute(q.limit(limit))]

    def telemetry_page(self, device_id: str, since_ms: int | None, until_ms: int | None, limit: int,
                       kind: str | None = None) -> tuple[str, int, int | None]:
        """A page of raw readings as one JSON array's inside: (the readings joined by commas, oldest
        first; how many; where the next page starts, None if this is the last).

        A stored body passed the contract, which requires its ``kind``: it is the reading as the API
        shows it, so the page is joined by the database, one row back instead of one per reading.
        Per row, Python's sqlite3 hands the GIL back and forth: with 8 clients at once, 720 rows a
        request tripled the CPU per request (bench.api)."""
        t = db.telemetry.c
        page = self._raw_readings(device_id, since_ms, until_ms, kind, t.ts_ms, t.seq,
                                  _marked_body(t, self.historical_after_ms).label("body")).limit(limit).subquery()
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

    def dead_letters(self, limit: int = 100, reason: str | None = None, topic_prefix: str | None = None,
                     before_id: int | None = None) -> list[dict]:
        c = db.dead_letters.c
        q = select(db.dead_letters)
        if reason is not None:
            q = q.where(c.reason == reason)
        if topic_prefix:
            q = q.where(c.topic.startswith(topic_prefix, autoescape=True))
        if before_id is not None:
            q = q.where(c.id < before_id)
        q = q.order_by(c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

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
        out = []
        for (id_, kit_id, role, model, host_id, online, boot, fw, config_version, last_seen_ms, received,
             duplicates, clock, reset_cause, clock_since_ms, lag, lag_prev) in rows:
            out.append(dict(
                id=id_, kit_id=kit_id, role=role, model=model, host_id=host_id,
                online=bool(online) and (host_id is None or online_by_id.get(host_id, False)),
                boot=boot, fw=fw, config_version=config_version, last_seen_ms=last_seen_ms, received=received,
                duplicates=duplicates, latest=latest.get(id_, {}), clock=clock, reset_cause=reset_cause,
                clock_since_ms=clock_since_ms, clock_lag_ms=_smallest(lag, lag_prev)))
        return out

    @staticmethod
    def _kit_view(kit, devs: list[dict]) -> dict:
        battery = next((d["latest"]["battery"] for d in devs if "battery" in d["latest"]), None)
        return dict(
            id=kit["id"], name=kit["name"], devices=devs,
            devices_online=sum(1 for d in devs if d["online"]), devices_total=len(devs),
            battery=battery,
        )

    # ------------------------------------------------------------ health and battery forecast (read-only)

    def remember_kit(self, manifest: KitManifest) -> None:
        """Keep what only the manifest says (event window, telemetry periods) in memory: no table
        holds it. A process that did not register the kit itself knows neither (the forecast then
        has no event end, the heartbeat timeout is the setting's)."""
        self._kit_infos()[manifest.id] = KitInfo.from_manifest(manifest)

    def kit_info(self, kit_id: str) -> KitInfo | None:
        return self._kit_infos().get(kit_id)

    def _kit_infos(self) -> dict[str, KitInfo]:
        infos = self.__dict__.get("_kit_info")
        if infos is None:
            infos = self.__dict__["_kit_info"] = {}
        return infos

    def kits_with_health(self, cfg: HealthConfig, kit_id: str | None = None, now: int | None = None) -> list[dict]:
        """list_kits (or get_kit) with each device's health, the kit's worst status, its last
        readiness report and a time-to-empty forecast per power bank: three more queries in all,
        whatever the number of kits. Over every kit, a pack's fit is refit only when it may have
        moved (fleet/fits.py); one kit's packs are always refit."""
        now = now or now_ms()
        if kit_id is None:
            kits = self.list_kits()
        else:
            kit = self.get_kit(kit_id)
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
        for kit in kits:
            info = self.kit_info(kit["id"])
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
        dev = self.get_device(device_id)
        if dev is None:
            return None
        info = self.kit_info(dev["kit_id"])
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

    # ------------------------------------------------------------ alerts (fleet/alerts.py, fleet/notify.py)

    def scanner_error_counts(self, since_ms: int, verdicts: tuple[str, ...]) -> dict[str, int]:
        """Check-ins per scanner with one of ``verdicts`` scanned at or after ``since_ms``."""
        c = db.checkins.c
        q = (select(c.device_id, func.count().label("n"))
             .where(c.scan_ms >= since_ms, c.verdict.in_(verdicts)).group_by(c.device_id))
        with self.engine.connect() as conn:
            return {r.device_id: int(r.n) for r in conn.execute(q)}

    def sync_alerts(self, firing: list, unknown: set, now: int, attempts: int = 3):
        """Open, update and auto-resolve alerts to match ``firing`` (fleet.alerts.Firing), in one
        transaction: the alerts evaluator's write. (subject, rule) pairs in ``unknown`` are left as
        they are. Safe with several workers at once: one non-resolved alert per (subject, rule) is
        a unique partial index, and an insert it refuses updates the other worker's row instead."""
        from sqlalchemy.exc import OperationalError

        for attempt in range(attempts):
            try:
                with self.engine.begin() as conn:
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now, not mid-way
                    return self._sync_alerts(conn, firing, unknown, now)
            except OperationalError:
                # PostgreSQL deadlock / SQLite busy: another worker's evaluation; do it again.
                if attempt == attempts - 1:
                    raise

    def _sync_alerts(self, conn, firing: list, unknown: set, now: int):
        from fleet.alerts import EvalResult

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

    def list_alerts(self, state: str | None = None, kit_id: str | None = None, rule: str | None = None,
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

    def get_alert(self, alert_id: int, history: bool = True) -> dict | None:
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

    def acknowledge_alert(self, alert_id: int, by: str, note: str | None = None, now: int | None = None) -> str:
        """Mark an open alert acknowledged (no more repeat notifications). Returns "done",
        "already" (acknowledged before: unchanged), "resolved" or "missing"."""
        return self._set_alert_state(alert_id, "acknowledged", by, note, now or now_ms())

    def resolve_alert(self, alert_id: int, by: str, note: str | None = None, now: int | None = None) -> str:
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

    def alerts_to_notify(self, now: int, grace_ms: int, repeat_ms: int, limit: int = 100) -> list[dict]:
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

    def claim_alert_notification(self, alert: dict, now: int) -> bool:
        """Take the notification of ``alert`` (as alerts_to_notify returned it) for this worker:
        compare-and-set of last_notified_ms, so of several workers exactly one sends."""
        a = db.alerts.c
        prev = alert["last_notified_ms"]
        same = a.last_notified_ms.is_(None) if prev is None else a.last_notified_ms == prev
        with self.engine.begin() as conn:
            done = conn.execute(update(db.alerts).where(a.id == alert["id"], a.state == alert["state"], same)
                                .values(last_notified_ms=now))
        return bool(done.rowcount)

    def record_alert_notification(self, alert_id: int, ok: bool, detail: str, now: int | None = None) -> None:
        a = db.alerts.c
        with self.engine.begin() as conn:
            if ok:
                conn.execute(update(db.alerts).where(a.id == alert_id).values(notify_count=a.notify_count + 1))
            conn.execute(db.alert_events.insert().values(alert_id=alert_id, ts_ms=now or now_ms(),
                                                         what="notified" if ok else "notify_failed", by="webhook",
                                                         detail=detail[:500]))

    def alert_open_counts(self) -> dict[tuple[str, str], int]:
        """Non-resolved (open or acknowledged) alerts per (rule, severity): the /metrics gauge."""
        a = db.alerts.c
        q = select(a.rule, a.severity, func.count().label("n")).where(a.state != "resolved").group_by(a.rule, a.severity)
        with self.engine.connect() as conn:
            return {(r.rule, r.severity): int(r.n) for r in conn.execute(q)}

    # ------------------------------------------------------------ end of alerts

    # ------------------------------------------------------------ retention (fleet/retention.py)

    ROLLUP_WATERMARK = "telemetry_rollup_id"

    def rollup_watermark(self) -> int:
        """Every raw telemetry row with an id at or below this is rolled up into telemetry_1m."""
        m = db.maintenance_state.c
        with self.engine.connect() as conn:
            v = conn.execute(select(m.value).where(m.name == self.ROLLUP_WATERMARK)).scalar()
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

    def rollup_telemetry(self, now: int | None = None, chunk: int = 5000) -> tuple[int, int]:
        """Recompute the telemetry_1m row of every (device, kind, minute) that raw rows added since
        the last pass fall in, ``chunk`` raw rows at a time. Readings of the current minute (up to
        two minutes ahead: clock skew) wait for a pass after it ends; a reading further ahead is
        rolled up anyway, and its minute recomputed when more arrive. Idempotent, and safe with
        several workers at once (see _upsert_rollups). Returns (minutes written, new watermark)."""
        from fleet.retention import MINUTE_MS, minute_of

        now = now if now is not None else now_ms()
        t = db.telemetry.c
        mark = self.rollup_watermark()
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
            stmt = self._insert(db.maintenance_state).values(name=self.ROLLUP_WATERMARK, value=new, updated_ms=now)
            ex = stmt.excluded
            with self.engine.begin() as conn:  # only ever goes up (another worker may be ahead)
                conn.execute(stmt.on_conflict_do_update(
                    index_elements=["name"], set_={"value": ex.value, "updated_ms": ex.updated_ms},
                    where=ex.value > m.value))
        return written, max(new, mark)

    def _rollup_minutes(self, touched: dict[tuple[str, str], set[int]], chunk: int) -> int:
        """Aggregate the given minutes from all their raw rows: one range scan of
        ix_telemetry_device_ts per run of nearby minutes of a (device, kind)."""
        from fleet.retention import MINUTE_MS, aggregate_minutes

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

    def delete_rolled_up_telemetry(self, before_ms: int, chunk: int = 5000) -> int:
        """Delete raw telemetry taken before ``before_ms`` that is rolled up (id at or below the
        watermark), per device, ``chunk`` rows per transaction. The newest row (highest id) is always
        kept: SQLite gives a new row max(id)+1, and an emptied table would hand out ids below the
        watermark again. Events are never touched."""
        t, latest = db.telemetry.c, db.device_latest.c
        safe = self.rollup_watermark()
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

    def count_raw_telemetry(self, device_id: str, since_ms: int, until_ms: int, kind: str | None = None,
                            cap: int = 5000) -> int:
        """Raw readings of a device in [since_ms, until_ms), counted up to ``cap`` + 1 (an index range)."""
        t = db.telemetry.c
        q = select(t.id).where(t.device_id == device_id, t.ts_ms >= since_ms, t.ts_ms < until_ms)
        if kind:
            q = q.where(t.kind == kind)
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(q.limit(cap + 1).subquery())).scalar() or 0)

    def telemetry_buckets(self, device_id: str, since_ms: int | None, until_ms: int | None, bucket_ms: int,
                          limit: int, kind: str | None = None) -> tuple[list[dict], int | None]:
        """A device's history in ``bucket_ms`` buckets (a multiple of a minute, aligned to the epoch),
        oldest first: from telemetry_1m, and after each kind's last aggregate (minutes not rolled up
        yet) from the raw readings, aggregated the same way. ``since_ms`` is rounded down to its
        bucket (whole buckets only); None: from the device's first reading. Returns at most ``limit``
        items and where the next page starts (a bucket start; None: nothing more before ``until_ms``)."""
        from fleet.retention import MINUTE_MS, aggregate_minutes, bucket_items

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

    # ------------------------------------------------------------ end of retention

    # ------------------------------------------------------------ silent gaps (fleet/gaps.py)

    def hold_lease(self, name: str, holder: int, now: int, ttl_ms: int) -> bool:
        """Take the named lease for ``holder``, or renew it: True while ``holder`` has it. A lease not
        renewed for ``ttl_ms`` (its worker is gone) is taken over. Kept as a maintenance_state row:
        value = the holder, updated_ms = its last renewal (each worker's own clock)."""
        m = db.maintenance_state.c
        stmt = self._insert(db.maintenance_state).values(name=name, value=holder, updated_ms=now)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"value": ex.value, "updated_ms": ex.updated_ms},
                                          where=or_(m.value == ex.value, m.updated_ms < ex.updated_ms - ttl_ms))
        with self.engine.begin() as conn:  # RETURNING: psycopg reports no rowcount for an upsert
            return conn.execute(stmt.returning(m.value)).first() is not None

    def ledger_tops(self) -> tuple[int, int]:
        """The highest row ids of telemetry and of events (primary key lookups)."""
        with self.engine.connect() as conn:
            return tuple(int(conn.execute(select(func.max(t.c.id))).scalar() or 0)  # type: ignore[return-value]
                         for t in (db.telemetry, db.events))

    def streams_written(self, after_telemetry: int, after_events: int, limit: int) -> tuple[set[tuple[str, str]], int, int]:
        """The (device, boot) of the ledger rows with ids above the given ones, up to ``limit`` rows
        per table, and the highest ids read: which streams moved since, by a primary key range (its
        cost follows what was written, not the tables' size)."""
        moved: set[tuple[str, str]] = set()
        tops = []
        with self.engine.connect() as conn:
            for table, after in ((db.telemetry, after_telemetry), (db.events, after_events)):
                t = table.c
                rows = conn.execute(select(t.id, t.device_id, t.boot).where(t.id > after).order_by(t.id).limit(limit)).all()
                moved.update((r.device_id, r.boot) for r in rows)
                tops.append(rows[-1].id if rows else after)
        return moved, tops[0], tops[1]

    def gapped_streams(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, int]]:
        """(max_seq, received) of those of the given (device, boot) streams with max_seq > received.
        The keys are joined as rows (arrays on PostgreSQL, VALUES on SQLite) so each pair is one
        primary-key seek: two IN lists made SQLite seek every device with every boot (500 x 500
        seeks per 500 keys, 75 ms at 1,000 keys against 2 ms)."""
        s = db.streams.c
        out: dict[tuple[str, str], tuple[int, int]] = {}
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
                # Two arrays (as _insert_new_keys): a 1000-item IN costs PostgreSQL more to parse than to run.
                found = conn.exec_driver_sql(
                    "SELECT s.device_id, s.boot, s.max_seq, s.received FROM streams s"
                    " JOIN unnest(%b::text[], %b::text[]) AS k(d, b) ON s.device_id = k.d AND s.boot = k.b"
                    " WHERE s.max_seq > s.received", ([d for d, _ in keys], [b for _, b in keys])).all()
                return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in found}
            if conn.dialect.name == "sqlite":
                for i in range(0, len(keys), 400):  # 800 parameters a statement, well inside SQLite's limit
                    part = keys[i:i + 400]
                    found = conn.exec_driver_sql(
                        "SELECT s.device_id, s.boot, s.max_seq, s.received FROM streams s JOIN (VALUES "
                        + ", ".join(["(?, ?)"] * len(part)) + ") AS k ON s.device_id = k.column1 AND s.boot = k.column2"
                        " WHERE s.max_seq > s.received", tuple(v for key in part for v in key)).all()
                    out.update(((r[0], r[1]), (int(r[2]), int(r[3]))) for r in found)
                return out
            wanted = set(keys)
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                rows = conn.execute(select(s.device_id, s.boot, s.max_seq, s.received).where(
                    s.device_id.in_({d for d, _ in part}), s.boot.in_({b for _, b in part}), s.max_seq > s.received))
                out.update(((r.device_id, r.boot), (int(r.max_seq), int(r.received)))
                           for r in rows if (r.device_id, r.boot) in wanted)
        return out

    def missing_seqs(self, spans: dict[tuple[str, str], tuple[int, int]]) -> dict[tuple[str, str], list[int]]:
        """Per (device, boot): the seqs in its inclusive span that neither telemetry nor events hold,
        ascending. One query per stream through the (device_id, boot, seq) unique key's index, all on
        one connection (a look at many streams costs no connection checkout per stream)."""
        out: dict[tuple[str, str], list[int]] = {}
        with self.engine.connect() as conn:
            for (device_id, boot), (first, last) in spans.items():
                rows = conn.execute(_STORED_SEQS, {"d": device_id, "b": boot, "lo": first, "hi": last})
                stored = {r[0] for r in rows}
                out[(device_id, boot)] = [s for s in range(first, last + 1) if s not in stored]
        return out

    # ------------------------------------------------------------ end of silent gaps

def _evidence(value: Any) -> Any:
    """An alert's evidence as JSON keeps it (so the next evaluation compares like with like)."""
    return value if value is None or isinstance(value, (int, float, str, bool)) else str(value)


def _alert_view(r) -> dict:
    return dict(id=r["id"], subject=r["subject"], kit_id=r["kit_id"], rule=r["rule"], severity=r["severity"],
                state=r["state"], first_seen_ms=r["first_seen_ms"], last_seen_ms=r["last_seen_ms"], count=r["count"],
                message=r["message"], details=r["details"] or {}, acknowledged_by=r["acknowledged_by"],
                acknowledged_ms=r["acknowledged_ms"], resolved_ms=r["resolved_ms"], resolved_by=r["resolved_by"],
                last_notified_ms=r["last_notified_ms"], notify_count=r["notify_count"])


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


def _command_view(r, now: int) -> dict:
    status, detail = r["status"], r["detail"]
    if status == "pending" and now > r["expires_ms"]:
        # The device will refuse it now (it never runs a command past its expiry).
        status, detail = "expired", "no answer before it expired"
    return dict(id=r["id"], device_id=r["device_id"], action=r["action"], args=r["args"], ts=r["ts_ms"],
                expires=r["expires_ms"], status=status, detail=detail, acked_ms=r["acked_ms"],
                requested_by=r["requested_by"])


def _reading(body: str) -> dict:
    return json.loads(body)


def _smallest(*values: int | None) -> int | None:
    return min((v for v in values if v is not None), default=None)


# Column -> PostgreSQL array type, for inserting a batch as one array per column.


def _marked_body(t, after_ms: int):
    """A stored reading as the API shows it: a historical one (held by the kit, received over
    ``after_ms`` after it happened) gains ``"historical": true`` and its ``received_ms``, so a
    chart can tell a backlog from live data. Built in SQL, so pages stay one row back (telemetry_page)."""
    late = and_(t.received_ms.is_not(None), t.received_ms - t.ts_ms > after_ms)
    body = func.rtrim(t.body, literal(" \t\r\n"))  # a stored body is a JSON object: it ends in "}"
    head = type_coerce(func.substr(body, 1, func.length(body) - 1), Text)  # Text: "+" is "||"
    marked = head + literal(',"historical":true,"received_ms":') + cast(t.received_ms, Text) + literal("}")
    return case((late, marked), else_=t.body)


# A device's smallest lateness (received - ts) is kept per window of this long, and judged over the
# current and the previous window (db.devices clock_lag_*): at least this much history, at most twice.
CLOCK_LAG_WINDOW_MS = 300_000

# Ingest's per-batch device updates (Store._update_devices, _apply_state); built once, compiled once.
_dc = db.devices.c
_lag = bindparam("b_lag", type_=BigInteger)
_new_window = or_(_dc.clock_lag_since_ms.is_(None), bindparam("b_seen") - _dc.clock_lag_since_ms >= bindparam("b_window"))
_DEVICE_COUNTS = update(db.devices).where(_dc.id == bindparam("b_id")).values(
    received=_dc.received + bindparam("b_new"), duplicates=_dc.duplicates + bindparam("b_dup"),
    last_seen_ms=bindparam("b_seen"),
    # No new message (a state only, or duplicates): the lateness is left as it is. A new window
    # starts with this batch, the old one becomes the previous; else the smallest so far stays.
    clock_lag_ms=case((_lag.is_(None), _dc.clock_lag_ms), (_new_window, _lag),
                      (_lag < _dc.clock_lag_ms, _lag), else_=_dc.clock_lag_ms),
    clock_lag_prev_ms=case((_lag.is_(None), _dc.clock_lag_prev_ms), (_dc.clock_lag_since_ms.is_(None), None),
                           (_new_window, _dc.clock_lag_ms), else_=_dc.clock_lag_prev_ms),
    clock_lag_since_ms=case((_lag.is_(None), _dc.clock_lag_since_ms), (_new_window, bindparam("b_seen")),
                            else_=_dc.clock_lag_since_ms))
# A state applies if it is not older than the one applied (its ts: its session's start). Where a clock
# is `unset` a ts means nothing (a device booted in 2000): such a birth always applies (a new
# session), such a Will or shutdown only for the boot the device is in; and while the applied state
# is of a session with no time, an offline state of another boot (an old session's late Will) never does.
_unset = bindparam("b_unset", type_=Boolean)
_online = bindparam("b_online", type_=Boolean)
_DEVICE_STATE = update(db.devices).where(
    _dc.id == bindparam("b_id"),
    or_(_dc.state_ms.is_(None), _dc.state_ms <= bindparam("b_ts"),
        and_(_unset, or_(_online, _dc.boot == bindparam("b_boot")))),
    not_(and_(not_(_online), func.coalesce(_dc.clock, "") == "unset",
              _dc.boot.is_distinct_from(bindparam("b_boot"))))).values(
    online=bindparam("b_online"), boot=bindparam("b_boot"), fw=bindparam("b_fw"),
    config_version=bindparam("b_config"), state_ms=bindparam("b_ts"),
    clock=bindparam("b_clock"), reset_cause=bindparam("b_reset"),
    # Since when the fleet knows this clock value: reset by a change of value or of boot (a reboot
    # starts its grace again: fleet/alerts.py clock_unset).
    clock_since_ms=case((or_(_dc.clock.is_distinct_from(bindparam("b_clock")), _dc.boot.is_distinct_from(bindparam("b_boot"))),
                         bindparam("b_received")), else_=_dc.clock_since_ms))

# The seqs of one stream in a span, both ledger tables (Store.missing_seqs); built once, compiled once.
_STORED_SEQS = select(db.telemetry.c.seq).where(
    db.telemetry.c.device_id == bindparam("d"), db.telemetry.c.boot == bindparam("b"),
    db.telemetry.c.seq.between(bindparam("lo"), bindparam("hi"))).union_all(select(db.events.c.seq).where(
        db.events.c.device_id == bindparam("d"), db.events.c.boot == bindparam("b"),
        db.events.c.seq.between(bindparam("lo"), bindparam("hi"))))

_LEDGER_ARRAY_TYPES = {"device_id": "text[]", "boot": "text[]", "seq": "bigint[]", "ts_ms": "bigint[]", "received_ms": "bigint[]",
                       "channel": "text[]", "kind": "text[]", "body": "text[]"}
_TELEMETRY_COLUMNS = ("device_id", "boot", "seq", "ts_ms", "received_ms", "kind", "body")
_EVENT_COLUMNS = ("device_id", "boot", "seq", "ts_ms", "received_ms", "channel", "kind", "body")
_ON_CONFLICT_RETURNING = " ON CONFLICT (device_id, boot, seq) DO NOTHING RETURNING device_id, boot, seq"


def _insert_new_keys(conn, table: str, columns: tuple[str, ...], rows: list[tuple]) -> set[tuple[str, str, int]]:
    """INSERT rows, skipping any whose (device_id, boot, seq) is stored already; return the keys inserted.

    What ``insert().on_conflict_do_nothing().returning()`` does, written out: on the hot path
    SQLAlchemy's per-row parameter processing cost as much as SQLite's own work, and psycopg
    parsed the thousands of placeholders of a multi-row VALUES in Python on every batch.
    PostgreSQL (psycopg 3) gets one array per column (``unnest``): a short statement, one
    parameter per column. SQLite gets multi-row VALUES, a few thousand parameters per statement.
    """
    names = ", ".join(columns)
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        arrays = ", ".join(f"%b::{_LEDGER_ARRAY_TYPES[c]}" for c in columns)  # %b: binary, no quoting
        sql = f"INSERT INTO {table} ({names}) SELECT * FROM unnest({arrays})" + _ON_CONFLICT_RETURNING
        return set(map(tuple, conn.exec_driver_sql(sql, tuple(list(col) for col in zip(*rows))).all()))
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    one = "(" + ", ".join([mark] * len(columns)) + ")"
    per_statement = max(1, conn.dialect.insertmanyvalues_max_parameters // len(columns))
    keys: set[tuple[str, str, int]] = set()
    for i in range(0, len(rows), per_statement):
        part = rows[i : i + per_statement]
        sql = f"INSERT INTO {table} ({names}) VALUES " + ", ".join([one] * len(part)) + _ON_CONFLICT_RETURNING
        keys.update(map(tuple, conn.exec_driver_sql(sql, tuple(value for row in part for value in row)).all()))
    return keys
