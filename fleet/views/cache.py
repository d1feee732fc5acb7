"""What the overview and a kit page show, computed once and served many times.

A kit's view (``HealthViews.kits_with_health``: devices, health, readiness, forecasts) costs ~1.3 ms to
compute alone, the whole fleet's ~0.3-0.45 s at 1,000 kits, and validating and encoding that
through a response model cost more than computing it. So the API keeps every kit's view (encoded
as JSON on first read, then kept), with a short summary of it for the overview:

* **Changes recompute at once.** ``invalidate(kits)`` (hooked to ingest's commits through the
  event bus, and to the store's own writes: a kit registered, a config pushed) marks kits dirty;
  the next read of a dirty kit recomputes it before answering, so the dashboard's SSE ``change`` →
  ``GET /api/v1/kits/{id}`` always sees the commit that caused it. A list recomputes the dirty
  kits first while they are few (``DIRTY_ON_READ``); the refresher thread recomputes them soon
  anyway, spending at most ``busy_duty`` of its time on them: a busy fleet has every kit dirty
  all the time, and its list shows views a few seconds old (~ pass time / busy_duty).
* **Encoded on first read.** In a busy fleet most views are replaced before anyone reads them.
* **The alerts judge the same views** (``snapshot``): the fleet is computed once for both.
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
from fleet.db import now_ms
from fleet.store import Store

log = logging.getLogger("popkit.fleet.views")

FULL_PASS_FRACTION = 0.25  # more dirty kits than this share of the fleet: one full pass is cheaper than one by one
BUSY_DUTY = 0.1  # default share of its time the refresher spends on changed kits (FleetSettings.view_busy_duty)
DIRTY_MIN_INTERVAL_S = 0.2  # and lets changes gather this long between passes
DIRTY_ON_READ = 8  # a list read recomputes this many changed kits itself (~1.5 ms each at 10 devices)


def kit_state(view: dict) -> str:
    """online (every device), degraded (some), offline (none): the overview's connectivity badge."""
    total, online = view["devices_total"], view["devices_online"]
    if not total or not online:
        return "offline"
    return "online" if online == total else "degraded"


def summary_of(view: dict) -> dict:
    """A kit as the overview lists it: its devices as chips (id, role, model, online, health status, clock)."""
    devices = [dict(id=d["id"], role=d["role"], model=d["model"], online=d["online"],
                    status=(d.get("health") or {}).get("status"), last_seen_ms=d["last_seen_ms"],
                    clock=d.get("clock"))
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


class Entry:
    """A kit's computed view. Its JSON is encoded on first read, then kept: in a busy fleet most
    views are replaced by the next pass before anyone reads them, and encoding all of them cost
    as much as computing them."""

    __slots__ = ("view", "state", "status", "computed_ms", "_full", "_summary", "_haystack")

    def __init__(self, view: dict, computed_ms: int):
        view["computed_ms"] = computed_ms
        self.view = view  # never changed once here: the alert evaluator reads it too (KitViews.snapshot)
        self.state = kit_state(view)  # online / degraded / offline
        self.status = (view.get("health") or {}).get("status") or "unknown"  # health: ok ... offline
        self.computed_ms = computed_ms
        self._full: bytes | None = None
        self._summary: bytes | None = None
        self._haystack: str | None = None

    @property
    def id(self) -> str:
        return self.view["id"]

    @property
    def full(self) -> bytes:
        """KitOut as JSON."""
        if self._full is None:
            self._full = encode(self.view)
        return self._full

    @property
    def summary(self) -> bytes:
        """KitSummaryOut as JSON."""
        if self._summary is None:
            self._summary = encode(summary_of(self.view))
        return self._summary

    @property
    def haystack(self) -> str:
        """What ?q= searches, lower case."""
        if self._haystack is None:
            v = self.view
            words = [v["id"], v["name"]] + [w for d in v["devices"] for w in (d["id"], d["role"], d["model"] or "")]
            self._haystack = " ".join(words).lower()
        return self._haystack


def entry_of(view: dict, computed_ms: int) -> Entry:
    return Entry(view, computed_ms)


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
                 clock: Callable[[], int] = now_ms, busy_duty: float = BUSY_DUTY):
        self.store = store
        self.health = health
        self.refresh_s = refresh_s
        self.busy_duty = busy_duty
        self.max_age_s = max(max_age_s, refresh_s)
        self.clock = clock
        self.stats = ViewStats()
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._ids: list[str] = []  # sorted
        self._full_ms: int | None = None  # when the last full pass read the database
        self._dirty: dict[str, int] = {}  # kit -> generation; "*" = a kit not yet known may exist
        self._gen = 0
        self._version = 0  # moves whenever an entry is stored (snapshot)
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

    def snapshot(self, max_age_s: float | None = None) -> tuple[int, list[dict]]:
        """Every kit's latest view (dicts: read, never change) and a version that moves whenever one is
        recomputed. The alert evaluator judges these, so one computation of the fleet serves both the
        dashboard and the alerts. A last full pass older than ``max_age_s`` (default: max_age_s) is
        done again first, in the caller's thread; changed kits are as fresh as the refresher keeps them."""
        limit = self.max_age_s if max_age_s is None else max_age_s
        if self._full_ms is None or self.clock() - self._full_ms > limit * 1000:
            self.refresh_all()
        with self._lock:
            return self._version, [self._entries[k].view for k in self._ids]

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
        views = self.store.health.kits_with_health(self.health, kit_id=kit_id, now=now)
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
        views = self.store.health.kits_with_health(self.health, now=now)
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
        self._version += 1
        if self._dirty.get(e.id) == gen:
            self._dirty.pop(e.id, None)
        if new and sort:
            self._ids = sorted(self._entries)
        return e

    def _drop(self, kit_id: str, gen: int | None) -> None:
        if self._entries.pop(kit_id, None) is not None:
            self._version += 1
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
                        self._stop.wait(max(DIRTY_MIN_INTERVAL_S, took * (1 / self.busy_duty - 1)))
                        continue
            except Exception:  # noqa: BLE001 - a failed pass is retried; reads recompute meanwhile
                self.stats.errors += 1
                log.exception("kit views: refresh failed")
                self._stop.wait(1.0)
            self._wake.wait(max(0.0, next_full - time.monotonic()))
            self._wake.clear()
            self._stop.wait(0.05)  # let a burst of commits gather
