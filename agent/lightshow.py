"""The agent's hosted lights following their compiled lighting timeline (docs/lighting-timeline.md).

The fleet compiles a venue's lighting schedule into a per-device "format 1" timeline and pushes
it as the device's retained ``config``; the ESP32 controller runs it on its own clock
(device/lib/timeline.py, device/lib/lighting.py) and so, here, does the agent for the lights it
hosts (BLE lamps, relays), with the same rules:

* a config is validated like the firmware does (same messages); a refused one changes nothing
  and is reported as a ``fault`` event ``{"what": "config", "version", "detail"}``;
* an accepted one is kept on disk (written atomically) and its version goes into the device's
  retained ``state`` as ``config_version``; an agent started with no broker shows, at once,
  what the kept timeline says is on now;
* "what is on now" is evaluated every second (window edges are whole seconds) from the wall
  clock: the highest-priority window holding now, else ``default``, else off; the safety floor
  raises each output to at least its level while the venue is open (and while the clock is not
  set: lit exits are the safe failure);
* a ``set``/``identify`` command's look holds until the timeline's answer next changes;
* hardware is written only when the target changes (BLE is slow). DMX levels are validated and
  ignored: the agent drives no universe. Fades are not run: a lamp cuts to the new look.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kits.contract import Config, Event, LightTelemetry

log = logging.getLogger("popkit.agent.lightshow")

FORMAT = 1
MAX_WINDOWS = 1024
MAX_SCENES = 255
MAX_PRIORITY = 255
MAX_FADE_MS = 3_600_000
MAX_ID = 40
DMX_SLOTS = 512  # the agent drives no universe: runs are checked against a full one, then ignored
CLOCK_VALID = 1704067200  # 2024-01-01 UTC: an epoch clock before this has not been set
PWM_NAMES = ("r", "g", "b", "w")
_KEYS = ("format", "scenes", "default", "windows", "floor", "meta")
# A lamp fades in steps: each is one or two BLE writes, and 4 a second keep well inside what an
# ELK-BLEDOM takes (the firmware steps its PWM every 10 ms; a relay only switches).
FADE_STEP_S = 0.25
OFF = (0, 0, 0, 0)
RETRY_S = 5.0  # a light whose write failed (BLE lamp out of range) is tried again this often


class TimelineError(ValueError):
    pass


def clock_ok(now: float | None) -> bool:
    return now is not None and now >= CLOCK_VALID


# ---------------------------------------------------------------- the timeline (format 1)

def _int(v: Any, where: str) -> int:
    if type(v) is not int:
        raise TimelineError(f"{where}: must be an integer, not {v!r}")
    return v


def _level(v: Any, where: str) -> int:
    if type(v) is not int or not 0 <= v <= 255:
        raise TimelineError(f"{where}: level must be an integer 0..255, not {v!r}")
    return v


def parse_levels(obj: Any, where: str = "levels", dmx_slots: int = DMX_SLOTS) -> tuple[int, int, int, int]:
    """A levels object -> (r, g, b, w); ``dmx`` runs are checked as the firmware does, then dropped."""
    if type(obj) is not dict:
        raise TimelineError(f'{where}: must be an object like {{"r": 255, "dmx": {{"1": [255]}}}}')
    out = [0, 0, 0, 0]
    for k, v in obj.items():
        if k == "dmx":
            if type(v) is not dict:
                raise TimelineError(f"{where}.dmx: must map a first slot to a list of levels")
            seen: set[int] = set()
            for first, vals in v.items():
                try:
                    slot = int(first)
                except ValueError:
                    slot = 0
                if not 1 <= slot <= dmx_slots:
                    raise TimelineError(f"{where}.dmx.{first}: slot must be 1..{dmx_slots}")
                if type(vals) is not list or not vals:
                    raise TimelineError(f"{where}.dmx.{first}: must be a non-empty list of levels")
                if slot + len(vals) - 1 > dmx_slots:
                    raise TimelineError(f"{where}.dmx.{first}: {len(vals)} levels run past slot {dmx_slots}")
                for i, lv in enumerate(vals):
                    if slot + i in seen:
                        raise TimelineError(f"{where}.dmx: slot {slot + i} is set twice")
                    seen.add(slot + i)
                    _level(lv, f"{where}.dmx.{first}[{i}]")
        elif k in PWM_NAMES:
            out[PWM_NAMES.index(k)] = _level(v, f"{where}.{k}")
        else:
            raise TimelineError(f"{where}: unknown output {k!r} (r, g, b, w or dmx)")
    return tuple(out)  # type: ignore[return-value]


def _span(w: Any, where: str) -> tuple[int, int]:
    if type(w) is not list or len(w) < 2:
        raise TimelineError(f"{where}: must be a list [start, end, ...]")
    start = _int(w[0], where + " start")
    end = _int(w[1], where + " end")
    if start < 0:
        raise TimelineError(f"{where}: start must be epoch seconds >= 0, not {start}")
    if end <= start:
        raise TimelineError(f"{where}: end {end} is not after start {start}")
    return start, end


@dataclass(frozen=True)
class Scene:
    id: str | None  # None: the implicit "everything off" outside every window with no default
    levels: tuple[int, int, int, int]
    fade_ms: int = 0


@dataclass(frozen=True)
class Look:
    """What the timeline says is on: the scene, and its levels with the floor applied."""

    scene: str | None
    levels: tuple[int, int, int, int]
    floored: bool
    fade_ms: int = 0  # the scene's: how long a change to this look takes on a lamp


class Timeline:
    """A validated format-1 timeline. Raises TimelineError naming the offending field."""

    def __init__(self, data: Any):
        if type(data) is not dict:
            raise TimelineError("timeline: must be an object")
        for k in data:
            if k not in _KEYS:
                raise TimelineError(f"timeline: unknown field {k!r}")
        fmt = data.get("format")
        if fmt != FORMAT or type(fmt) is not int:
            raise TimelineError(f"format: this controller reads timeline format {FORMAT}, not {fmt!r}")
        scenes = data.get("scenes")
        if type(scenes) is not dict or not scenes:
            raise TimelineError("scenes: must be an object of scene id -> {levels, fade_ms}")
        if len(scenes) > MAX_SCENES:
            raise TimelineError(f"scenes: {len(scenes)} scenes, at most {MAX_SCENES}")
        self.scenes: dict[str, Scene] = {}
        for sid, obj in scenes.items():
            if not 1 <= len(sid) <= MAX_ID:
                raise TimelineError(f"scenes: scene id {sid!r} must be 1..{MAX_ID} characters")
            where = f"scenes.{sid}"
            if type(obj) is not dict:
                raise TimelineError(f"{where}: must be an object with levels and fade_ms")
            for k in obj:
                if k not in ("levels", "fade_ms"):
                    raise TimelineError(f"{where}: unknown field {k!r}")
            if "levels" not in obj:
                raise TimelineError(f"{where}: levels missing")
            levels = parse_levels(obj["levels"], where + ".levels")
            fade = obj.get("fade_ms", 0)
            if type(fade) is not int or not 0 <= fade <= MAX_FADE_MS:
                raise TimelineError(f"{where}.fade_ms: fade_ms must be an integer 0..{MAX_FADE_MS}, not {fade!r}")
            self.scenes[sid] = Scene(sid, levels, fade)
        d = data.get("default")
        if d is None:
            self.default = Scene(None, OFF)
        elif type(d) is str and d in self.scenes:
            self.default = self.scenes[d]
        else:
            raise TimelineError(f"default: unknown scene {d!r}")
        ws = data.get("windows", [])
        if type(ws) is not list:
            raise TimelineError("windows: must be a list of [start, end, scene, priority]")
        if len(ws) > MAX_WINDOWS:
            raise TimelineError(f"windows: {len(ws)} windows, at most {MAX_WINDOWS}")
        self.windows: list[tuple[int, int, Scene, int]] = []
        latest: dict[int, int] = {}  # priority -> index of the window with the latest end so far
        prev = None
        for i, w in enumerate(ws):
            where = f"windows[{i}]"
            start, end = _span(w, where)
            if len(w) != 4:
                raise TimelineError(f"{where}: must be [start, end, scene, priority]")
            if type(w[2]) is not str or w[2] not in self.scenes:
                raise TimelineError(f"{where}: unknown scene {w[2]!r}")
            p = _int(w[3], where + " priority")
            if not 0 <= p <= MAX_PRIORITY:
                raise TimelineError(f"{where}: priority must be 0..{MAX_PRIORITY}, not {p}")
            if prev is not None and start < prev:
                raise TimelineError(f"windows[{i}] (start {start}) comes before windows[{i - 1}] (start {prev}): "
                                    "windows must be sorted by start")
            j = latest.get(p)
            if j is not None and start < ws[j][1]:
                raise TimelineError(f"windows[{j}] and windows[{i}] overlap at priority {p} "
                                    f"({j} ends at {ws[j][1]}, {i} starts at {start})")
            if j is None or end > ws[j][1]:
                latest[p] = i
            prev = start
            self.windows.append((start, end, self.scenes[w[2]], p))
        self.floor: tuple[int, int, int, int] | None = None
        self.open: list[tuple[int, int]] = []
        fl = data.get("floor")
        if fl is not None:
            if type(fl) is not dict:
                raise TimelineError("floor: must be an object {levels, open}")
            for k in fl:
                if k not in ("levels", "open"):
                    raise TimelineError(f"floor: unknown field {k!r}")
            self.floor = parse_levels(fl.get("levels"), "floor.levels")
            op = fl.get("open")
            if type(op) is not list:
                raise TimelineError("floor.open: must be a list of [start, end] windows")
            if len(op) > MAX_WINDOWS:
                raise TimelineError(f"floor.open: {len(op)} windows, at most {MAX_WINDOWS}")
            for i, w in enumerate(op):
                where = f"floor.open[{i}]"
                span = _span(w, where)
                if len(w) != 2:
                    raise TimelineError(f"{where}: must be [start, end]")
                self.open.append(span)
        self.edges = sorted({t for s, e, _, _ in self.windows for t in (s, e)} | {t for s, e in self.open for t in (s, e)})

    def pick(self, now: float | None) -> Scene:
        """The window's scene at ``now`` (highest priority; the earlier window on a tie), else the default."""
        if not clock_ok(now):
            return self.default
        best, bp = None, -1
        for start, end, scene, p in self.windows:
            if start > now:
                break  # sorted by start
            if now < end and p > bp:
                best, bp = scene, p
        return best if best is not None else self.default

    def floor_on(self, now: float | None) -> bool:
        if self.floor is None:
            return False
        if not clock_ok(now):
            return True
        return any(s <= now < e for s, e in self.open)

    def apply_floor(self, levels: tuple[int, int, int, int], now: float | None) -> tuple[tuple[int, int, int, int], bool]:
        if not self.floor_on(now):
            return levels, False
        return tuple(max(a, b) for a, b in zip(levels, self.floor)), True  # type: ignore[return-value]

    def look(self, now: float | None) -> Look:
        sc = self.pick(now)
        levels, floored = self.apply_floor(sc.levels, now)
        return Look(sc.id, levels, floored, sc.fade_ms)

    def next_edge(self, now: float) -> int | None:
        for t in self.edges:
            if t > now:
                return t
        return None


# ---------------------------------------------------------------- levels -> hardware

@dataclass(frozen=True)
class LampTarget:
    on: bool
    rgb: tuple[int, int, int] | None = None
    level: int | None = None


def lamp_target(levels: tuple[int, int, int, int]) -> LampTarget:
    """(r, g, b, w) for an RGB lamp with a brightness: the colour scaled to full, brightness from the
    brightest output; white alone shows white."""
    r, g, b, _w = levels
    level = max(levels)
    if level == 0:
        return LampTarget(False)
    top = max(r, g, b)
    rgb = (255, 255, 255) if top == 0 else tuple(round(c * 255 / top) for c in (r, g, b))
    return LampTarget(True, rgb, level)  # type: ignore[arg-type]


def relay_target(levels: tuple[int, int, int, int], floored: bool, safety: bool) -> bool:
    """A relay is lit by any output above 0; a safety light also whenever the floor holds."""
    return any(levels) or (safety and floored)


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------- the runner

def light_fields(light: Any) -> dict:
    """``LightTelemetry`` fields a light's driver knows (a lamp its level and colour, a relay on/off)."""
    if hasattr(light, "telemetry_fields"):
        return light.telemetry_fields()
    return {"reachable": light.reachable, "on": light.is_on}


@dataclass
class _Show:
    device: str
    light: Any
    safety: bool
    timeline: Timeline | None = None
    version: int | None = None
    raw: bytes | None = None  # the config as kept on disk
    look: Look | None = None  # what the timeline last asked for
    written: Any = None  # what was last written to the light (a LampTarget or bool), None: unknown
    failed_at: float | None = None
    held: bool = False  # a command set the light: leave it until the look changes
    levels: tuple[int, int, int, int] | None = None  # what a lamp last showed, where a fade starts

    @property
    def scene(self) -> str | None:
        return self.look.scene if self.look is not None else None


class LightShow:
    """Runs the timelines of the agent's hosted lights.

    ``lights``: device id -> driver (a BleLamp or a RelayLight); ``safety``: the ids whose manifest
    marks them ``expect.safety``; ``link``: a FleetLink (emit, set_config_version) or None;
    ``clock``: wall-clock epoch seconds.
    """

    def __init__(self, kit: str, lights: dict[str, Any], data_dir: Path, link: Any = None,
                 safety: set[str] | frozenset[str] = frozenset(), clock: Callable[[], float] = time.time):
        self.kit, self.link, self.clock = kit, link, clock
        self.dir = Path(data_dir)
        self.shows = {d: _Show(d, light, d in safety) for d, light in lights.items()}
        self.refused = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: dict[str, asyncio.Event] = {}

    def path(self, device: str) -> Path:
        return self.dir / f"{self.kit}-{device}-timeline.json"

    # ------------------------------------------------------------ disk

    def load(self) -> None:
        """The timelines kept on disk (a file that no longer loads is run without, and logged)."""
        for d, show in self.shows.items():
            try:
                raw = self.path(d).read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("%s: cannot read its timeline: %s", d, exc)
                continue
            try:
                cfg = Config.model_validate_json(raw)
                show.timeline = Timeline(cfg.data)
            except (ValueError, TimelineError) as exc:
                log.warning("%s: the timeline kept on disk does not load (%s): running without", d, exc)
                continue
            show.version, show.raw = cfg.version, raw
            if self.link is not None:
                self.link.set_config_version(d, cfg.version)
            log.info("%s: timeline version %s from disk", d, cfg.version)

    # ------------------------------------------------------------ config

    def on_config_threadsafe(self, device: str, cfg: Config) -> None:
        """For FleetLink.set_config_handler: from the network thread onto the runner's loop."""
        assert self._loop is not None, "run() first"
        self._loop.call_soon_threadsafe(self.on_config, device, cfg)

    def on_config(self, device: str, cfg: Config) -> tuple[bool, str | None]:
        """A decoded `config`: (True, None) when it now runs (or already did), (False, why) if refused."""
        show = self.shows.get(device)
        if show is None:
            return False, f"{device} is not a light this agent drives"
        raw = cfg.model_dump_json().encode()
        if show.timeline is not None and raw == show.raw:  # the retained copy again, at a reconnect
            return True, f"version {cfg.version} already applied"
        try:
            tl = Timeline(cfg.data)
            self.dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path(device), raw)
        except TimelineError as exc:
            return self._refuse(show, cfg.version, str(exc))
        except OSError as exc:
            return self._refuse(show, cfg.version, f"config: could not keep it on disk ({exc})")
        show.timeline, show.version, show.raw = tl, cfg.version, raw
        show.look = None  # re-evaluate at once: a new timeline takes over from a held command
        if self.link is not None:
            self.link.set_config_version(device, cfg.version)
        log.info("%s: timeline version %s applied", device, cfg.version)
        self._kick(device)
        return True, None

    def _refuse(self, show: _Show, version: int, detail: str) -> tuple[bool, str]:
        self.refused += 1
        log.warning("%s: config version %s refused: %s", show.device, version, detail)
        if self.link is not None:
            self.link.emit(show.device, "event", Event, kind="fault",
                           data={"what": "config", "version": version, "detail": detail[:200]})
        return False, detail

    # ------------------------------------------------------------ commands

    def hold(self, device: str) -> None:
        """A command set ``device`` by hand: keep it until the timeline's answer next changes."""
        show = self.shows.get(device)
        if show is not None:
            show.held = True
            show.written = None  # the light shows the command's look now, not what was written
            show.levels = None  # ... and the next look is cut in, not faded from a guess
            self._kick(device)  # a fade under way stops

    def showing(self, device: str) -> str | None:
        """The scene ``device`` shows, for its telemetry: "manual" while a command holds it (the
        firmware's word), else its timeline's; None for a light without a timeline."""
        show = self.shows.get(device)
        if show is None:
            return None
        return "manual" if show.held else show.scene

    def refresh(self) -> None:
        """Something else drove the lights (the self-test's blink): write each one's look again."""
        for d, show in self.shows.items():
            if not show.held:
                show.written = None
                show.failed_at = None
                self._kick(d)

    # ------------------------------------------------------------ running

    def look(self, device: str, now: float | None = None) -> Look | None:
        show = self.shows[device]
        if show.timeline is None:
            return None
        return show.timeline.look(self.clock() if now is None else now)

    async def power_up(self) -> None:
        """Show what each kept timeline says is on now, at once (before the network is needed)."""
        await asyncio.gather(*(self._step(s) for s in self.shows.values()))

    async def run(self) -> None:
        """Follow the timelines until cancelled: one task per light, so a slow BLE lamp delays no other."""
        self._loop = asyncio.get_running_loop()
        self._wake = {d: asyncio.Event() for d in self.shows}
        await asyncio.gather(*(self._follow(s) for s in self.shows.values()))

    def _kick(self, device: str) -> None:
        ev = self._wake.get(device)
        if ev is not None:
            ev.set()

    async def _follow(self, show: _Show) -> None:
        wake = self._wake[show.device]
        while True:
            wake.clear()
            await self._step(show)
            now = self.clock()
            delay = 1.0 - (now % 1.0) + 0.005  # the next whole second: every window edge is one
            if show.timeline is not None:
                edge = show.timeline.next_edge(now)
                if edge is not None:
                    delay = min(delay, max(0.0, edge - now + 0.005))
            try:
                await asyncio.wait_for(wake.wait(), delay)
            except TimeoutError:
                pass

    async def _step(self, show: _Show) -> None:
        if show.timeline is None:
            return  # no timeline: the light keeps to commands, as before
        look = show.timeline.look(self.clock())
        start = None  # where a fade starts: a lamp that was showing a look (power-up cuts, as the firmware)
        if look != show.look:
            if show.look is not None and look.fade_ms and not _is_relay(show.light):
                start = show.levels
            show.look = look
            show.held = False
        elif show.held:
            return
        target: Any = (relay_target(look.levels, look.floored, show.safety) if _is_relay(show.light)
                       else lamp_target(look.levels))
        if target == show.written:
            return
        if show.written is None and show.failed_at is not None and time.monotonic() - show.failed_at < RETRY_S:
            return
        try:
            if start is not None and start != look.levels:
                if not await self._fade(show, start, look):
                    return  # the look changed under the fade: the next step starts from where it got to
            else:
                await self._write(show, target)
                show.levels = look.levels
        except Exception as exc:  # noqa: BLE001 - an unreachable lamp is retried, never stops the show
            show.written = show.levels = None
            show.failed_at = time.monotonic()
            log.warning("%s: cannot show %s: %s", show.device, look.scene, exc)
            return
        show.failed_at = None
        log.info("%s: scene %s %s", show.device, look.scene, show.written)
        if self.link is not None:
            self.link.emit(show.device, "telemetry", LightTelemetry, **light_fields(show.light),
                           scene=self.showing(show.device))

    async def _fade(self, show: _Show, start: tuple[int, int, int, int], look: Look) -> bool:
        """Step a lamp from ``start`` to ``look`` over its fade_ms. False when something woke the light
        meanwhile (a new timeline, a command): the fade stops where it is."""
        steps = max(1, min(round(look.fade_ms / 1000 / FADE_STEP_S), 4 * 3600))
        wake = self._wake.get(show.device)
        for k in range(1, steps + 1):
            levels = tuple(round(a + (b - a) * k / steps) for a, b in zip(start, look.levels))
            target = lamp_target(levels)  # type: ignore[arg-type]
            if target != show.written:
                await self._write(show, target)
            if show.held:  # a command took the light meanwhile
                return False
            show.levels = levels  # type: ignore[assignment]
            if k < steps:
                if wake is None:
                    await asyncio.sleep(FADE_STEP_S)
                else:
                    try:
                        await asyncio.wait_for(wake.wait(), FADE_STEP_S)
                        return False
                    except TimeoutError:
                        pass
        return True

    async def _write(self, show: _Show, target: Any) -> None:
        light, prev = show.light, show.written
        if isinstance(target, bool):
            await asyncio.to_thread(light.on if target else light.off)
        elif not target.on:
            await light.off()
        else:
            if prev is None or prev.rgb != target.rgb:
                await light.rgb(*target.rgb)
            if prev is None or prev.level != target.level:
                await light.level(target.level)
            if prev is None or not prev.on:
                await light.on()
        show.written = target


def _is_relay(light: Any) -> bool:
    return not hasattr(light, "rgb")
