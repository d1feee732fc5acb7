"""The ledger: every telemetry, event and ack message stored once, in the order it arrived.

Ingest hands ``write_batch`` a few hundred validated messages; they are written in one
transaction whose commit is what the fleet's acknowledgements promise. Deduplication is the
database's unique key on (device, boot, seq), so several ingest workers can share one database
without sharing memory. Per (device, boot) stream the ledger keeps how far the sequence got and
how many arrived (``streams``): the gaps, which the gap detector (fleet/ledger/gaps.py) reads here.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable

from sqlalchemy import Engine, case, delete, func, select

from fleet import db
from fleet.changes import Changes
from fleet.db import now_ms
from fleet.ledger.model import DEAD_LETTER_HEAD, Batch, BatchResult, LedgerMessage, RejectedMessage
from fleet.ledger.statements import (CLOCK_LAG_WINDOW_MS, DEVICE_COUNTS, DEVICE_STATE, EVENT_COLUMNS, STORED_SEQS,
                                     TELEMETRY_COLUMNS, insert_new_keys)
from fleet.registry.store import RegistryStore
from kits.contract import State


class LedgerStore:
    def __init__(self, engine: Engine, registry: RegistryStore, changes: Changes, dead_letter_cap: int = 10_000):
        self.engine = engine
        self.registry = registry
        self.changes = changes
        self.dead_letter_cap = dead_letter_cap
        self._insert = db.upsert_for(engine)
        # Called with (conn, new ledger messages) inside every batch's transaction, before the commit
        # that the fleet's receipts wait for: a feature's own record of a message (the commands an
        # ack settles; fleet/tickets: a kit's revocations) is then never behind the receipt that
        # lets the kit forget it.
        self.event_hooks: list[Callable[[Any, list], None]] = []
        # Called the same way with the batch's device states, [(device id, State)]: what a state
        # says of a feature (fleet/updates: an A/B update's outcome) is kept with it, or not at all.
        self.state_hooks: list[Callable[[Any, list], None]] = []
        self._upsert_streams = self._streams_upsert()
        self._upsert_latest = self._latest_upsert()

    def write_batch(self, batch: Batch, received_ms: int | None = None) -> BatchResult:
        received_ms = received_ms or now_ms()
        # A producer that resent before its receipt arrived can put both copies in one batch.
        unique: dict[tuple[str, str, int], LedgerMessage] = {}
        for m in batch.ledger:
            unique.setdefault(m.key, m)
        # Arrival order, not key order (as the upserts below): ids follow arrival, which retention's
        # watermark relies on (fleet/retention/). A deadlock on the unique key needs the same message
        # in two workers' batches at once, and the commit's retry covers it.
        ledger = list(unique.values())
        with self.engine.begin() as conn:
            inserted = self._insert_ledger(conn, ledger, received_ms)
            new = [m for key, m in unique.items() if key in inserted]
            self._update_streams(conn, new)
            self._record_checkins(conn, new, received_ms)
            for hook in self.event_hooks:
                hook(conn, new)
            self._update_latest(conn, new)
            dup_by_device = self._update_devices(conn, batch, new, received_ms)
            for device_id, state in batch.states:
                self._apply_state(conn, device_id, state, received_ms)
            if batch.states:
                for hook in self.state_hooks:
                    hook(conn, batch.states)
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
        for table, columns, rows in ((db.telemetry, TELEMETRY_COLUMNS, tel_rows), (db.events, EVENT_COLUMNS, ev_rows)):
            if rows:
                inserted.update(insert_new_keys(conn, table.name, columns, rows))
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
        # drift (fleet/alerts/rules.py clock_drift). Duplicates are resends, late by nature: left out.
        lag: dict[str, int] = {}
        for m in new:
            late = received_ms - m.msg.ts
            if late < lag.get(m.device_id, late + 1):
                lag[m.device_id] = late
        conn.execute(
            DEVICE_COUNTS,
            [dict(b_id=i, b_new=new_by_device.get(i, 0), b_dup=dup_by_device.get(i, 0), b_seen=received_ms,
                  b_lag=lag.get(i), b_window=CLOCK_LAG_WINDOW_MS) for i in sorted(seen)],
        )
        return dup_by_device

    def _apply_state(self, conn, device_id: str, state: State, received_ms: int) -> None:
        conn.execute(DEVICE_STATE, dict(b_id=device_id, b_online=state.online, b_boot=state.boot, b_fw=state.fw,
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

    def _batch_changed(self, batch: "Batch") -> None:
        """Tell the listeners which kits and devices a committed batch touched."""
        if not self.changes.listeners:
            return
        devices = {d for d, _ in batch.states} | {m.device_id for m in batch.ledger}
        # Ingest commits only registered devices: a miss is one another process registered.
        kit_of = self.registry.kits_of(devices)
        kits = {kit_of[d] for d in devices if d in kit_of}
        # A rejected message counts against its device's health: popkit/v1/<kit>/<device>/...
        # (known devices only: a flood for unknown ones must not reload the registry per batch)
        for r in batch.rejected:
            parts = r.topic.split("/")
            if len(parts) >= 4 and kit_of.get(parts[3]) == parts[2]:
                kits.add(parts[2])
                devices.add(parts[3])
        if devices:
            self.changes.tell(kits, devices)

    # ------------------------------------------------------------ reads

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

    def dead_letter_reasons(self) -> list[dict]:
        """Rejected messages counted per reason, with the newest of each, most first."""
        c = db.dead_letters.c
        q = (select(c.reason, func.count().label("count"), func.max(c.received_ms).label("last_ms"),
                    func.max(c.id).label("last_id")).group_by(c.reason).order_by(func.count().desc(), c.reason))
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def tops(self) -> tuple[int, int]:
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
                rows = conn.execute(STORED_SEQS, {"d": device_id, "b": boot, "lo": first, "hi": last})
                stored = {r[0] for r in rows}
                out[(device_id, boot)] = [s for s in range(first, last + 1) if s not in stored]
        return out
