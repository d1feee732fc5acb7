"""How the fleet's writes tell the dashboard's live stream (``GET /api/v1/stream``) that something changed.

The store calls :meth:`EventBus.publish` after each commit (Store.changes, hooked by create_app),
on ingest's writer thread for ingest's batches. That must never
wait on a browser: each subscriber is a small *coalescing* mailbox (the set of kits and devices
changed since the client last read, bounded in size; past the bound it collapses into "everything
changed"), and waking the subscriber's asyncio task is ``loop.call_soon_threadsafe`` (a write to the
loop's self-pipe; it does not block). A slow client therefore costs memory bounded by its mailbox,
and it gets one merged update instead of a backlog. The SSE handler (fleet/api/routes/stream.py)
drains the mailbox and the page re-fetches what changed from the ordinary API.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger("popkit.fleet.events")

MAILBOX_MAX = 256  # distinct kits + devices a subscriber may have pending before it collapses into "all"


@dataclass
class Change:
    """What changed since the subscriber last looked. ``all``: too much to name, re-fetch everything."""

    kits: set[str] = field(default_factory=set)
    devices: set[str] = field(default_factory=set)
    all: bool = False

    def as_json(self) -> dict:
        return {"kits": sorted(self.kits), "devices": sorted(self.devices), "all": self.all}


class Subscription:
    """One SSE client's mailbox. Filled from any thread; read by one asyncio task."""

    def __init__(self, bus: "EventBus", loop: asyncio.AbstractEventLoop, sid: int):
        self._bus = bus
        self._loop = loop
        self.id = sid
        self._lock = threading.Lock()
        self._pending = Change()
        self._has = False
        self._event = asyncio.Event()  # set on the loop's thread only
        self.coalesced = 0  # publishes merged into a pending change (for the tests and curiosity)

    def offer(self, kits: set[str], devices: set[str]) -> None:
        """Merge a change in; wake the reader. Never blocks on the reader."""
        with self._lock:
            p = self._pending
            if self._has:
                self.coalesced += 1
            if not p.all:
                p.kits |= kits
                p.devices |= devices
                if len(p.kits) + len(p.devices) > MAILBOX_MAX:
                    self._pending = Change(all=True)
            wake = not self._has
            self._has = True
        if wake:
            try:
                self._loop.call_soon_threadsafe(self._event.set)
            except RuntimeError:  # the loop is closed: the client is gone, unsubscribe follows
                pass

    def take(self) -> Change | None:
        """The pending change (emptying the mailbox), or None."""
        with self._lock:
            if not self._has:
                return None
            change, self._pending, self._has = self._pending, Change(), False
        return change

    async def wait(self, timeout: float) -> Change | None:
        """The next change, or None when ``timeout`` passes without one."""
        change = self.take()
        if change is not None:
            return change
        self._event.clear()
        change = self.take()  # one may have landed between take() and clear()
        if change is not None:
            return change
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.take()

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Fan-out of "kit/device changed" notices from the store's writes to any number of SSE clients."""

    def __init__(self):
        self._subs: dict[int, Subscription] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.published = 0

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        sub = Subscription(self, loop or asyncio.get_running_loop(), next(self._ids))
        with self._lock:
            self._subs[sub.id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.pop(sub.id, None)

    def publish(self, kits: set[str], devices: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        if not kits and not devices:
            return
        self.published += 1
        with self._lock:
            subs = list(self._subs.values())
        for sub in subs:
            sub.offer(set(kits), set(devices))
