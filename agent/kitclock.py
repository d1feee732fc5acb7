"""The kit's clock: where the Pi's time comes from, and the time it serves to the kit's ESP32s.

At a venue with no uplink the ESP32s have no internet time, so the kit's Pi is the kit's clock
(kits/contract.py, ``KitTime``). Rules that shape this module:

* **Where the Pi's time comes from** (``src``): ``ntp`` when the kernel says its clock is
  synchronised (adjtimex: STA_UNSYNC clear; chrony sets it while it disciplines the clock);
  ``rtc`` when a real-time clock (``/dev/rtc0``, e.g. a DS3231) holds a plausible time that the
  system clock agrees with (it was read at boot); else ``last_known``. Only the first two are
  ``synced``.
* **The last known time** is kept on disk in the agent's data folder (as fake-hwclock does),
  saved every ``save_every_s`` and at stop. A Pi with no RTC that boots with no uplink may start
  with its clock behind that (fake-hwclock restores only what it saved, at most an hour old; with
  no fake-hwclock, 1970). The agent cannot set the system clock (it is not root), so it says so
  (a log line, its readiness problem, ``clock: "unset"`` in its own state) and serves the last
  known time plus the time elapsed since it started, so the kit's clock never runs backwards.
  Once the kernel reports a synchronised clock (the uplink came back) that wins.
* **Serving time**: ``popkit/v1/<kit>/time``, QoS 0, never retained (a queued time is wrong when
  it arrives), every ``period_s`` (10 s) and at once when a device's birth ``state`` is seen (the
  agent's :class:`agent.statewatch.StateWatch` tells us: one watcher of the kit's states, not two).
  It is only sent while connected: paho drops a QoS 0 publish it cannot send, as it must.
* **Hardware behind a thin interface**: :class:`ClockHardware` is every read of the machine (the
  system clock, the kernel's sync flag, the RTC). Tests hand :class:`KitClock` a fake one.

The agent's own ``state`` carries its clock (``synced``, ``kit`` on its last known time, ``unset``
while the system clock is behind the last known time: its own timestamps are wrong then).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from agent.kitsession import KitSession
from agent.readiness import Problem, warning
from kits.contract import ClockState, KitTime, State, encode, time_topic
from plumbing.mqtt import redacted

log = logging.getLogger("popkit.agent.kitclock")

Source = Literal["ntp", "rtc", "last_known"]

PERIOD_S = 10.0  # AgentSettings.time_period_s
SAVE_EVERY_S = 60.0  # the last known time on disk is at most this old (fake-hwclock: an hour)
RTC_AGREES_S = 5.0  # an RTC this close to the system clock is what set it at boot
SYNC_CACHE_S = 30.0  # timedatectl (the fallback) runs at most this often
RTC_SYSFS = Path("/sys/class/rtc/rtc0/since_epoch")  # seconds, read from /dev/rtc0 by the kernel
STA_UNSYNC = 0x0040  # <linux/timex.h>: the kernel's clock is not synchronised
# Before this (2025-01-01) the Pi has no time at all (a first boot with no RTC and no uplink reads
# 1970, or the image's build date): nothing is served, so devices stay `unset` and say so, rather
# than take a time that would make every ticket look not yet valid.
PLAUSIBLE_AFTER_MS = 1_735_689_600_000


# ---------------------------------------------------------------- the machine's clock parts


class ClockHardware:
    """Every read of the machine's clock parts. A backend overrides what it has; a test's fake
    overrides all four. ``kernel_synced`` and ``rtc_seconds`` answer None when they cannot tell."""

    def now(self) -> float:
        """The system clock, seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def kernel_synced(self) -> bool | None:
        return None

    def rtc_seconds(self) -> float | None:
        return None


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    """glibc's ``struct timex`` (adjtimex(2)); only ``status`` is read."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time", _Timeval), ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_reserved", ctypes.c_int * 11)]


class SystemClock(ClockHardware):
    """The Pi's own: adjtimex(2) through ctypes (modes 0 only reads, allowed to any user), else
    ``timedatectl show -p NTPSynchronized``; the RTC through sysfs (no /dev/rtc0 ioctl, no root)."""

    def __init__(self, rtc_sysfs: Path = RTC_SYSFS):
        self.rtc_sysfs = rtc_sysfs
        self._adjtimex = self._load_adjtimex()
        self._timedatectl: tuple[float, bool | None] | None = None  # (when asked, answer)

    @staticmethod
    def _load_adjtimex():
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            fn = libc.adjtimex
        except (OSError, AttributeError):
            return None
        fn.argtypes = [ctypes.POINTER(_Timex)]
        fn.restype = ctypes.c_int
        return fn

    def kernel_synced(self) -> bool | None:
        if self._adjtimex is not None:
            tx = _Timex()  # modes 0: read only
            if self._adjtimex(ctypes.byref(tx)) >= 0:
                return not tx.status & STA_UNSYNC
        return self._ask_timedatectl()

    def _ask_timedatectl(self) -> bool | None:
        now = time.monotonic()
        if self._timedatectl is not None and now - self._timedatectl[0] < SYNC_CACHE_S:
            return self._timedatectl[1]
        try:
            out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"], capture_output=True,
                                 text=True, timeout=5)
            answer = {"yes": True, "no": False}.get(out.stdout.strip()) if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            answer = None
        self._timedatectl = (now, answer)
        return answer

    def rtc_seconds(self) -> float | None:
        try:
            return float(self.rtc_sysfs.read_text().strip())
        except (OSError, ValueError):
            return None  # no RTC (a Pi without a module), or one that does not answer


# ---------------------------------------------------------------- the kit's clock


@dataclass(frozen=True)
class ClockReading:
    ts: int  # the kit's time, ms since the epoch
    src: Source
    synced: bool
    state: ClockState  # the agent's own clock, for its state: synced | kit | unset

    def message(self) -> KitTime:
        return KitTime(ts=self.ts, src=self.src, synced=self.synced)


class KitClock:
    """The kit's time from ``hw`` and the last known time kept at ``path`` (a small JSON file)."""

    def __init__(self, path: Path, hw: ClockHardware | None = None, save_every_s: float = SAVE_EVERY_S):
        self.path = Path(path)
        self.hw = hw or SystemClock()
        self.save_every_s = save_every_s
        self.last_known_ms = self._load()
        self._lock = threading.Lock()
        self._saved_at: float | None = None
        # Started behind the last known time: serve that plus what elapsed since (monotonic), until
        # the kernel says the clock is synchronised.
        self.behind_ms = 0
        self._anchor: tuple[int, float] | None = None
        sys_ms = int(self.hw.now() * 1000)
        if self.last_known_ms is not None and sys_ms < self.last_known_ms:
            self.behind_ms = self.last_known_ms - sys_ms
            self._anchor = (self.last_known_ms, self.hw.monotonic())
            log.warning("the system clock (%s) is %.0f s behind the last time this kit knew (%s): no real-time "
                        "clock and no internet time. Serving the last known time until it syncs; fit an RTC "
                        "module (docs/kit-clock.md)", _iso(sys_ms), self.behind_ms / 1000, _iso(self.last_known_ms))

    def _load(self) -> int | None:
        try:
            ms = int(json.loads(self.path.read_text())["ts"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable last known time (%s): starting without one", self.path, exc)
            return None
        return ms if ms > 0 else None

    def read(self) -> ClockReading:
        """The kit's time now, where it comes from, and the agent's own clock state."""
        sys_ms = int(self.hw.now() * 1000)
        synced = self.hw.kernel_synced()
        with self._lock:
            if synced:
                if self._anchor is not None:
                    log.info("the system clock is synchronised now (%s): serving it", _iso(sys_ms))
                self._anchor, self.behind_ms = None, 0
                return ClockReading(sys_ms, "ntp", True, "synced")
            if self._anchor is None and self._rtc_agrees(sys_ms):
                return ClockReading(sys_ms, "rtc", True, "synced")
            if self._anchor is not None:
                base, mono = self._anchor
                kit_ms = base + int((self.hw.monotonic() - mono) * 1000)
                if sys_ms < kit_ms:
                    return ClockReading(kit_ms, "last_known", False, "unset")
                self._anchor, self.behind_ms = None, 0  # someone set the clock (by hand, or an RTC late)
            return ClockReading(sys_ms, "last_known", False, "kit" if sys_ms >= PLAUSIBLE_AFTER_MS else "unset")

    def _rtc_agrees(self, sys_ms: int) -> bool:
        """An RTC holds a plausible time (not behind the last known: a flat coin cell resets it to
        2000) and the system clock agrees with it: it was read at boot, the clock is the RTC's."""
        rtc = self.hw.rtc_seconds()
        if rtc is None:
            return False
        rtc_ms = int(rtc * 1000)
        if self.last_known_ms is not None and rtc_ms < self.last_known_ms - int(RTC_AGREES_S * 1000):
            return False
        return abs(rtc_ms - sys_ms) <= RTC_AGREES_S * 1000

    def save(self, reading: ClockReading | None = None) -> None:
        """Keep the time now as the last known (never moving it backwards), atomically."""
        reading = reading or self.read()
        if reading.ts < PLAUSIBLE_AFTER_MS:
            return  # no time at all is not worth keeping
        with self._lock:
            if self.last_known_ms is not None and reading.ts <= self.last_known_ms:
                return
            self.last_known_ms = reading.ts
            self._saved_at = self.hw.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"ts": reading.ts, "src": reading.src}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def save_due(self, reading: ClockReading) -> None:
        """``save`` once every ``save_every_s`` (an SD card need not be written every 10 s)."""
        if self._saved_at is None or self.hw.monotonic() - self._saved_at >= self.save_every_s:
            self.save(reading)


def clock_problem(device: str, clock: str | None) -> Problem | None:
    """The self-test's word on the kit's time, from the agent's clock state (FleetLink.clock): the
    link step adds it, so ``popkit kit up`` and the panel say it beside the link's state."""
    if clock == "unset":
        return warning(device, "the Pi's clock is behind the last time it knew (no RTC, no internet time): "
                       "the kit serves its last known time", "connect the uplink, or fit an RTC module")
    return None  # `kit` (free-running, unverified) is said in the state and the log, not held against the kit


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


# ---------------------------------------------------------------- serving it on the kit broker


class TimePublisher(KitSession):
    """Publishes the kit's time on ``popkit/v1/<kit>/time`` every ``period_s``, and at once on
    ``kick()`` (a device's birth). One thread of its own; its own MQTT connection (the agent's account)."""

    def __init__(self, kit: str, mqtt_url: str, clock: KitClock, period_s: float = PERIOD_S,
                 on_reading: Callable[[ClockReading], None] | None = None):
        self.kit, self.clock, self.period_s = kit, clock, period_s
        self.topic = time_topic(kit)
        self.on_reading = on_reading  # the agent's state follows its clock (FleetLink.set_clock)
        self.sent = 0
        self._implausible_logged = False
        self.connected = threading.Event()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self.mqtt_url = redacted(mqtt_url)
        self._open(mqtt_url, f"{kit}-time-{secrets.token_hex(3)}")
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *_: self.connected.clear()
        self._thread = threading.Thread(target=self._run, name="kit-time", daemon=True)

    def start(self) -> "TimePublisher":
        super().start()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        self._thread.join(5)
        super().stop()

    def kick(self) -> None:
        """Publish now (from any thread); kicks that come together make one message."""
        self._kick.set()

    def on_state(self, device: str, state: State) -> None:
        """A StateWatch listener: a device just came online (its birth), so it may have no time yet."""
        if state.online and state.reason == "birth":
            self.kick()

    def _on_connect(self, _client, _userdata, _flags, reason_code, _props=None) -> None:
        if getattr(reason_code, "is_failure", False):
            log.error("kit time: broker %s refused the connection: %s", self.mqtt_url, reason_code)
            return
        self.connected.set()
        self.kick()  # whoever is waiting for time gets it at once

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.publish_once()
            except Exception:  # noqa: BLE001 - a bad read must not end the kit's clock
                log.exception("kit time: publishing failed")
            self._kick.wait(self.period_s)
            self._kick.clear()
        try:
            self.clock.save()
        except OSError as exc:
            log.warning("kit time: could not keep the last known time: %s", exc)

    def publish_once(self) -> ClockReading:
        reading = self.clock.read()
        if reading.ts < PLAUSIBLE_AFTER_MS:
            if not self._implausible_logged:
                log.warning("kit time: the Pi's clock reads %s and it knows no later time: serving no time "
                            "(connect the uplink, or fit an RTC module)", _iso(reading.ts))
                self._implausible_logged = True
        elif self.connected.is_set():
            # Read just before sending: the ts is the time the message leaves.
            info = self._client.publish(self.topic, encode(reading.message()), qos=0, retain=False)
            if info.rc == 0:
                self.sent += 1
        if self.on_reading is not None:
            self.on_reading(reading)
        try:
            self.clock.save_due(reading)
        except OSError as exc:
            log.warning("kit time: could not keep the last known time in %s: %s", self.clock.path, exc)
        return reading


class KitClockService:
    """The kit clock as the daemon runs it: the clock, its publisher, the agent's state following
    its clock, and births from the state watcher. ``start_kit_clock`` builds and starts one."""

    def __init__(self, kit: str, mqtt_url: str, data: Path, link: Any = None, watch: Any = None,
                 period_s: float = PERIOD_S, hw: ClockHardware | None = None):
        self.clock = KitClock(Path(data) / f"{kit}-clock.json", hw)
        self.link = link
        self.publisher = TimePublisher(kit, mqtt_url, self.clock, period_s, on_reading=self._follow)
        self.watch = watch
        if link is not None:
            self._follow(self.clock.read())  # before the link's first birth, if it has not connected yet

    def _follow(self, reading: ClockReading) -> None:
        if self.link is not None and hasattr(self.link, "set_clock"):
            self.link.set_clock(reading.state)

    def start(self) -> "KitClockService":
        if self.watch is not None:
            self.watch.listeners.append(self.publisher.on_state)
        self.publisher.start()
        return self

    def stop(self) -> None:
        if self.watch is not None and self.publisher.on_state in self.watch.listeners:
            self.watch.listeners.remove(self.publisher.on_state)
        self.publisher.stop()


def start_kit_clock(kit: str, settings: Any, data: Path, link: Any = None, watch: Any = None) -> KitClockService:
    """The daemon's hook: serve the kit's time from this Pi for as long as the agent runs."""
    return KitClockService(kit, settings.mqtt_url, data, link, watch, period_s=settings.time_period_s).start()
