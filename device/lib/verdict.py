# The door's decision for one scan: the ticket's own checks (ticket.py), then this
# scanner's revocation list and redemption log (redemptions.py).
#
# Config (the scanner's, as JSON):
#   {"leeway": 0,                      # seconds of clock skew forgiven at both ends of a window
#    "events": [{"event": "FEST25",
#                "key": "<64 hex>",    # the per-event HMAC key (docs/tickets.md: why it expires)
#                "not_before": 1752300000,  # Unix s (optional): before it, scans say not_yet_valid
#                "expires": 1752451200,  # Unix s; from then on the key is dropped, scans say expired
#                "capacity": 5000,     # tickets expected: presizes the redemption index
#                "revoked": ["K7QX2MBA"]}]}
#
# Order: malformed, wrong_event, bad_signature, not_yet_valid, expired, revoked,
# already_admitted, admitted. An admission is on flash before decide() returns.
#
# Keys also come at run time (load_keys: the fleet's retained config `data.keys`, or the kit's
# agent): each adds an event or replaces that event's key and window; the event's redemption log
# stays. drop_expired() forgets a key whose window is over and deletes its redemption log: no
# ticket of that event can be admitted here again (every scan says expired), and the check-ins
# themselves are in the outbox, not in that log.
import os
import time

from binascii import unhexlify

import ticket
from hmac256 import HMAC256
from redemptions import Redemptions, Revocations
from ticket import (ADMITTED, ALREADY_ADMITTED, BAD_SIGNATURE, EXPIRED, MALFORMED, NOT_YET_VALID, REVOKED,
                    WRONG_EVENT)

_EPOCH_OFFSET = 946684800 if time.gmtime(0)[0] == 2000 else 0  # ports whose epoch is 2000


def unix_now():
    """Seconds since 1970 on every port (tickets carry Unix time)."""
    return time.time() + _EPOCH_OFFSET


class _Event:
    # store: the event's redemption log when a new key replaces its old one (the log stays)
    def __init__(self, spec, data_dir, store=None):
        self.name = spec["event"]
        hexkey = spec["key"]
        if len(hexkey) != 64:
            raise ValueError("event %s: key must be 64 hex digits" % self.name)
        self.key = HMAC256(unhexlify(hexkey))
        self.not_before = spec.get("not_before") or 0
        self.expires = spec.get("expires") or 0
        self.revoked = Revocations(spec.get("revoked", ()))
        self.store = store or Redemptions("%s/redeemed-%s.log" % (data_dir, self.name), spec.get("capacity", 0))


class Gate:
    """Decides scans for the events in ``config``; redemption logs live in ``data_dir``."""

    def __init__(self, config, data_dir):
        self.leeway = config.get("leeway", 0)
        self._events = {}
        for spec in config.get("events", ()):
            ev = _Event(spec, data_dir)
            self._events[ev.name.encode()] = ev
        self._dir = data_dir
        self.counts = {}  # verdict -> scans since start, for telemetry
        self._pending = None  # type: tuple | None  # (event, ticket id, now): admissible, not yet admitted

    def load_keys(self, keys, now=None):
        """Add or replace event keys ([{event, key (hex), not_before, expires}], Unix s): a new event
        gets its redemption log (kept on flash from an earlier load, if any), a known one its new key
        and window (its log and revocations stay). A key already expired at ``now`` (None: no trusted
        time) is not loaded. Returns how many keys changed. (Few functions here: on a 64 KB heap each
        one costs RAM even frozen.)"""
        changed = 0
        for spec in keys:
            name = spec["event"].encode()
            exp = spec.get("expires") or 0
            if now is not None and exp and now >= exp:
                continue  # over already: drop_expired() deals with one loaded before
            ev = self._events.get(name)
            new = _Event(spec, self._dir, ev.store if ev else None)
            if ev is not None:
                if ev.key is not None and new.key._ipad == ev.key._ipad and ev.expires == exp \
                        and ev.not_before == new.not_before:
                    continue  # the same key sent again
                new.revoked = ev.revoked
            self._events[name] = new
            changed += 1
        return changed

    def drop_expired(self, now):
        """Forget every event whose key expired at Unix time ``now`` (a trusted time only) and delete
        its redemption log. Returns the names dropped."""
        gone = []
        for name, ev in list(self._events.items()):
            if ev.expires and now >= ev.expires:
                del self._events[name]
                ev.store.close()
                try:
                    os.remove(ev.store.path)
                except OSError:
                    pass
                gone.append(name.decode())
        return gone

    def decide(self, payload, now, admit=True, trusted=True, early=False):
        """(verdict, ticket fields dict or None) for one scanned payload at Unix time ``now``.

        admit=False: an "admitted" verdict is only admissible; admit() then writes it to flash,
        refuse() drops it (another door got there first, says the kit's hub).
        trusted=False: ``now`` is a clock nobody set (docs/tickets.md, "No trusted time"): the
        ticket's and the key's windows are not checked (no not_yet_valid, no expired); signature,
        event, revocations and double entry are.
        early=True: ``now`` may be behind, never ahead (the kit's Pi on its last known time, no RTC
        and no uplink): nothing is refused as not yet valid, expiry is still judged."""
        self._pending = None
        verdict, fields = self._decide(payload, now, admit, trusted, early)
        if admit or verdict != ADMITTED:
            self.counts[verdict] = self.counts.get(verdict, 0) + 1
        return verdict, fields

    def admit(self):
        p = self._pending
        if p is None:
            raise ValueError("no admissible scan to admit")
        self._pending = None
        ev, tid, now = p
        ev.store.admit(tid, now)
        self.counts[ADMITTED] = self.counts.get(ADMITTED, 0) + 1

    def refuse(self):
        self._pending = None
        self.counts[ALREADY_ADMITTED] = self.counts.get(ALREADY_ADMITTED, 0) + 1

    def _decide(self, payload, now, admit, trusted=True, early=False):
        if isinstance(payload, str):
            payload = payload.encode()
        fields = ticket.parse(payload)
        if fields is None:
            return MALFORMED, None
        ev = self._events.get(fields[0])
        if ev is None:
            return WRONG_EVENT, ticket.as_dict(fields)  # unverified: what the ticket claims
        if ev.key is None or (trusted and ev.expires and now >= ev.expires):
            ev.key = None  # the event is over: forget its key
            return EXPIRED, ticket.as_dict(fields)
        verdict = ticket.verify(fields, payload, ev.key, now if trusted else None, self.leeway, early)
        if verdict == BAD_SIGNATURE:
            return verdict, None
        info = ticket.as_dict(fields)
        if verdict == ADMITTED and trusted and not early and now < ev.not_before - self.leeway:
            return NOT_YET_VALID, info  # the key's window has not begun: its event is not on yet
        if verdict != ADMITTED:
            return verdict, info
        if fields[1] in ev.revoked:
            return REVOKED, info
        first = ev.store.lookup(fields[1])
        if first is not None:
            info["first_scan"] = first
            return ALREADY_ADMITTED, info
        if admit:
            ev.store.admit(fields[1], now)
        else:
            self._pending = (ev, fields[1], now)
        return ADMITTED, info

    def close(self):
        for ev in self._events.values():
            ev.store.close()
