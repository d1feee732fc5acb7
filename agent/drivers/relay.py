"""Relay channels on the Pi's GPIO (gpiozero): floodlights and other on/off lights.

One :class:`RelayLight` drives one relay channel through a gpiozero ``OutputDevice``. The
pin factory is always passed in (gpiozero's ``pin_factory=`` argument), never taken from
gpiozero's global: tests hand in ``gpiozero.pins.mock.MockFactory()`` and read
``factory.pin(17).state``; the agent gets its factory from :func:`open_pin_factory`, the one
place that picks a GPIO backend. gpiozero itself is imported inside the functions that need it,
so this module imports on a laptop without it.

Polarity (``active_high``): True when driving the GPIO high lights the lamp. Most opto-isolated
5 V relay modules are *active low* (the input pulled to ground energises the coil), relay HATs
with a transistor driver are active high, and wiring the lamp on the normally-closed (NC)
contact inverts the sense again:

=====================  ==========  ===============
relay board            lamp on     ``active_high``
=====================  ==========  ===============
active-high (HAT)      NO contact  True
active-low (module)    NO contact  False
active-high (HAT)      NC contact  False
active-low (module)    NC contact  True
=====================  ==========  ===============

Power-up and safety lights: from power-on until the agent claims the pin (boot, a crash, a
restart by systemd) the relay does whatever its board does with an unclaimed GPIO: after reset
BCM 0-8 are inputs pulled up and 9-27 inputs pulled down, so an active-low module on GPIO 17
usually sits de-energised, and so does a HAT. When the agent stops, gpiozero releases the pin
and the relay falls back to that state. The agent cannot keep a lamp lit while it is not
running, so **wire an ingress/egress (``expect.safety``) light on the NC contact**: it is lit
whenever the coil is de-energised (Pi off, agent restarting) and the agent only has to energise
the coil to switch it off. A safety light is switched on as soon as the agent claims its pin
(``initial_value``), whatever the wiring, and :meth:`RelayLight.flash` always leaves it on.

What the self-test can know: a relay gives no feedback, so the driver cannot see the lamp (a
blown bulb, an unplugged lead, a dead relay coil all look the same from the GPIO). The
self-test flashes the lamp so a crew member standing there can see it, and reports a problem
only when the GPIO itself fails (the pin cannot be claimed or written, or reads back a different
level than was written).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from agent.errors import DriverError
from agent.readiness import Problem, fault, warning
from kits.contract import LightTelemetry

if TYPE_CHECKING:  # pragma: no cover - types only
    from kits.manifest import DeviceSpec

log = logging.getLogger(__name__)

# Real backends in the order gpiozero itself prefers them (lgpio drives /dev/gpiochip* and works
# on every Pi, including the Pi 5; RPi.GPIO and pigpio for older setups; native as a last resort).
REAL_BACKENDS = ("lgpio", "rpigpio", "pigpio", "native")


class GpioError(DriverError):
    """A GPIO pin could not be claimed or written (wrong pin, pin busy, no GPIO on this machine)."""


class GpioUnavailable(GpioError):
    """No real GPIO backend loads here (a laptop, a container without /dev/gpiochip*)."""


def open_pin_factory(simulate: bool = False, backend: str | None = None) -> Any:
    """The gpiozero pin factory for the agent's relays and panel: the one place a backend is chosen.

    ``simulate=True`` gives gpiozero's ``MockFactory`` with PWM-capable pins, and says so in the
    log. Otherwise ``backend`` (or ``$GPIOZERO_PIN_FACTORY``) names one backend, else the real
    backends are tried in order (:data:`REAL_BACKENDS`). The mock is never picked as a fallback:
    with no GPIO here this raises :class:`GpioUnavailable`, naming each backend's reason.
    """
    if simulate:
        from gpiozero.pins.mock import MockFactory, MockPWMPin

        log.warning("GPIO is simulated (MockFactory): relays and the panel drive no hardware")
        return MockFactory(pin_class=MockPWMPin)
    from importlib.metadata import entry_points

    name = backend or os.environ.get("GPIOZERO_PIN_FACTORY")
    available = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    names = (name.lower(),) if name else REAL_BACKENDS
    reasons = []
    for n in names:
        if n not in available:
            reasons.append(f"{n}: not a gpiozero pin factory")
            continue
        try:
            factory = available[n].load()()
        except Exception as exc:  # noqa: BLE001 - each backend fails its own way (ImportError, OSError, ...)
            reasons.append(f"{n}: {exc}")
            continue
        if n == "mock":
            log.warning("GPIO is simulated (GPIOZERO_PIN_FACTORY=mock): relays and the panel drive no hardware")
        else:
            log.info("GPIO backend: %s", n)
        return factory
    raise GpioUnavailable("no GPIO backend loads here (" + "; ".join(reasons) + "); on a laptop use --simulate")


class RelayLight:
    """One relay channel: a light that is either on or off.

    ``pin`` is a BCM number; ``pin_factory`` a gpiozero pin factory (see the module docstring
    for ``active_high`` and why a safety light starts on). ``initial_on`` overrides the start
    state (default: on for a safety light, off otherwise). Every method is thread-safe; a
    :meth:`flash` in progress holds the light, so an ``on()`` arriving meanwhile applies after it.
    """

    def __init__(self, device_id: str, pin: int, pin_factory: Any, *, active_high: bool = True,
                 safety: bool = False, initial_on: bool | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        from gpiozero import GPIOZeroError, OutputDevice

        self.device_id = device_id
        self.pin = pin
        self.safety = safety
        self._sleep = sleep
        self._lock = threading.RLock()
        self._reachable = True
        start_on = safety if initial_on is None else initial_on
        try:
            self._out = OutputDevice(pin, active_high=active_high, initial_value=start_on, pin_factory=pin_factory)
        except (GPIOZeroError, OSError) as exc:
            raise GpioError(f"{device_id}: cannot claim GPIO {pin}: {exc}") from exc
        self._on = start_on

    @classmethod
    def from_spec(cls, spec: "DeviceSpec", pin_factory: Any) -> "RelayLight":
        """A relay light from its manifest entry (role ``light``, bus ``gpio:<BCM pin>``, ``active_high``)."""
        if spec.role != "light" or spec.bus_kind != "gpio":
            raise ValueError(f"{spec.id}: a relay light needs role light on bus gpio:<pin>, not {spec.role} {spec.bus}")
        return cls(spec.id, int(spec.address), pin_factory, active_high=spec.active_high, safety=spec.expect.safety)

    # ------------------------------------------------------------ switching

    @property
    def is_on(self) -> bool:
        """What the agent last switched the lamp to (a relay cannot report the lamp itself)."""
        return self._on

    @property
    def reachable(self) -> bool:
        """False after the GPIO failed, until a write succeeds again."""
        return self._reachable

    def on(self) -> None:
        self._set(True)

    def off(self) -> None:
        if self.safety:
            log.info("%s: safety light switched off", self.device_id)
        self._set(False)

    def toggle(self) -> None:
        with self._lock:
            self._set(not self._on)

    def flash(self, times: int = 3, period_s: float = 0.6) -> None:
        """Blink ``times`` times (``period_s`` per blink) so the crew can spot this light; blocks.

        The lamp inverts for half a period and comes back, so a lit floodlight dips and a dark
        one winks. Afterwards the light returns to its state before the flash, except a safety
        light, which is always left on (even if it was off, and even if a write failed midway:
        the last write is always "on"). Run it in a thread from asyncio (``asyncio.to_thread``).
        """
        if times < 0 or period_s <= 0:
            raise ValueError("flash needs times >= 0 and period_s > 0")
        with self._lock:
            end_on = True if self.safety else self._on
            try:
                for _ in range(times):
                    self._set(not self._on)
                    self._sleep(period_s / 2)
                    self._set(not self._on)
                    self._sleep(period_s / 2)
            finally:
                self._set(end_on)

    def _set(self, on: bool) -> None:
        from gpiozero import GPIOZeroError

        with self._lock:
            try:
                self._out.value = on
            except (GPIOZeroError, OSError) as exc:
                self._reachable = False
                raise GpioError(f"{self.device_id}: cannot write GPIO {self.pin}: {exc}") from exc
            self._on = on
            self._reachable = True

    # ------------------------------------------------------------ reporting

    def telemetry(self, boot: str, seq: int, ts: int) -> LightTelemetry:
        """The light's state for the fleet: reachable and on/off (no level or colour on a relay)."""
        return LightTelemetry(boot=boot, seq=seq, ts=ts, reachable=self._reachable, on=self._on)

    def self_test(self, device_id: str | None = None, times: int = 2, period_s: float = 0.6) -> list[Problem]:
        """Flash the lamp and check the GPIO; a Problem only when the GPIO fails.

        The lamp itself cannot be checked (see the module docstring): the crew sees the flash.
        A failing safety light is a fault (doors must not open with the exit light in doubt);
        any other light a warning.
        """
        device_id = device_id or self.device_id
        problem = fault if self.safety else warning
        try:
            self.flash(times, period_s)
            level = self._out.value
        except GpioError as exc:
            return [problem(device_id, f"relay on GPIO {self.pin} failed ({exc.__cause__ or exc})"[:120],
                            "check the relay board's cable and power, and the pin in the kit manifest")]
        if bool(level) != self._on:
            return [problem(device_id, f"GPIO {self.pin} reads back {int(bool(level))} after writing {int(self._on)}",
                            "another program may drive this pin; check the manifest's pins")]
        return []

    def close(self) -> None:
        """Release the pin; the relay falls back to its board's unclaimed state (see the module docstring)."""
        with self._lock:
            self._out.close()

    def __enter__(self) -> "RelayLight":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RelayLight({self.device_id!r}, gpio={self.pin}, on={self._on}, safety={self.safety})"
