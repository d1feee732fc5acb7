"""The agent's hosted lights following their compiled lighting timeline (docs/lighting-timeline.md).

The fleet compiles a venue's lighting schedule into a per-device "format 1" timeline and pushes
it as the device's retained ``config``; the ESP32 controller runs it on its own clock
(device/lib/timeline.py, device/lib/lighting.py) and so, here, does the agent for the lights it
hosts (BLE lamps, relays), with the firmware's own timeline code (loaded through
agent/firmware_lib.py, not copied) and the same rules:

* a config is validated by the firmware's parser (so with its messages); a refused one changes
  nothing and is reported as a ``fault`` event ``{"what": "config", "version", "detail"}``;
* an accepted one is kept on disk (written atomically) and its version goes into the device's
  retained ``state`` as ``config_version``; an agent started with no broker shows, at once,
  what the kept timeline says is on now;
* "what is on now" is the firmware's answer, asked every second (window edges are whole seconds)
  with the wall clock: the highest-priority window holding now, else ``default``, else off; the
  safety floor raises each output to at least its level while the venue is open (and while the
  clock is not set: lit exits are the safe failure);
* a ``set``/``identify`` command's look holds until the timeline's answer next changes;
* hardware is written only when the target changes (BLE is slow). DMX levels are validated and
  ignored: the agent drives no universe. A lamp fades to a new look in steps (``FADE_STEP_S``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.firmware_lib import timeline as firmware
from kits.contract import Config, Event, LightTelemetry
from plumbing.files import write_atomic

log = logging.getLogger("popkit.agent.lightshow")

TimelineError = firmware.TimelineError
DMX_SLOTS = 512  # the agent drives no universe: runs are checked against a full one, then ignored
# A lamp fades in steps: each is one or two BLE writes, and 4 a second keep well inside what an
# ELK-BLEDOM takes (the firmware steps its PWM every 10 ms; a relay only switches).
FADE_STEP_S = 0.25
RETRY_S = 5.0  # a light whose write failed (BLE lamp out of range) is tried again this often


# ---------------------------------------------------------------- the timeline: the firmware's

def parse_timeline(data: Any) -> Any:
    """A config's ``data`` as the firmware's own Timeline (agent/firmware_lib.py), which reads JSON
    text. Raises TimelineError with the controller's message for one it would refuse."""
    return firmware.Timeline(json.dumps(data, separators=(",", ":")), DMX_SLOTS)


@dataclass(frozen=True)
class Look:
    """What the timeline says is on: the scene, and its levels with the floor applied."""

    scene: str | None  # None: outside every window with no default (everything off)
    levels: tuple[int, int, int, int]  # r, g, b, w (DMX slots dropped)
    floored: bool
    fade_ms: int = 0  # the scene's: how long a change to this look takes on a lamp


def look_at(tl: Any, now: float | None) -> Look:
    """The firmware's answer at ``now`` (epoch s, None: no clock), copied out of the scene it hands
    back (with the floor on, one buffer it refills on each call)."""
    sc = tl.active(now)
    return Look(sc.id, tuple(sc.levels[:4]), sc.floored, sc.fade_ms)  # type: ignore[arg-type]


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
    timeline: Any = None  # the firmware's Timeline
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
                show.timeline = parse_timeline(cfg.data)
            except ValueError as exc:  # the contract's, or TimelineError
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
            tl = parse_timeline(cfg.data)
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
        return look_at(show.timeline, self.clock() if now is None else now)

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
            await _woken(wake, delay)

    async def _step(self, show: _Show) -> None:
        if show.timeline is None:
            return  # no timeline: the light keeps to commands, as before
        look = look_at(show.timeline, self.clock())
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
                    if await _woken(wake, FADE_STEP_S):
                        return False
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


async def _woken(wake: asyncio.Event, timeout_s: float) -> bool:
    """Wait for ``wake`` at most ``timeout_s``: True if it was set. Not asyncio.wait_for: on 3.11 it
    swallows a cancel that lands as the event is set (the agent stopping just after its self-test
    refreshed the lights), and the light's loop then runs on, so the agent never exits."""
    try:
        async with asyncio.timeout(timeout_s):
            await wake.wait()
        return True
    except TimeoutError:
        return False


def _is_relay(light: Any) -> bool:
    return not hasattr(light, "rgb")
