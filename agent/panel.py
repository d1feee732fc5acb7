"""The kit panel: one push button and one RGB status LED on the Pi (gpiozero).

What the crew sees on the LED (``KitPanel.show(status)``):

============  ==========================  ======================================================
status        colour                      pattern
============  ==========================  ======================================================
booting       blue                        blinking, 0.5 s on / 0.5 s off (pulsing with ``pwm``)
ready         green                       steady
degraded      amber (red + green)         slow blink, 1 s on / 1 s off
not_ready     red                         fast blink, 0.2 s on / 0.2 s off
fault         red                         same as not_ready
off           dark                        (the agent is shutting down, or stopped)
============  ==========================  ======================================================

Each state also differs by its rhythm (steady, slow, medium, fast), so a crew member who cannot
tell green from amber or red can still read it. ``ready``, ``degraded`` and ``not_ready`` are
the values of :func:`agent.readiness.status_of`, so ``panel.show(status_of(problems))`` works.

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

    def show(self, status: str) -> None:
        """Show a status (see the table in the module docstring); unknown ones raise ValueError."""
        if status not in PATTERNS:
            raise ValueError(f"unknown panel status {status!r}; one of {', '.join(PATTERNS)}")
        color, on_s, off_s = PATTERNS[status]
        with self._led_lock:
            self.status = status
            if not off_s:
                self.led.color = color  # setting a value stops any blink in progress
            elif status == "booting" and self._pwm:
                self.led.pulse(fade_in_time=on_s, fade_out_time=off_s, on_color=color)
            else:
                self.led.blink(on_time=on_s, off_time=off_s, on_color=color)

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
        self.button.close()
        self.led.close()

    def __enter__(self) -> "KitPanel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
