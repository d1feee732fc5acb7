"""Compile a venue's lighting (zones, scenes, schedules, overrides) into one controller's format-1
timeline (docs/lighting-timeline.md), and ``preview`` what each zone shows at a given moment.

Layers, lowest first: the schedules (their own priorities, 0..254), manual overrides (priority 255,
until they expire), and the safety floor (the controller raises each safety output to its floor
level while the venue is open). The controller only picks the highest window holding "now", so:

* a scene is translated to *this* controller's outputs (zones elsewhere are dropped);
* a zone override changes one zone of whatever the schedule shows, so over its span it is compiled
  as composite scenes ``<schedule scene>+<override id>``, split where the schedule's scene changes;
* two schedule windows of equal priority may not overlap (the controller refuses it): that is a
  ``ScheduleConflict`` naming both schedules and the overlap in the venue's local time.

**Local time to UTC (DST).** Every local time is converted with the venue's zone by one rule: *it
means the first instant at which the venue's wall clock reads that time, or, when the clock never
reads it, the first instant it reads a later time.* So in the fall-back hour an ambiguous time is
its first occurrence (summer time, ``fold=0``), and a time in the spring-forward gap is the instant
the clocks jump (Europe/London 29 Mar 2026 01:30 -> 01:00 UTC, shown as 02:00 BST). A window that
lies wholly inside the gap is empty and is dropped. A weekly 19:00-23:00 window is therefore 19:00
UTC in London's winter and 18:00 UTC in its summer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Sequence
from zoneinfo import ZoneInfo

from fleet.venues.model import (DAYS, OVERRIDE_PRIORITY, OnceWindow, Override, Scene, SunEdge,
                                SunWindow, Venue, WeeklyWindow, Zone, ZoneLevel)
from fleet.venues.sun import sun_times

UTC = timezone.utc
MAX_WINDOWS = 1024
MAX_SCENES = 255
OFF = "_off"  # the scene with nothing on, for a zone override over no schedule (never a user id: ids start [a-z0-9])


class CompileError(ValueError):
    """Schedules, scenes or zones that cannot make a timeline; the message names the field."""


class ScheduleConflict(CompileError):
    """Two schedule windows of the same priority overlap."""

    def __init__(self, message: str, first: str, second: str):
        super().__init__(message)
        self.schedules = (first, second)


@dataclass(frozen=True)
class Window:
    start: int  # epoch seconds, UTC
    end: int
    scene: str
    priority: int
    source: str  # schedule or override id


# ---------------------------------------------------------------------------------------- local time

def local_to_utc(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive local wall-clock time in ``tz`` -> aware UTC, by the rule in the module docstring."""
    if local.tzinfo is not None:
        raise ValueError(f"local_to_utc: {local.isoformat()} already has a zone")
    first = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == local:
        return first  # exists (fold=0: the first occurrence when ambiguous)
    # In a gap: fold=0 used the offset before the jump, fold=1 the one after; the jump lies between.
    lo = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
    lo, hi = min(lo, first), max(lo, first)
    before = lo.astimezone(tz).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0)


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _utc(t: datetime, name: str) -> datetime:
    if t.tzinfo is None:
        raise CompileError(f"{name}: needs a UTC offset, not the naive {t.isoformat()}")
    return t.astimezone(UTC)


def _local_days(tz: ZoneInfo, start: datetime, end: datetime) -> Iterable[date]:
    """Every local date that can start a window touching [start, end) (one day either side: a
    window may start the evening before and run past midnight)."""
    d = start.astimezone(tz).date() - timedelta(days=1)
    last = end.astimezone(tz).date() + timedelta(days=1)
    while d <= last:
        yield d
        d += timedelta(days=1)


def _span(tz: ZoneInfo, day: date, start: time, end: time) -> tuple[datetime, datetime]:
    s = datetime.combine(day, start)
    e = datetime.combine(day if end > start else day + timedelta(days=1), end)
    return local_to_utc(s, tz), local_to_utc(e, tz)


# ----------------------------------------------------------------------------------- expanding

def _sun_edge(venue: Venue, day: date, edge: SunEdge) -> datetime | None:
    t = sun_times(day, venue.latitude, venue.longitude, venue.tz).get(edge.event)
    return None if t is None else t + timedelta(minutes=edge.offset_min)


def _occurrences(venue: Venue, sched, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
    """The schedule's windows (UTC) that touch [lo, hi); empty ones (inside a DST gap) dropped."""
    tz = venue.zone
    spans: list[tuple[datetime, datetime]] = []
    if isinstance(sched, OnceWindow):
        s, e = sched.local_span()
        spans.append((local_to_utc(s, tz), local_to_utc(e, tz)))
    elif isinstance(sched, WeeklyWindow):
        spans += [_span(tz, d, sched.start, sched.end) for d in _local_days(tz, lo, hi) if sched.runs_on(d)]
    elif isinstance(sched, SunWindow):
        for d in _local_days(tz, lo, hi):
            if not sched.runs_on(d):
                continue
            s = _sun_edge(venue, d, sched.start)
            if s is None:
                continue
            e = None
            for later in (d, d + timedelta(days=1), d + timedelta(days=2)):
                if isinstance(sched.end, SunEdge):
                    e = _sun_edge(venue, later, sched.end)
                else:
                    e = local_to_utc(datetime.combine(later, sched.end), tz)
                if e is not None and e > s:
                    break
                e = None
            if e is not None:
                spans.append((s, e))
    else:  # pragma: no cover - the model's union is closed
        raise TypeError(type(sched))
    return [(s, e) for s, e in spans if e > s and s < hi and e > lo]


def opening_spans(venue: Venue, lo: datetime, hi: datetime) -> list[tuple[int, int]]:
    """When the venue is open within reach of [lo, hi), UTC epoch seconds, overlaps merged."""
    tz = venue.zone
    spans = []
    for h in venue.hours:
        for d in _local_days(tz, lo, hi):
            if DAYS[d.weekday()] in h.days:
                s, e = _span(tz, d, h.open, h.close)
                if e > s and s < hi and e > lo:
                    spans.append((_epoch(s), _epoch(e)))
    return _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


# ------------------------------------------------------------------------------------ checks

def _check_refs(zones: Sequence[Zone], scenes: Sequence[Scene], schedules: Sequence, overrides: Sequence[Override]):
    zone_ids = {z.id for z in zones}
    scene_ids = {s.id for s in scenes}
    for kind, items in (("zones", zones), ("scenes", scenes), ("schedules", schedules), ("overrides", overrides)):
        seen: set[str] = set()
        for i, item in enumerate(items):
            if item.id in seen:
                raise CompileError(f"{kind}[{i}].id: {item.id!r} is used twice")
            seen.add(item.id)
    for s in scenes:
        for z in s.levels:
            if z not in zone_ids:
                raise CompileError(f"scenes.{s.id}.levels: unknown zone {z!r}")
    for i, s in enumerate(schedules):
        if s.scene not in scene_ids:
            raise CompileError(f"schedules[{i}] ({s.id!r}).scene: unknown scene {s.scene!r}")
    for i, o in enumerate(overrides):
        if o.scene is not None and o.scene not in scene_ids:
            raise CompileError(f"overrides[{i}] ({o.id!r}).scene: unknown scene {o.scene!r}")
        if o.zone is not None and o.zone not in zone_ids:
            raise CompileError(f"overrides[{i}] ({o.id!r}).zone: unknown zone {o.zone!r}")
    # One output, one zone: two zones driving the same channel or DMX slot would fight.
    owner: dict[tuple[str, Any], str] = {}
    for z in zones:
        for o in z.outputs:
            keys = [(o.controller, o.channel)] if o.kind == "pwm" else \
                [(o.controller, slot) for slot in range(o.slot, o.slot + o.count)]  # type: ignore[operator]
            for k in keys:
                if k in owner and owner[k] != z.id:
                    what = f"channel {k[1]}" if o.kind == "pwm" else f"DMX slot {k[1]}"
                    raise CompileError(f"zones.{z.id}.outputs: {what} of {o.controller} is also zone {owner[k]!r}'s")
                owner[k] = z.id


def _check_conflicts(windows: list[Window], tz: ZoneInfo):
    by_prio: dict[int, list[Window]] = {}
    for w in windows:
        by_prio.setdefault(w.priority, []).append(w)
    for prio, ws in by_prio.items():
        ws.sort(key=lambda w: (w.start, w.end))
        latest = ws[0]  # the window reaching furthest so far
        for w in ws[1:]:
            if w.start < latest.end:
                s = datetime.fromtimestamp(w.start, tz)
                e = datetime.fromtimestamp(min(w.end, latest.end), tz)
                raise ScheduleConflict(
                    f"schedules {latest.source!r} and {w.source!r} overlap at priority {prio}: "
                    f"{s:%Y-%m-%d %H:%M} to {e:%Y-%m-%d %H:%M} {tz.key} local time "
                    f"({s:%Z} to {e:%Z}); give one a different priority or move it", latest.source, w.source)
            if w.end > latest.end:
                latest = w


def schedule_windows(venue: Venue, schedules: Sequence, lo: datetime, hi: datetime) -> list[Window]:
    """Every schedule window touching [lo, hi), UTC, checked for equal-priority overlaps."""
    out = [Window(_epoch(s), _epoch(e), sch.scene, sch.priority, sch.id)
           for sch in schedules for s, e in _occurrences(venue, sch, lo, hi)]
    _check_conflicts(out, venue.zone)
    return sorted(out, key=lambda w: (w.start, w.priority, w.end, w.scene))


def _winner(windows: Sequence[Window], t: int) -> Window | None:
    best = None
    for w in windows:
        if w.start <= t < w.end and (best is None or w.priority > best.priority):
            best = w
    return best


# ---------------------------------------------------------------------------------- overrides

def _override_span(o: Override, lo: int) -> tuple[int, int]:
    return (lo if o.starts is None else _epoch(o.starts)), _epoch(o.expires)


def _apply_overrides(base: str | None, scenes: dict[str, Scene], active: Sequence[Override]
                     ) -> tuple[str, dict[str, ZoneLevel], int]:
    """(scene id, zone levels, fade_ms) after ``active`` overrides, in order, over ``base``."""
    tokens = [base or OFF]
    levels = dict(scenes[base].levels) if base else {}
    fade = scenes[base].fade_ms if base else 0
    for o in active:
        if o.scene is not None:
            tokens, levels, fade = [o.scene], dict(scenes[o.scene].levels), scenes[o.scene].fade_ms
        else:
            tokens.append(o.id)
            levels[o.zone] = o.level  # type: ignore[index,assignment]
            fade = o.fade_ms
    return "+".join(tokens), levels, fade


def override_windows(schedule: Sequence[Window], scenes: dict[str, Scene], overrides: Sequence[Override],
                     lo: int, hi: int) -> tuple[list[Window], dict[str, tuple[dict[str, ZoneLevel], int]]]:
    """The override layer: windows at priority 255, and the composite scenes they name."""
    spans = [(o, *_override_span(o, lo)) for o in overrides]
    spans = [(o, max(s, lo), e) for o, s, e in spans if e > lo and s < hi and e > s]
    if not spans:
        return [], {}
    cuts = {t for _, s, e in spans for t in (s, e)}
    for w in schedule:
        cuts.update(t for t in (w.start, w.end) if any(s < t < e for _, s, e in spans))
    points = sorted(cuts)
    windows: list[Window] = []
    made: dict[str, tuple[dict[str, ZoneLevel], int]] = {}
    for a, b in zip(points, points[1:]):
        active = [o for o, s, e in spans if s <= a < e]
        if not active:
            continue
        win = _winner(schedule, a)
        sid, levels, fade = _apply_overrides(win.scene if win else None, scenes, active)
        made[sid] = (levels, fade)
        if windows and windows[-1].end == a and windows[-1].scene == sid:
            windows[-1] = Window(windows[-1].start, b, sid, OVERRIDE_PRIORITY, windows[-1].source)
        else:
            windows.append(Window(a, b, sid, OVERRIDE_PRIORITY, ",".join(o.id for o in active)))
    return windows, made


# ---------------------------------------------------------------------------------- to outputs

def _zone_outputs(zone: Zone, controller: str, zl: ZoneLevel | None, floor: bool = False) -> dict[str, Any]:
    """A zone's level on ``controller``'s outputs, as a levels object (zero entries left out)."""
    out: dict[str, Any] = {}
    level = (zone.floor_level or 0) if floor else (zl.level if zl else 0)
    rgb = None if floor or zl is None else zl.rgb

    def tint(i: int) -> int:  # r, g, b (index 0..2) follow rgb; white and further slots the level
        return round(level * rgb[i] / 255) if rgb is not None and i < 3 else level

    for o in zone.outputs:
        if o.controller != controller:
            continue
        if o.kind == "pwm":
            v = tint("rgbw".index(o.channel))  # type: ignore[arg-type]
            if v:
                out[o.channel] = v  # type: ignore[index]
        else:
            run = [tint(i) for i in range(o.count)]
            if any(run):
                out.setdefault("dmx", {})[str(o.slot)] = run
    return out


def _levels_object(zones: Sequence[Zone], controller: str, levels: dict[str, ZoneLevel]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for z in zones:
        part = _zone_outputs(z, controller, levels.get(z.id))
        dmx = part.pop("dmx", None)
        obj.update(part)
        if dmx:
            obj.setdefault("dmx", {}).update(dmx)
    if "dmx" in obj:
        obj["dmx"] = dict(sorted(obj["dmx"].items(), key=lambda kv: int(kv[0])))
    return obj


def _scene_json(levels: dict[str, Any], fade_ms: int) -> dict[str, Any]:
    return {"levels": levels, "fade_ms": fade_ms} if fade_ms else {"levels": levels}


# ----------------------------------------------------------------------------------- compile

def compile_timeline(venue: Venue, zones: Sequence[Zone], scenes: Sequence[Scene], schedules: Sequence,
                     overrides: Sequence[Override], controller_id: str, start_utc: datetime,
                     horizon_h: float = 48, *, compiled_at: datetime | None = None) -> dict[str, Any]:
    """One controller's format-1 timeline for [start_utc, start_utc + horizon_h).

    Windows that touch the horizon are kept whole (a late re-push still finds the one running);
    overrides are clipped to start at ``start_utc``. Raises ``ScheduleConflict`` for equal-priority
    overlaps, ``CompileError`` for bad references or a timeline past the controller's limits.
    """
    _check_refs(zones, scenes, schedules, overrides)
    lo_dt = _utc(start_utc, "start_utc")
    hi_dt = lo_dt + timedelta(hours=horizon_h)
    lo, hi = _epoch(lo_dt), _epoch(hi_dt)
    by_id = {s.id: s for s in scenes}

    sched = schedule_windows(venue, schedules, lo_dt, hi_dt)
    ovr, composites = override_windows(sched, by_id, overrides, lo, hi)
    windows = sorted(sched + ovr, key=lambda w: (w.start, w.priority, w.end, w.scene))
    if len(windows) > MAX_WINDOWS:
        raise CompileError(f"windows: {len(windows)} in {horizon_h} h, a controller takes at most {MAX_WINDOWS}; "
                           "compile a shorter horizon")

    scene_json: dict[str, Any] = {}
    for w in windows:
        if w.scene in scene_json:
            continue
        if w.scene in composites:
            levels, fade = composites[w.scene]
        else:
            levels, fade = dict(by_id[w.scene].levels), by_id[w.scene].fade_ms
        scene_json[w.scene] = _scene_json(_levels_object(zones, controller_id, levels), fade)
    if not scene_json:
        scene_json[OFF] = {"levels": {}}  # format 1 needs at least one scene
    if len(scene_json) > MAX_SCENES:
        raise CompileError(f"scenes: {len(scene_json)} in {horizon_h} h, a controller takes at most {MAX_SCENES}")

    timeline: dict[str, Any] = {
        "format": 1,
        "scenes": scene_json,
        "windows": [[w.start, w.end, w.scene, w.priority] for w in windows],
    }
    floor = _levels_object([z for z in zones if z.safety], controller_id,
                           {z.id: ZoneLevel(level=z.floor_level or 0) for z in zones if z.safety})
    if floor:
        timeline["floor"] = {"levels": floor, "open": [list(s) for s in opening_spans(venue, lo_dt, hi_dt)]}
    compiled = compiled_at or datetime.now(UTC)
    timeline["meta"] = {"venue": venue.id, "tz": venue.tz, "compiled": _iso(compiled),
                        "horizon_end": _iso(hi_dt)}
    return timeline


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------- preview

def preview(venue: Venue, zones: Sequence[Zone], scenes: Sequence[Scene], schedules: Sequence,
            overrides: Sequence[Override], at_utc: datetime) -> dict[str, dict[str, Any]]:
    """What each zone shows at ``at_utc``: ``{zone: {level, rgb, scene, layer}}``.

    ``layer`` is where the answer came from: ``schedule``, ``override``, ``floor`` (a safety zone
    raised to its floor while open) or ``off``. The floor raises ``level``; on the controller it
    applies per output, so a tinted zone's dim channels are raised to it too.
    """
    _check_refs(zones, scenes, schedules, overrides)
    at = _utc(at_utc, "at_utc")
    t = _epoch(at)
    by_id = {s.id: s for s in scenes}
    # A week back reaches any recurring window (< 24 h) and most one-offs still running.
    lo = at - timedelta(days=7)
    win = _winner(schedule_windows(venue, schedules, lo, at + timedelta(seconds=1)), t)
    active = [o for o in overrides if _override_span(o, t)[0] <= t < _override_span(o, t)[1]]
    sid, levels, _ = _apply_overrides(win.scene if win else None, by_id, active)
    layer_of = {}
    for z in zones:
        layer_of[z.id] = "schedule" if win and z.id in by_id[win.scene].levels else "off"
    for o in active:
        if o.scene is not None:
            layer_of = {z.id: ("override" if z.id in by_id[o.scene].levels else "off") for z in zones}
        else:
            layer_of[o.zone] = "override"  # type: ignore[index]
    is_open = any(s <= t < e for s, e in opening_spans(venue, at - timedelta(days=2), at + timedelta(seconds=1)))
    out: dict[str, dict[str, Any]] = {}
    for z in zones:
        zl = levels.get(z.id)
        level, rgb = (zl.level, list(zl.rgb) if zl.rgb else None) if zl else (0, None)
        layer = layer_of[z.id]
        if z.safety and is_open and (z.floor_level or 0) > level:
            level, layer = z.floor_level, "floor"
        out[z.id] = {"level": level, "rgb": rgb, "scene": None if sid == OFF else sid, "layer": layer}
    return out


# What the venue page's helpers share with the compiler, so a planner's window or a previewed scene
# is expanded and mapped to outputs exactly as the timeline is (fleet/venues/week.py, the routes).
occurrences = _occurrences
levels_object = _levels_object
