"""The kit's own ticket list: revocations made at the kit, and the event keys the kit holds.

A refund at the door during an outage must be refused at every door at once, with no uplink.
``popkit tickets revoke --kit`` on the kit's Pi asks the running agent (its control socket), or,
with no agent running, leaves a request at the kit broker for it (``popkit/v1/<kit>/revoke``, in
the agent's persistent session). The agent then:

* keeps the revocation in SQLite (who, when), before anything else;
* publishes the kit's list retained on ``popkit/v1/<kit>/revocations`` at the kit broker: every
  scanner of the kit subscribes to it and refuses a ticket any of its lists has (its flashed
  file, its config from the fleet, this list: the union);
* refuses the ticket's claims at the door hub (agent/hub.py asks :meth:`KitTickets.is_revoked`);
* sends it to the fleet as its own ``revocation`` event through the outbox, so it reaches the
  fleet when the uplink returns; the fleet keeps the union and pushes it to every scanner's
  config, with who revoked it and where.

Why a separate kit topic and not a kit-made config on the scanners' own ``config`` topic: the
fleet owns the config versions (a scanner applies a config whose version is new; the fleet's
alerts compare what it desired with what the scanner applied), the bridge brings the fleet's
retained config back down when the uplink returns, and a kit-made version would either collide
with the fleet's or be overwritten by an older fleet config that lacks the kit's revocation. On a
topic of its own the kit's list is never overwritten by anyone but the agent, the fleet's version
numbers stay the fleet's, and the scanner's union loses nothing whichever arrives first. The
topic is kit-level (``popkit/v1/<kit>/revocations``), so the bridge, whose patterns are device
trees, never forwards it.

Keys: the agent also sees every scanner's retained config at the kit broker (it reads
``popkit/v1/<kit>/+/config``) and puts the keys they carry into the kit's list. A scanner that
has no config of its own at the kit broker (replaced at the venue, registered while the uplink
was down) still gets the kit's event keys. A key whose window is over is left out.

The list is republished when it is missing or behind (the kit broker lost its retained store):
the agent's database is the truth for what the kit revoked.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.kitsession import KitSession
from kits.contract import (REVOCATIONS_CHANNEL, REVOKE_CHANNEL, ContractError, KitRevocations, RevocationData,
                           decode, encode, kit_topic, subscription)

log = logging.getLogger("popkit.agent.tickets")

KIND = "revocation"  # the agent's event kind for what the kit revoked (fleet/tickets/delivery.py)
MAX_LIST = 4096  # bytes: the largest message a scanner takes (its max_config); a longer list would be dropped

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revoked (
    event TEXT NOT NULL,
    ticket TEXT NOT NULL,
    by TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (event, ticket)
);
CREATE TABLE IF NOT EXISTS configs (
    device TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    data TEXT NOT NULL
);
"""


class UnknownEvent(LookupError):
    """A revocation for an event this kit holds no key or list for."""


class KitTickets(KitSession):
    """The kit's list, kept in ``db_path``, published on the kit broker (``mqtt_url``) as the agent.

    ``emit(data, ts_ms)``: hands a ``revocation`` event to the agent's outbox (None: not sent up)."""

    clean_start = False  # a request left while the agent was down is delivered when it returns

    def __init__(self, kit: str, mqtt_url: str, db_path: str | Path,
                 emit: Callable[[dict, int], object] | None = None, client_id: str | None = None):
        self.kit = kit
        self.emit = emit
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a revocation the crew was told is done survives a power cut
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._kit: dict[str, dict[str, None]] = {}  # event -> ticket ids revoked at the kit (ordered)
        for event, ticket in self._db.execute("SELECT event, ticket FROM revoked ORDER BY at_ms, ticket"):
            self._kit.setdefault(event, {})[ticket] = None
        self._configs: dict[str, dict] = {d: json.loads(data) for d, data in
                                          self._db.execute("SELECT device, data FROM configs")}
        self._published: dict | None = None  # the list as last seen at the broker (ours or not)
        # Events scanned at the kit's doors (the door hub's claims): a key flashed on the scanners
        # reaches no config the agent sees, and its event is the kit's all the same.
        self.scanned_events: Callable[[], set[str]] = set
        self.ready = threading.Event()
        self.counts = {"requests": 0, "revoked": 0, "published": 0, "bad": 0}
        self._topic = kit_topic(kit, REVOCATIONS_CHANNEL)
        self._request_topic = kit_topic(kit, REVOKE_CHANNEL)
        self._open(mqtt_url, client_id or f"{kit}-tickets", default_protocol="3.1.1")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self.ready.set()
        self._client.on_disconnect = lambda *_: self.ready.clear()
        self._client.on_message = self._on_message

    def stop(self) -> None:
        super().stop()
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ asked by the door hub and the crew

    def is_revoked(self, event: str, ticket: str) -> bool:
        """Revoked at the kit, or in any of the kit's scanner configs from the fleet."""
        with self._lock:
            if ticket in self._kit.get(event, ()):
                return True
            for data in self._configs.values():
                revoked = data.get("revoked")
                ids = revoked.get(event, ()) if isinstance(revoked, dict) else (revoked or ())
                if ticket in ids:
                    return True
        return False

    def known_events(self) -> list[str]:
        """Events the kit holds: a key in a scanner's config or the kit's list, or a revocation list."""
        with self._lock:
            events = set(self._kit)
            for data in self._configs.values():
                events |= {k.get("event") for k in data.get("keys") or () if isinstance(k, dict)}
                if isinstance(data.get("revoked"), dict):
                    events |= set(data["revoked"])
            if self._published:
                events |= {k.get("event") for k in self._published.get("keys") or ()}
        events |= self.scanned_events()
        return sorted(e for e in events if isinstance(e, str))

    def revoke(self, event: str, tickets: list[str], by: str, now_ms: int | None = None) -> list[str]:
        """Revoke at the kit: kept, published to the scanners, sent up to the fleet. Returns the
        tickets newly revoked (a ticket revoked before is not revoked again). UnknownEvent, changing
        nothing, for an event the kit does not hold."""
        req = RevocationData(event=event, tickets=tickets, by=by)  # ValueError naming the field
        known = self.known_events()
        if req.event not in known:
            raise UnknownEvent(f"event {req.event} is not one this kit holds; it knows "
                               + (", ".join(known) if known else "no events yet (no scanner config with keys, "
                                  "no scan at its doors)"))
        now_ms = now_ms or int(time.time() * 1000)
        with self._lock:
            have = self._kit.setdefault(req.event, {})
            new = [t for t in dict.fromkeys(req.tickets) if t not in have]
        size = len(encode(self.current())) + sum(len(t) + 3 for t in new)
        if size > MAX_LIST:
            raise ValueError(f"the kit's list would be {size} bytes; a scanner takes at most {MAX_LIST} "
                             f"(revoke the rest through the fleet when the uplink is back)")
        with self._lock:
            for t in new:
                self._db.execute("INSERT OR IGNORE INTO revoked VALUES (?, ?, ?, ?)", (req.event, t, req.by, now_ms))
                have[t] = None
        self.counts["requests"] += 1
        if new:
            self.counts["revoked"] += len(new)
            log.info("revoked at the kit by %s: %s %s", req.by, req.event, " ".join(new))
            self.publish()
            if self.emit is not None:
                self.emit({"event": req.event, "tickets": new, "by": req.by}, now_ms)
        return new

    # ------------------------------------------------------------ the kit's list

    def current(self, now_s: int | None = None) -> KitRevocations:
        """The list as it should be at the broker: the kit's revocations and the keys the kit holds."""
        now_s = now_s or int(time.time())
        with self._lock:
            revoked = {e: list(ids) for e, ids in sorted(self._kit.items()) if ids}
            keys: dict[str, dict] = {}
            for data in self._configs.values():
                for k in data.get("keys") or ():
                    if not isinstance(k, dict) or not isinstance(k.get("event"), str):
                        continue
                    exp = k.get("expires") or 0
                    if exp and exp <= now_s:
                        continue
                    held = keys.get(k["event"])
                    if held is None or (held.get("expires") or 0) < exp:  # of two, the later window
                        keys[k["event"]] = k
        return KitRevocations.model_validate({"ts": int(time.time() * 1000), "revoked": revoked,
                                              "keys": [keys[e] for e in sorted(keys)],
                                              "events": self.known_events()})

    def publish(self) -> None:
        self._client.publish(self._topic, encode(self.current()), qos=1, retain=True)
        self.counts["published"] += 1

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker refused the kit's ticket list: %s", reason_code)
            return
        client.subscribe([(subscription("config", kit=self.kit), 1), (self._topic, 1), (self._request_topic, 1)])
        self.publish()  # ours is the truth: whatever the broker kept (or lost) is replaced by it

    def _on_message(self, _client, _userdata, msg) -> None:
        try:
            if msg.topic == self._request_topic:
                self._request(msg.payload)
            elif msg.topic == self._topic:
                self._seen_list(msg.payload)
            elif msg.topic.endswith("/config"):
                self._config(msg.topic.split("/")[3], msg.payload)
        except (ContractError, ValueError, UnknownEvent) as exc:
            self.counts["bad"] += 1
            log.warning("ignored %s: %s", msg.topic, exc)

    def _request(self, payload: bytes) -> None:
        req = decode(REVOKE_CHANNEL, payload)
        self.revoke(req.event, req.tickets, req.by)

    def _seen_list(self, payload: bytes) -> None:
        if not payload:
            self.publish()  # cleared at the broker: the scanners must not be left without it
            return
        seen = decode(REVOCATIONS_CHANNEL, payload)
        with self._lock:
            self._published = seen.model_dump()
            behind = any(t not in seen.revoked.get(e, ()) for e, ids in self._kit.items() for t in ids)
        if behind:
            self.publish()

    def _config(self, device: str, payload: bytes) -> None:
        if not payload:
            return
        cfg = decode("config", payload)
        if "keys" not in cfg.data and "revoked" not in cfg.data:
            return  # not a scanner's tickets (a lighting timeline, say)
        data = {k: cfg.data[k] for k in ("keys", "revoked") if k in cfg.data}
        keys_before = self.current().keys
        with self._lock:
            if self._configs.get(device) == data:
                return
            self._configs[device] = data
            self._db.execute("INSERT OR REPLACE INTO configs VALUES (?, ?, ?)", (device, cfg.version, json.dumps(data)))
        if self.current().keys != keys_before:
            self.publish()  # the kit's list carries the keys the kit holds


def revoke_request(kit: str, mqtt_url: str, event: str, tickets: list[str], by: str,
                   timeout: float = 10.0) -> tuple[list[str] | None, list[str]]:
    """With no agent running: leave a revocation request for it at the kit broker (as the agent's
    account), and wait up to ``timeout`` for the kit's list to carry the tickets. Returns (tickets
    in the list, or None when no agent took it in time; the events the kit's list knows)."""
    from plumbing.mqtt import client_for as _client_for

    req = RevocationData(event=event, tickets=tickets, by=by)
    seen: dict = {}
    got = threading.Event()
    client, target = _client_for(mqtt_url, f"{kit}-revoke-{int(time.time() * 1000) % 100000}",
                                 default_protocol="3.1.1")
    topic_list, topic_req = kit_topic(kit, REVOCATIONS_CHANNEL), kit_topic(kit, REVOKE_CHANNEL)
    subscribed = threading.Event()

    def on_message(_c, _u, msg) -> None:
        try:
            seen["list"] = decode(REVOCATIONS_CHANNEL, msg.payload)
        except ContractError:
            return
        if all(t in seen["list"].revoked.get(req.event, ()) for t in req.tickets):
            got.set()

    client.on_connect = lambda c, *_: c.subscribe(topic_list, 1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(target.host, target.port, keepalive=15)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise ConnectionError(f"the kit broker at {target.host}:{target.port} did not answer")
        time.sleep(0.3)  # the retained list, if any, arrives right after the SUBACK
        known = (sorted({k.event for k in seen["list"].keys} | set(seen["list"].revoked) | set(seen["list"].events))
                 if "list" in seen else [])
        if known and req.event not in known:
            raise UnknownEvent(f"event {req.event} is not one this kit holds; it knows {', '.join(known)}")
        client.publish(topic_req, encode(req), qos=1).wait_for_publish(timeout)
        return (list(req.tickets) if got.wait(timeout) else None), known
    finally:
        client.disconnect()
        client.loop_stop()
