"""What the overview and a kit page show, computed once and served many times.

A kit's view (``Store.kits_with_health``: devices, health, readiness, forecasts) costs ~1.3 ms to
compute alone, the whole fleet's ~0.3-0.45 s at 1,000 kits, and validating and encoding that
through a response model cost more than computing it. So the API keeps every kit's view, already
encoded as JSON, with a short summary of it for the overview:

* **Changes recompute at once.** ``invalidate(kits)`` (hooked to ingest's commits through the
  event bus, and to the store's own writes: a kit registered, a config pushed) marks kits dirty;
  the next read of a dirty kit recomputes it before answering, so the dashboard's SSE ``change`` →
  ``GET /api/v1/kits/{id}`` always sees the commit that caused it. A list recomputes the dirty
  kits first while they are few (``DIRTY_ON_READ``); the refresher thread recomputes them soon
  anyway (at most a quarter of its time: a busy fleet has every kit dirty, and its list shows
  the last views of those meanwhile).
* **The clock moves health too** (a device going silent, an event ending): every ``refresh_s``
  the refresher recomputes the whole fleet in one pass.
* **Never older than ``max_age_s``**: if the refresher stalls (or no thread runs: an app without
  its lifespan), a read recomputes what it needs.

A kit's view is dirtied only by writes this process sees; a fleet split over processes sees
another worker's writes at the next full pass (``refresh_s``), which bounds staleness there.

Lists are served from memory: filters and pages cost microseconds, whatever the fleet's size.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from fleet.health import SEVERITY, HealthConfig
from fleet.store import Store, now_ms

log = logging.getLogger("popkit.fleet.views")

FULL_PASS_FRACTION = 0.25  # more dirty kits than this share of the fleet: one full pass is cheaper than one by one
DIRTY_DUTY = 0.25  # the refresher spends at most this share of its time on dirty kits
DIRTY_MIN_INTERVAL_S = 0.2  # and lets changes gather this long between passes
DIRTY_ON_READ = 8  # a list read recomputes this many changed kits itself (~1.5 ms each at 10 devices)


def kit_state(view: dict) -> str:
    """online (every device), degraded (some), offline (none): the overview's connectivity badge."""
    total, online = view["devices_total"], view["devices_online"]
    if not total or not online:
        return "offline"
    return "online" if online == total else "degraded"


def summary_of(view: dict) -> dict:
    """A kit as the overview lists it: its devices as chips (id, role, model, online, health status)."""
    devices = [dict(id=d["id"], role=d["role"], model=d["model"], online=d["online"],
                    status=(d.get("health") or {}).get("status"), last_seen_ms=d["last_seen_ms"])
               for d in view["devices"]]
    out = {k: view.get(k) for k in ("id", "name", "devices_online", "devices_total", "battery", "health",
                                    "readiness", "event", "batteries")}
    out.update(state=kit_state(view), devices=devices, computed_ms=view.get("computed_ms"))
    return out


def encode(view: Any) -> bytes:
    """Compact JSON. A forecast may hold inf or NaN (a flat discharge): JSON has neither, so null,
    as the response models wrote it."""
    try:
        return json.dumps(view, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(view), separators=(",", ":"), allow_nan=False).encode()


def _finite(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


@dataclass(frozen=True)
class Entry:
    id: str
    full: bytes  # KitOut as JSON
    summary: bytes  # KitSummaryOut as JSON
    state: str  # online / degraded / offline
    status: str  # health: ok ... offline
    haystack: str  # what ?q= searches, lower case
    computed_ms: int


def entry_of(view: dict, computed_ms: int) -> Entry:
    view["computed_ms"] = computed_ms
    summary = summary_of(view)
    words = [view["id"], view["name"]] + [w for d in view["devices"] for w in (d["id"], d["role"], d["model"] or "")]
    return Entry(id=view["id"], full=encode(view), summary=encode(summary), state=summary["state"],
                 status=(view.get("health") or {}).get("status") or "unknown", haystack=" ".join(words).lower(),
                 computed_ms=computed_ms)


@dataclass
class ViewStats:
    full_passes: int = 0
    last_full_s: float = 0.0
    dirty_passes: int = 0
    kits_recomputed: int = 0
    on_read: int = 0  # recomputed because a read found the kit dirty or too old
    errors: int = 0


class KitViews:
    def __init__(self, store: Store, health: HealthConfig, refresh_s: float = 10.0, max_age_s: float = 60.0,
                 clock: Callable[[], int] = now_ms):
        self.store = store
        self.health = health
        self.refresh_s = refresh_s
        self.max_age_s = max(max_age_s, refresh_s)
        self.clock = clock
        self.stats = ViewStats()
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._ids: list[str] = []  # sorted
        self._full_ms: int | None = None  # when the last full pass read the database
        self._dirty: dict[str, int] = {}  # kit -> generation; "*" = a kit not yet known may exist
        self._gen = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ changes

    def invalidate(self, kits) -> None:
        """These kits changed (a commit, a registration, a pushed config): recompute before serving."""
        with self._lock:
            for k in kits:
                self._gen += 1
                self._dirty[k] = self._gen
        self._wake.set()

    # ------------------------------------------------------------ reads

    def get(self, kit_id: str) -> bytes | None:
        """A kit's view as JSON (KitOut); None if there is no such kit."""
        with self._lock:
            e = self._entries.get(kit_id)
            fresh = e is not None and kit_id not in self._dirty and not self._too_old(e.computed_ms)
        if fresh:
            return e.full
        self.stats.on_read += 1
        e = self._recompute_one(kit_id)
        return e.full if e is not None else None

    def page(self, state: str | None = None, status: str | None = None, q: str | None = None,
             sort: str = "id", offset: int = 0, limit: int = 100, kits: set[str] | None = None) -> bytes:
        """The overview: kit summaries matching the filters, ``limit`` from ``offset``, as one JSON object
        (KitPageOut) with the number matching, the fleet's counts per state and status, and next_offset.
        ``kits``: only these (a crew user's), counts included; None: every kit."""
        self._ensure_fresh()
        with self._lock:
            entries = [self._entries[k] for k in self._ids if kits is None or k in kits]
        counts = {"state": {"online": 0, "degraded": 0, "offline": 0}, "status": {s: 0 for s in SEVERITY}}
        for e in entries:
            counts["state"][e.state] += 1
            counts["status"][e.status] = counts["status"].get(e.status, 0) + 1
        words = q.lower().split() if q else []
        hits = [e for e in entries if (state is None or e.state == state) and (status is None or e.status == status)
                and all(w in e.haystack for w in words)]
        if sort == "health":  # worst first: what ops look at first
            hits.sort(key=lambda e: (-SEVERITY.get(e.status, 0), e.id))
        shown = hits[offset : offset + limit]
        nxt = offset + limit if offset + limit < len(hits) else None
        head = dict(total=len(hits), offset=offset, limit=limit, next_offset=nxt, fleet=counts,
                    computed_ms=min((e.computed_ms for e in shown), default=self._full_ms))
        return b'{"items":[' + b",".join(e.summary for e in shown) + b"]," + encode(head)[1:]

    # ------------------------------------------------------------ computing

    def _too_old(self, computed_ms: int) -> bool:
        return self.clock() - computed_ms > self.max_age_s * 1000

    def _ensure_fresh(self) -> None:
        """Before a list: a full pass if none ran yet or the last is older than max_age_s; the dirty
        kits if they are few (a quiet fleet: the list is exact for a few ms), or if no refresher
        thread runs (an app without its lifespan). Many dirty kits (a busy fleet) are left to the
        refresher: the list shows their last views meanwhile."""
        if self._full_ms is None or self._too_old(self._full_ms):
            self.stats.on_read += 1
            self.refresh_all()
        elif self._dirty and (self._thread is None or len(self._dirty) <= DIRTY_ON_READ):
            self.stats.on_read += 1
            self.refresh_dirty()

    def _recompute_one(self, kit_id: str) -> Entry | None:
        with self._lock:
            gen = self._dirty.get(kit_id)
        now = self.clock()
        views = self.store.kits_with_health(self.health, kit_id=kit_id, now=now)
        with self._lock:
            if not views:
                self._drop(kit_id, gen)
                return None
            return self._put(entry_of(views[0], now), gen)

    def refresh_all(self) -> None:
        """Recompute every kit in one pass (kits gone from the store are dropped)."""
        with self._lock:
            gens = dict(self._dirty)
        started = time.perf_counter()
        now = self.clock()
        views = self.store.kits_with_health(self.health, now=now)
        entries = [entry_of(v, now) for v in views]
        with self._lock:
            seen = set()
            for e in entries:
                self._put(e, gens.get(e.id), sort=False)
                seen.add(e.id)
            for gone in [k for k in self._entries if k not in seen]:
                self._drop(gone, gens.get(gone))
            self._ids = sorted(self._entries)
            self._full_ms = now
        self.stats.full_passes += 1
        self.stats.kits_recomputed += len(entries)
        self.stats.last_full_s = time.perf_counter() - started

    def refresh_dirty(self) -> int:
        """Recompute the kits marked dirty; returns how many."""
        with self._lock:
            dirty = list(self._dirty)
            known = len(self._entries)
        if not dirty:
            return 0
        if len(dirty) > max(8, FULL_PASS_FRACTION * known):
            self.refresh_all()
            return len(dirty)
        for kit_id in dirty:
            self._recompute_one(kit_id)
        self.stats.dirty_passes += 1
        self.stats.kits_recomputed += len(dirty)
        return len(dirty)

    def _put(self, e: Entry, gen: int | None, sort: bool = True) -> Entry:
        """Store a computed entry (lock held). It clears the dirty mark only if no change came in since
        the computation read the database: a commit that raced it leaves the kit dirty."""
        new = e.id not in self._entries
        self._entries[e.id] = e
        if self._dirty.get(e.id) == gen:
            self._dirty.pop(e.id, None)
        if new and sort:
            self._ids = sorted(self._entries)
        return e

    def _drop(self, kit_id: str, gen: int | None) -> None:
        if self._entries.pop(kit_id, None) is not None:
            self._ids = [k for k in self._ids if k != kit_id]
        if self._dirty.get(kit_id) == gen:
            self._dirty.pop(kit_id, None)

    # ------------------------------------------------------------ the refresher thread

    def start(self) -> "KitViews":
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fleet-kit-views", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        next_full = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_full:
                    self.refresh_all()
                    next_full = time.monotonic() + self.refresh_s
                else:
                    started = time.monotonic()
                    if self.refresh_dirty():
                        took = time.monotonic() - started
                        self._stop.wait(max(DIRTY_MIN_INTERVAL_S, took * (1 / DIRTY_DUTY - 1)))
                        continue
            except Exception:  # noqa: BLE001 - a failed pass is retried; reads recompute meanwhile
                self.stats.errors += 1
                log.exception("kit views: refresh failed")
                self._stop.wait(1.0)
            self._wake.wait(max(0.0, next_full - time.monotonic()))
            self._wake.clear()
            self._stop.wait(0.05)  # let a burst of commits gather
