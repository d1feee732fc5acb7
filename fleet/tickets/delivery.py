"""Event keys and revocations to the scanners, and the kits' own revocations into the fleet.

**To the scanners.** Each scanner's retained desired config carries ``data.keys`` (the keys its kit
holds whose window is not over) and ``data.revoked`` ({EVENT: [ids]}, a union: an id once there
stays). A change is merged into the current desired config (other keys kept) and published under
the next version; a scanner whose data would not change is not pushed.

**From the kits.** A ticket revoked at a kit while the uplink was down (the kit's agent, agent/tickets.py)
comes up as the agent's ``revocation`` event through its outbox. :meth:`TicketDelivery.record_kit_events`
runs inside ingest's batch transaction, so the revocation is in ``revocations`` before the fleet's
receipt lets the agent forget it; after the commit the event's scanners (at every kit) get it in
their config. The fleet keeps the union, with who revoked (the person the kit named) and where
(the kit and its agent, from the topic, not from anything the payload claims).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from sqlalchemy import select

from fleet import db
from fleet.commands import PayloadTooLarge
from fleet.db import now_ms
from fleet.store import Store
from fleet.tickets.model import FLEET, KeySpec, Revocation, UnknownEvent, scanner_data
from fleet.tickets.store import TicketStore
from kits.contract import Config, RevocationData, encode

log = logging.getLogger("popkit.fleet.tickets")

KIND = "revocation"  # the agent's event kind for a kit's revocations
# The largest config a scanner takes (its "max_config", device/apps/scanner/main.py): ~300 revoked
# ids with a few keys. One larger would be dropped whole at the scanner, so the fleet refuses it.
SCANNER_MAX_CONFIG = 4096


class TicketDelivery:
    def __init__(self, store: Store, publisher: Callable[[], Any]):
        self.store = store
        self.tickets = TicketStore(store.engine)
        self.publisher = publisher  # () -> fleet.commands.Publisher, or None (no broker here)
        self._pending: set[str] = set()  # events a committed batch revoked at a kit: to push
        self._lock = threading.Lock()
        self._push_lock = threading.Lock()  # one push at a time: each reads the keys and revocations it sends

    # ------------------------------------------------------------ what the fleet knows

    def known_events(self) -> set[str]:
        """Events with a key here, a revocation, a check-in, or a revocation in a desired config."""
        c = db.checkins.c
        with self.store.engine.connect() as conn:
            events = {e for (e,) in conn.execute(select(c.event_id).distinct()) if e}
        for _kit, _device, cfg in self.store.config.all_desired():
            revoked = (cfg.data or {}).get("revoked")
            if isinstance(revoked, dict):
                events |= set(revoked)
        return events | self.tickets.events()

    # ------------------------------------------------------------ changes from the API

    def put_key(self, key: KeySpec, by: str | None, now: int | None = None) -> list[tuple[str, Config]]:
        """Store an event's key (ExpiredKey, storing nothing, if its window is over) and push it."""
        now = now or now_ms()
        key.check(now // 1000)
        self._check_fits(key.kits, [k for k in self.tickets.keys() if k.event_id != key.event_id] + [key], {}, now)
        self.tickets.put_key(key, now, by)
        if key.kits is not None and not key.kits:
            return []  # for no kit yet: known to the fleet (revocations may name it), on no scanner
        return self.push(kits=key.kits, now=now)

    def revoke(self, event_id: str, tickets: list[str], by: str, kits: set[str] | None = None,
               now: int | None = None) -> list[tuple[str, Config]]:
        """Revoke at the fleet: kept with who and when, pushed to the scanners of ``kits`` (None: all).
        UnknownEvent for an event the fleet has never heard of."""
        if event_id not in self.known_events():
            raise UnknownEvent(f"no event {event_id!r} at the fleet: it has no key, no check-in and no "
                               f"revocation (PUT /api/v1/events/{event_id}/key first)")
        now = now or now_ms()
        self._check_fits(kits, self.tickets.keys(), {event_id: list(dict.fromkeys(tickets))}, now)
        self.tickets.add([Revocation(event_id, t, by, FLEET, now) for t in dict.fromkeys(tickets)])
        return self.push(kits=kits, now=now, force=True)

    def _check_fits(self, kits, keys: list[KeySpec], adding: dict[str, list[str]], now: int) -> None:
        """PayloadTooLarge, before anything is stored, when a scanner's config would outgrow what the
        scanner takes (SCANNER_MAX_CONFIG): it would drop the whole config, keys and revocations."""
        revoked = self.tickets.revoked_ids()
        for event_id, ids in adding.items():
            revoked[event_id] = revoked.get(event_id, []) + [t for t in ids if t not in revoked.get(event_id, [])]
        for ref in self.store.registry.device_refs().values():
            if ref.role != "scanner" or (kits is not None and ref.kit_id not in kits):
                continue
            current = self.store.config.desired(ref.id) or {}
            data = scanner_data(current.get("data"), ref.kit_id, keys, revoked, now // 1000)
            size = len(encode(Config(version=2**31, ts=now, data=data)))
            if size > SCANNER_MAX_CONFIG:
                raise PayloadTooLarge(f"{ref.id}'s config would be {size} bytes; a scanner takes at most "
                                      f"{SCANNER_MAX_CONFIG} (fewer revocations per event, or expire old keys)")

    # ------------------------------------------------------------ pushing

    def push(self, kits: set[str] | frozenset[str] | None = None, now: int | None = None,
             force: bool = False) -> list[tuple[str, Config]]:
        """Bring the scanners of ``kits`` (None: every kit) to the keys and revocations stored here.
        ``force``: push even a scanner whose data would not change."""
        with self._push_lock:
            return self._push(kits, now or now_ms(), force)

    def _push(self, kits, now: int, force: bool) -> list[tuple[str, Config]]:
        from fleet.commands import NoScanners

        scanners = {r.id: r.kit_id for r in self.store.registry.device_refs().values()
                    if r.role == "scanner" and (kits is None or r.kit_id in kits)}
        if not scanners:
            raise NoScanners("no scanner is registered" + (" in those kits" if kits is not None else "")
                             + ": nothing to push keys or revocations to")
        keys, revoked = self.tickets.keys(), self.tickets.revoked_ids()
        if not force:
            desired = {d: self.store.config.desired(d) for d in scanners}
            scanners = {d: k for d, k in scanners.items()
                        if (desired[d] or {}).get("data") != scanner_data((desired[d] or {}).get("data"), k, keys,
                                                                          revoked, now // 1000)}
            if not scanners:
                return []
        publisher = self.publisher()
        if publisher is None:
            raise RuntimeError("this fleet process has no broker connection to push configs through")
        return publisher.update_configs(scanners, lambda old, kit: scanner_data(old, kit, keys, revoked, now // 1000))

    # ------------------------------------------------------------ the kits' own revocations (ingest)

    def record_kit_events(self, conn, new: list) -> None:
        """Inside ingest's transaction: every new ``revocation`` event of a kit's agent into ``revocations``."""
        revs = []
        for m in new:
            if m.channel != "event" or m.msg.kind != KIND:
                continue
            try:
                data = RevocationData.model_validate(m.msg.data)
            except ValueError as exc:  # validated at decode already; a bad one is skipped, never fatal
                log.warning("revocation event from %s ignored: %s", m.device_id, exc)
                continue
            ref = self.store.registry.device_ref(m.device_id)
            if ref is None or ref.role != "agent":
                # Only a kit's agent revokes: a door (or anything else) saying so is not heeded.
                log.warning("revocation event from %s ignored: only a kit's agent revokes", m.device_id)
                continue
            where = f"kit {ref.kit_id}/{m.device_id}"
            revs += [Revocation(data.event, t, data.by, where, m.msg.ts, ref.kit_id) for t in data.tickets]
        if revs:
            added = self.tickets.add(revs, conn)
            with self._lock:
                self._pending |= {r.event_id for r in revs}
            if added:
                log.info("%d ticket(s) revoked at kits: %s", len(added),
                         ", ".join(f"{r.event_id}/{r.ticket} by {r.revoked_by} at {r.revoked_at}" for r in added))

    def push_pending(self, _kits=None, _devices=None) -> None:
        """After a commit (a store change listener): push what the kits revoked to every scanner."""
        with self._lock:
            if not self._pending:
                return
            self._pending = set()
        # On a thread of its own: change listeners run on ingest's writer thread, which must not wait.
        threading.Thread(target=self._push_retrying, name="fleet-kit-revocations", daemon=True).start()

    def _push_retrying(self) -> None:
        from fleet.commands import NoScanners

        for attempt in range(3):
            try:
                self.push()
                return
            except NoScanners:
                return
            except Exception:  # noqa: BLE001 - retried, then logged: the table has it, the next push carries it
                if attempt == 2:
                    log.exception("pushing the kits' revocations failed")
                time.sleep(0.5)

    def attach(self) -> "TicketDelivery":
        """Hook into the store's ingest: record kit revocations in each batch, push after it commits."""
        self.store.ledger.event_hooks.append(self.record_kit_events)
        self.store.changes.listeners.append(self.push_pending)
        return self
