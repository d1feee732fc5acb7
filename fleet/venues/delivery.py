"""From a venue's documents to its controllers: compile each controller's timeline, push it as the
controller's retained desired config when it changed, push again before its horizon runs out, and
say per controller what is desired and what it applied.

**Horizon and size.** A controller parses its whole config in RAM and takes at most
``max_config`` bytes (4096 by default: docs/lighting-timeline.md). The timeline is compiled for
``horizon_h`` (48 h); if that does not fit, for 36, 24, 12, then 6 h, and the shorter horizon just
means an earlier re-push (``repush_before_h`` before the end, or half the horizon, whichever is
sooner). A busy venue on a small controller therefore gets a shorter look-ahead offline, never a
refused config. Below 6 h it is an error naming the controller.

Pushing is idempotent: a timeline equal to the desired one (its ``meta`` aside) is not pushed
again, so editing one controller's zones does not bump the others' versions.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from fleet.db import now_ms
from fleet.store import Store
from fleet.venues.compiler import CompileError, compile_timeline, opening_spans, preview, schedule_windows
from fleet.venues.store import VenueDocs, VenueStore
from kits.contract import Config, encode

log = logging.getLogger("popkit.fleet.venues")

UTC = timezone.utc
HORIZONS_H = (48, 36, 24, 12, 6)
LIGHT_ROLES = ("lighting", "light")  # an ESP32 controller, or a light the agent drives


@dataclass
class Push:
    device_id: str
    version: int | None  # None: unchanged, not pushed
    horizon_h: float
    bytes: int


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _same(a: dict | None, b: dict) -> bool:
    if a is None:
        return False
    strip = lambda t: {k: v for k, v in t.items() if k != "meta"}  # noqa: E731
    return strip(a) == strip(b)


class VenueLighting:
    def __init__(self, store: Store, publisher: Callable[[], Any], horizon_h: float = 48.0,
                 repush_before_h: float = 24.0, max_config: int = 4096):
        self.store = store
        self.docs = VenueStore(store.engine)
        self.publisher = publisher  # () -> fleet.commands.Publisher (or None: compile only)
        self.horizon_h = horizon_h
        self.repush_before_h = repush_before_h
        self.max_config = max_config
        self._lock = threading.Lock()  # one compile-and-push at a time: versions stay in order

    # ------------------------------------------------------------ compiling

    def compile(self, docs: VenueDocs, controller: str, now: int) -> tuple[dict, float, int]:
        """(timeline, horizon_h, config bytes) for one controller: the longest horizon that fits."""
        start = _utc(now)
        for h in [x for x in HORIZONS_H if x <= self.horizon_h] or [self.horizon_h]:
            timeline = compile_timeline(*docs.args(), controller, start, horizon_h=h)
            size = len(encode(Config(version=2**31, ts=now, data=timeline)))
            if size <= self.max_config:
                return timeline, h, size
        raise CompileError(f"{controller}: even {h} h of this venue's lighting is {size} bytes; the controller "
                           f"takes at most {self.max_config} (fewer schedules or scenes on it, or a bigger max_config)")

    def check(self, docs: VenueDocs, now: int | None = None) -> dict[str, tuple[dict, float, int]]:
        """Compile every controller of the venue: raises ScheduleConflict / CompileError, pushes nothing."""
        now = now or now_ms()
        return {c: self.compile(docs, c, now) for c in docs.controllers()}

    # ------------------------------------------------------------ pushing

    def push(self, venue_id: str, now: int | None = None, force: bool = False) -> list[Push]:
        """Compile the venue for each of its controllers and push what changed (all of it if force)."""
        now = now or now_ms()
        with self._lock:
            docs = self.docs.load(venue_id, now)
            if docs is None:
                return []
            compiled = self.check(docs, now)
            publisher = self.publisher()
            out = []
            for device_id, (timeline, h, size) in compiled.items():
                desired = self.store.config.desired(device_id)
                if desired is None:
                    log.warning("venue %s: controller %s is not a registered device; not pushed", venue_id, device_id)
                    continue
                if not force and _same(desired.get("data"), timeline):
                    out.append(Push(device_id, None, h, size))
                    continue
                if publisher is None:
                    raise RuntimeError("this fleet process has no broker connection to push timelines through")
                cfg = publisher.put_config(device_id, timeline)
                out.append(Push(device_id, cfg.version, h, size))
            return out

    def due(self, now: int | None = None) -> list[str]:
        """Venues with a controller whose pushed timeline ends within the re-push margin (or has none)."""
        now = now or now_ms()
        out = []
        for venue_id in self.docs.venue_ids():
            docs = self.docs.load(venue_id, now)
            if docs is None:
                continue
            for device_id in docs.controllers():
                desired = self.store.config.desired(device_id)
                if desired is None:
                    continue
                end = _horizon_end_ms(desired)
                started = (desired.get("ts") or now)
                margin = min(self.repush_before_h * 3600_000, max(0, (end or now) - started) / 2)
                if end is None or end - now <= margin:
                    out.append(venue_id)
                    break
        return out

    def push_due(self, now: int | None = None) -> int:
        n = 0
        for venue_id in self.due(now):
            try:
                n += sum(1 for p in self.push(venue_id, now) if p.version is not None)
            except Exception:  # noqa: BLE001 - one venue's bad data must not stop the others' re-push
                log.exception("venue %s: re-push failed", venue_id)
        return n

    # ------------------------------------------------------------ what is where

    def controllers(self, venue_id: str, docs: VenueDocs | None = None) -> list[dict]:
        """Per controller: desired vs applied version, its horizon, online, the scene it reports."""
        docs = docs or self.docs.load(venue_id)
        if docs is None:
            return []
        out = []
        for device_id in docs.controllers():
            dev = self.store.devices.get_device(device_id)
            desired = self.store.config.desired(device_id)
            latest = (dev or {}).get("latest", {})
            out.append(dict(
                device_id=device_id, kit_id=(dev or {}).get("kit_id"), registered=dev is not None,
                online=bool(dev and dev["online"]),
                desired_version=(desired or {}).get("version"), applied_version=(desired or {}).get("applied_version"),
                in_sync=bool(desired and desired["in_sync"]), pushed_ms=(desired or {}).get("ts"),
                horizon_end_ms=_horizon_end_ms(desired),
                scene=(latest.get("device") or {}).get("scene") or (latest.get("light") or {}).get("scene"),
            ))
        return out

    def plan(self, docs: VenueDocs, start_ms: int, hours: float) -> list[dict]:
        """What each zone shows over [start, start + hours): segments where it stays the same, found
        by evaluating the layers at every edge (schedule windows, overrides, opening hours)."""
        start, end = _utc(start_ms), _utc(start_ms) + timedelta(hours=hours)
        edges = {int(start.timestamp()), int(end.timestamp())}
        for w in schedule_windows(docs.venue, docs.schedules, start - timedelta(days=1), end):
            edges.update((w.start, w.end))
        for o in docs.overrides:
            for t in (o.starts, o.expires):
                if t is not None:
                    edges.add(int(t.timestamp()))
        for s, e in opening_spans(docs.venue, start, end):
            edges.update((s, e))
        lo, hi = int(start.timestamp()), int(end.timestamp())
        points = sorted(t for t in edges if lo <= t < hi)
        zones: dict[str, list[dict]] = {z.id: [] for z in docs.zones}
        for i, t in enumerate(points):
            seg_end = points[i + 1] if i + 1 < len(points) else hi
            for zone_id, what in preview(*docs.args(), _utc(t * 1000)).items():
                segs = zones[zone_id]
                if segs and all(segs[-1][k] == what[k] for k in ("level", "rgb", "scene", "layer")):
                    segs[-1]["end"] = seg_end * 1000
                else:
                    segs.append(dict(start=t * 1000, end=seg_end * 1000, **what))
        return [dict(id=z.id, name=z.name, safety=z.safety, segments=zones[z.id]) for z in docs.zones]


def _horizon_end_ms(desired: dict | None) -> int | None:
    meta = ((desired or {}).get("data") or {}).get("meta") or {}
    end = meta.get("horizon_end")
    if not isinstance(end, str):
        return None
    try:
        return int(datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp() * 1000)
    except ValueError:
        return None


class RePusher:
    """Pushes each venue's timelines again before their horizon runs out (every ``interval_s``)."""

    def __init__(self, lighting: VenueLighting, interval_s: float = 300.0):
        self.lighting = lighting
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0

    def start(self) -> "RePusher":
        self._thread = threading.Thread(target=self._run, name="fleet-venue-repush", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.lighting.push_due()
                if n:
                    log.info("re-pushed %d controller timelines ahead of their horizon", n)
            except Exception:  # noqa: BLE001 - retried next pass
                log.exception("venue re-push pass failed")
            self.passes += 1
            self._stop.wait(self.interval_s)
