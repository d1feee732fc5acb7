"""The kit's door hub: one memory of who was let in, shared by every scanner of the kit.

A scanner that finds a ticket good asks the hub before it lights green (channel ``claim``,
QoS 0); the hub answers on the scanner's ``claimed`` topic: admit, or refuse because another
door admitted that ticket first (with that door and its scan time). The first door to claim a
ticket owns it; the same door asking again (its answer was lost, it rebooted) is admitted again.

A ticket revoked at the kit or at the fleet (``revoked``, agent/tickets.py) is refused with reason
"revoked", so a door whose own list is behind still turns it away.

When a scanner cannot reach the hub it admits on its own and says so (``hub_checked: false``);
the hub still learns those admissions from the scanners' check-in events once they flow, so a
later claim elsewhere is refused, and the fleet's attendance flags the double entry.

Claims are kept in SQLite (WAL, synchronous FULL: a hub that forgets a claim after a power cut
would let a second person in on the same ticket). The network loop is paho's thread; every
callback is short and touches the database under one lock.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from kits.contract import Claim, Claimed, ContractError, FirstScan, decode, encode, parse_topic, subscription, topic
from agent.kitsession import KitSession

log = logging.getLogger("popkit.agent.hub")
# A check-in is a few hundred bytes; anything far bigger is not one (and is not parsed).
_MAX_EVENT_BYTES = 16 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS claims (
    event TEXT NOT NULL,
    ticket TEXT NOT NULL,
    device TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (event, ticket)
)
"""


class ClaimBook:
    """First claim wins, per (event, ticket); persistent."""

    def __init__(self, path: str | Path):
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._lock = threading.Lock()

    def claim(self, event: str, ticket: str, device: str, ts_ms: int) -> FirstScan | None:
        """None when ``device`` may admit (it is first, or it was first already); else who was."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO claims VALUES (?, ?, ?, ?)", (event, ticket, device, ts_ms))
            owner, first_ts = self._db.execute(
                "SELECT device, ts_ms FROM claims WHERE event = ? AND ticket = ?", (event, ticket)).fetchone()
        return None if owner == device else FirstScan(device=owner, ts=first_ts)

    def events(self) -> set[str]:
        """The events whose tickets were claimed here: a kit holds those, whatever its keys came with."""
        with self._lock:
            return {e for (e,) in self._db.execute("SELECT DISTINCT event FROM claims")}

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM claims").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class DoorHub(KitSession):
    clean_start = False  # claims asked while the agent restarts are answered when it is back

    """Answers the kit's scanners over the kit's broker (``mqtt_url``)."""

    def __init__(self, kit: str, mqtt_url: str, db_path: str | Path, client_id: str | None = None,
                 revoked: Callable[[str, str], bool] | None = None):
        """``revoked(event, ticket)``: the kit's and the fleet's revocations (agent/tickets.py); a claim
        on a revoked ticket is refused, whichever door asks, before it is recorded."""
        self.kit = kit
        self.revoked = revoked
        self.book = ClaimBook(db_path)
        self.counts: Counter[str] = Counter()  # asked, admitted, refused, learned, bad:<reason>
        self.ready = threading.Event()
        # A persistent session: check-ins sent while the hub was down are queued for it.
        self._open(mqtt_url, client_id or f"{kit}-hub", default_protocol="3.1.1")
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = lambda *_: self.ready.clear()
        self._client.on_message = self._on_message
        self._last_warn: dict[str, float] = {}

    def stop(self) -> None:
        super().stop()
        self.book.close()

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker refused the door hub: %s", reason_code)
            return
        # Claims are questions asked now: QoS 0, like the answers. Check-ins are owed: QoS 1.
        client.subscribe([(subscription("claim", kit=self.kit), 0), (subscription("event", kit=self.kit), 1)])

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _props) -> None:
        if any(rc.is_failure for rc in reason_codes):
            log.error("broker refused the door hub's subscriptions: %s", reason_codes)
            return
        self.ready.set()

    def _on_message(self, client, _userdata, msg) -> None:
        try:
            _kit, device, channel = parse_topic(msg.topic)
            if channel == "claim":
                self._answer(client, device, decode("claim", msg.payload))
            elif channel == "event":
                self._learn(device, msg.payload)
        except ContractError as exc:
            self._bad(exc.reason, f"{msg.topic}: {exc}")

    def _answer(self, client, device: str, claim: Claim) -> None:
        if self.revoked is not None and self.revoked(claim.event, claim.ticket):
            # A door that has not heard of the revocation yet (its list came late) still refuses.
            self.counts["asked"] += 1
            self.counts["revoked"] += 1
            client.publish(topic(self.kit, device, "claimed"),
                           encode(Claimed(id=claim.id, admit=False, reason="revoked")), qos=0)
            log.info("%s refused %s/%s: revoked", device, claim.event, claim.ticket)
            return
        first = self.book.claim(claim.event, claim.ticket, device, claim.ts)
        self.counts["asked"] += 1
        self.counts["admitted" if first is None else "refused"] += 1
        reply = Claimed(id=claim.id, admit=first is None, first=first,
                        reason=None if first is None else "already_admitted")
        client.publish(topic(self.kit, device, "claimed"), encode(reply), qos=0)
        if first is not None:
            log.info("%s refused %s/%s: admitted by %s", device, claim.event, claim.ticket, first.device)

    def _learn(self, device: str, payload: bytes) -> None:
        """A check-in admitted without the hub (it was unreachable) still claims its ticket."""
        if len(payload) > _MAX_EVENT_BYTES:
            return
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: '[[[[...' nested past Python's limit
            return  # the fleet rejects and counts malformed events; the hub only learns from good ones
        data = body.get("data") if isinstance(body, dict) and body.get("kind") == "checkin" else None
        if not isinstance(data, dict) or data.get("verdict") != "admitted" or data.get("hub_checked", True):
            return
        event, ticket_id, ts = data.get("event"), data.get("ticket"), body.get("ts")
        if isinstance(event, str) and isinstance(ticket_id, str) and isinstance(ts, int):
            self.book.claim(event, ticket_id, device, ts)
            self.counts["learned"] += 1

    def _bad(self, reason: str, detail: str) -> None:
        self.counts[f"bad:{reason}"] += 1
        now = time.monotonic()
        if now - self._last_warn.get(reason, -60) >= 60:  # once a minute per reason: a bad door can't flood the log
            self._last_warn[reason] = now
            log.warning("door hub ignored a message (%s): %s", reason, detail)

