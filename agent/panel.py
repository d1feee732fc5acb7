"""The kit panel: one push button and one RGB status LED on the Pi (gpiozero).

What the crew sees on the LED (``KitPanel.show(status, code)``):

============  ===================  ==============================================================
status        colour               pattern
============  ===================  ==============================================================
booting       blue                 blinking, 0.5 s on / 0.5 s off (pulsing with ``pwm``): the
                                   agent is starting, or a self-test is running
ready         green                steady
degraded      amber (red + green)  N long blinks (0.7 s on / 0.35 s off), 2 s dark, again: usable,
                                   with a warning; N says which check (table below)
not_ready     red                  N short blinks (0.25 s on / 0.35 s off), 2 s dark, again: fix
                                   before doors open; N says which check
fault         red                  same as not_ready
off           dark                 the agent is shutting down, or stopped (or the Pi is off)
============  ===================  ==============================================================

Without a code (``show("degraded")``), degraded is a slow even blink (1 s on / 1 s off) and not
ready a fast one (0.2 s / 0.2 s). The agent always gives the code after a self-test.

The count of blinks (:data:`agent.readiness.CHECK_CODES`), for the lowest-numbered check among
the problems that set the colour (faults before warnings); ``popkit kit up`` prints every
problem in full:

======  ==========================================================================
blinks  check
======  ==========================================================================
1       the kit's broker / network (the agent has no link to the broker)
2       a door scanner (not online on the kit's broker)
3       a lighting controller (not online on the kit's broker)
4       a printer (paper, cover, cable, power)
5       a power bank (charge, runtime to the event's end, monitor cable or range)
6       a light (relay wiring, Bluetooth lamp out of range)
7       the Pi's clock (behind the last time it knew: no RTC, no internet time)
======  ==========================================================================

Each state also differs by its rhythm (steady, short blinks, long blinks, even blinks), so a crew
member who cannot tell green from amber or red can still read it. ``ready``, ``degraded`` and
``not_ready`` are the values of :func:`agent.readiness.status_of`, so
``panel.show(status_of(problems), blink_code(problems, roles))`` works.

What the crew does with the button:

* **press** (released before ``hold_time``): ``on_press()``, where the agent runs the power-up
  self-test again. The press is reported on release, since only then is it known not to be a hold.
* **hold** for ``hold_time`` (3 s by default): ``on_hold()`` as soon as the time is reached, where
  the agent shuts down safely (flushes its outbox, then powers the Pi off through a callable it
  was given, e.g. one running ``systemctl poweroff``). The panel itself never shells out.

A press never also fires a hold, nor a hold a press: one small state machine under a lock decides
which, even when the release and the hold timer race.

Threads: gpiozero calls back from its own threads (the pin's edge thread and the hold timer).
Pass ``loop=`` (the agent's asyncio loop) and the callbacks run on that loop instead, through
``loop.call_soon_threadsafe``; an ``async def`` callback is scheduled there as a task. Without a
loop they run in gpiozero's thread, and must be quick and thread-safe.

The pin factory is passed in (gpiozero's ``pin_factory=``); see
:func:`agent.drivers.relay.open_pin_factory`. gpiozero is imported only when a panel is built.
Wiring: the button between its GPIO and ground (the internal pull-up is used); a common-cathode
RGB LED with a resistor per colour (``active_high=False`` for a common-anode one).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

Color = tuple[float, float, float]
BLUE: Color = (0, 0, 1)
GREEN: Color = (0, 1, 0)
AMBER: Color = (1, 1, 0)
RED: Color = (1, 0, 0)
DARK: Color = (0, 0, 0)

# status -> (colour, on seconds, off seconds); off = 0 means steady.
PATTERNS: dict[str, tuple[Color, float, float]] = {
    "booting": (BLUE, 0.5, 0.5),
    "ready": (GREEN, 0.0, 0.0),
    "degraded": (AMBER, 1.0, 1.0),
    "not_ready": (RED, 0.2, 0.2),
    "fault": (RED, 0.2, 0.2),
    "off": (DARK, 0.0, 0.0),
}
# status -> (on seconds, off seconds) of each blink of a code; then CODE_PAUSE_S dark.
CODE_BLINKS: dict[str, tuple[float, float]] = {
    "degraded": (0.7, 0.35),
    "not_ready": (0.25, 0.35),
    "fault": (0.25, 0.35),
}
CODE_PAUSE_S = 2.0
MAX_CODE = 9  # more blinks than this nobody counts reliably
_COLOUR_NAMES = {BLUE: "blue", GREEN: "green", AMBER: "amber", RED: "red", DARK: "dark"}


def describe(status: str, code: int | None = None) -> str:
    """The LED in words, for the terminal: what the crew will see on the panel."""
    from agent.readiness import CHECK_CODES

    color, _on, off = PATTERNS[status]
    if code is not None and status in CODE_BLINKS:
        kind = "long" if status == "degraded" else "short"
        what = CHECK_CODES.get(code, ("", "?"))[1]
        return f"{_COLOUR_NAMES[color]}, {code} {kind} blink{'s' if code > 1 else ''} then a pause: {what}"
    return f"{_COLOUR_NAMES[color]}, {'blinking' if off else 'steady'}"

_IDLE, _DOWN, _HELD = "idle", "down", "held"


class KitPanel:
    """The button and the status LED of one kit. ``pins`` holds BCM numbers for button, red, green, blue."""

    def __init__(self, pins: Mapping[str, int], pin_factory: Any, on_press: Callable[[], Any],
                 on_hold: Callable[[], Any], hold_time: float = 3.0, *,
                 loop: asyncio.AbstractEventLoop | None = None, bounce_time: float | None = 0.05,
                 pwm: bool = False, active_high: bool = True):
        from gpiozero import Button, RGBLED

        missing = [n for n in ("button", "red", "green", "blue") if n not in pins]
        if missing:
            raise ValueError(f"panel pins: missing {', '.join(missing)}")
        self._on_press = on_press
        self._on_hold = on_hold
        self._loop = loop
        self._pwm = pwm
        self._lock = threading.Lock()  # the button's state machine
        self._led_lock = threading.Lock()
        self._phase = _IDLE
        self.status: str | None = None
        self.code: int | None = None
        self._code_stop: threading.Event | None = None  # the running blink code's thread, when one runs
        self._code_thread: threading.Thread | None = None
        self.led = RGBLED(pins["red"], pins["green"], pins["blue"], active_high=active_high,
                          pwm=pwm, pin_factory=pin_factory)
        try:
            self.button = Button(pins["button"], pull_up=True, bounce_time=bounce_time,
                                 hold_time=hold_time, pin_factory=pin_factory)
        except Exception:
            self.led.close()
            raise
        self.button.when_pressed = self._pressed
        self.button.when_held = self._held
        self.button.when_released = self._released

    @classmethod
    def from_spec(cls, spec: Any, pin_factory: Any, on_press: Callable[[], Any], on_hold: Callable[[], Any],
                  **kwargs: Any) -> "KitPanel":
        """A panel from its manifest entry (role ``panel``, ``pins = {button, red, green, blue}``)."""
        return cls(spec.pins or {}, pin_factory, on_press, on_hold, **kwargs)

    # ------------------------------------------------------------ the LED

    def show(self, status: str, code: int | None = None) -> None:
        """Show a status, and for degraded or not ready the check to look at as a count of blinks
        (see the tables in the module docstring); unknown ones raise ValueError."""
        if status not in PATTERNS:
            raise ValueError(f"unknown panel status {status!r}; one of {', '.join(PATTERNS)}")
        if code is not None and (status not in CODE_BLINKS or not 1 <= code <= MAX_CODE):
            raise ValueError(f"panel: no blink code {code!r} for {status!r} (1..{MAX_CODE}, degraded or not ready)")
        color, on_s, off_s = PATTERNS[status]
        with self._led_lock:
            self._stop_code()
            self.status, self.code = status, code
            if code is not None:
                self._start_code(color, code, *CODE_BLINKS[status])
            elif not off_s:
                self.led.color = color  # setting a value stops any blink in progress
            elif status == "booting" and self._pwm:
                self.led.pulse(fade_in_time=on_s, fade_out_time=off_s, on_color=color)
            else:
                self.led.blink(on_time=on_s, off_time=off_s, on_color=color)

    def _start_code(self, color: Color, n: int, on_s: float, off_s: float) -> None:
        # gpiozero's blink() repeats one on/off pair; a code needs n of them and a pause, so it
        # runs in a thread of ours, stopped (and joined) before anything else is shown.
        stop = threading.Event()

        def run() -> None:
            while True:
                for _ in range(n):
                    self.led.color = color
                    if stop.wait(on_s):
                        return
                    self.led.color = DARK
                    if stop.wait(off_s):
                        return
                if stop.wait(CODE_PAUSE_S):
                    return

        self._code_stop = stop
        self._code_thread = threading.Thread(target=run, name="panel-code", daemon=True)
        self._code_thread.start()

    def _stop_code(self) -> None:
        if self._code_thread is not None:
            self._code_stop.set()
            self._code_thread.join()
            self._code_thread = self._code_stop = None

    # ------------------------------------------------------------ the button (gpiozero threads)

    def _pressed(self) -> None:
        with self._lock:
            self._phase = _DOWN

    def _held(self) -> None:
        with self._lock:
            if self._phase != _DOWN:  # released already (a press), or this hold already fired
                return
            self._phase = _HELD
        log.info("panel: button held, shutting down")
        self._dispatch(self._on_hold)

    def _released(self) -> None:
        with self._lock:
            was, self._phase = self._phase, _IDLE
        if was == _DOWN:
            log.info("panel: button pressed, self-test")
            self._dispatch(self._on_press)

    def _dispatch(self, callback: Callable[[], Any]) -> None:
        if self._loop is None:
            self._call(callback)
        elif asyncio.iscoroutinefunction(callback):
            asyncio.run_coroutine_threadsafe(callback(), self._loop)
        else:
            self._loop.call_soon_threadsafe(self._call, callback)

    @staticmethod
    def _call(callback: Callable[[], Any]) -> None:
        try:
            callback()
        except Exception:  # noqa: BLE001 - a failing handler must not kill gpiozero's thread
            log.exception("panel: %s failed", getattr(callback, "__name__", callback))

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Release the pins (the LED goes dark)."""
        with self._led_lock:
            self._stop_code()
        self.button.close()
        self.led.close()

    def __enter__(self) -> "KitPanel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
