"""BLE lamps of the ELK-BLEDOM family ("duoCo Strip", "Lotus Lamp" apps), through bleak.

Cheap RGB strips, bulbs and desk lamps sold under many brands advertise as ``ELK-BLEDOM``
and take 9-byte commands written to characteristic 0xFFF3 of service 0xFFF0
(docs/ble-lamp.md has the protocol, its sources and how sure we are of each frame):

    power    7E 00 04 F0 00 01 FF 00 EF  (on)    7E 00 04 00 00 00 FF 00 EF  (off)
    colour   7E 00 05 03 RR GG BB 00 EF
    level    7E 00 01 PP 00 00 00 00 EF   PP = brightness 0..100 (0x64)

The lamp never reports its state, so :class:`BleLamp` remembers what it last set and sends
the whole state again after every new connection (a lamp that was power-cycled or out of
range comes back showing what the crew set, not its own default). Commands given while the
lamp is unreachable still update that state and raise :class:`LampUnreachable`; the next
successful connection (a later command or ``refresh()``) applies it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from agent.drivers.ble import Backoff, BleError, BleLink, BleLinkLost, uuid16
from agent.errors import DriverError
from agent.readiness import Problem, fault, warning

SERVICE_UUID = uuid16(0xFFF0)
WRITE_UUID = uuid16(0xFFF3)

FRAME_LEN = 9
HEAD = 0x7E
TAIL = 0xEF
CMD_BRIGHTNESS = 0x01
CMD_SPEED = 0x02
CMD_EFFECT = 0x03
CMD_POWER = 0x04
CMD_COLOUR = 0x05
COLOUR_RGB = 0x03

MAX_PCT = 100


class LampError(DriverError):
    """A BLE lamp could not be driven."""


class LampUnreachable(BleLinkLost, LampError):
    """The lamp is not reachable over BLE (unpowered, out of range, link dropped)."""


def encode_power(on: bool) -> bytes:
    return bytes((HEAD, 0x00, CMD_POWER, 0xF0, 0x00, 0x01, 0xFF, 0x00, TAIL)) if on else \
        bytes((HEAD, 0x00, CMD_POWER, 0x00, 0x00, 0x00, 0xFF, 0x00, TAIL))


def encode_colour(r: int, g: int, b: int) -> bytes:
    for c in (r, g, b):
        if not 0 <= c <= 255:
            raise ValueError(f"colour components are 0..255, not {(r, g, b)}")
    return bytes((HEAD, 0x00, CMD_COLOUR, COLOUR_RGB, r, g, b, 0x00, TAIL))


def encode_brightness(percent: int) -> bytes:
    if not 0 <= percent <= MAX_PCT:
        raise ValueError(f"brightness is 0..100 %, not {percent}")
    return bytes((HEAD, 0x00, CMD_BRIGHTNESS, percent, 0x00, 0x00, 0x00, 0x00, TAIL))


def level_to_pct(level: int) -> int:
    """The contract's 0..255 level as the lamp's 0..100 %; any lit level stays at least 1 %."""
    if not 0 <= level <= 255:
        raise ValueError(f"level is 0..255, not {level}")
    return 0 if level == 0 else max(1, round(level * MAX_PCT / 255))


def pct_to_level(pct: int) -> int:
    return round(pct * 255 / MAX_PCT)


@dataclass(frozen=True)
class LampState:
    """What the driver last set; None where it has not set anything yet."""

    on: bool | None = None
    level: int | None = None  # 0..255, as in the wire contract
    rgb: tuple[int, int, int] | None = None

    def frames(self) -> list[bytes]:
        """The writes that put a lamp in this state: colour and level before power."""
        out = []
        if self.rgb is not None:
            out.append(encode_colour(*self.rgb))
        if self.level is not None:
            out.append(encode_brightness(level_to_pct(self.level)))
        if self.on is not None:
            out.append(encode_power(self.on))
        return out


class BleLamp:
    """An ELK-BLEDOM lamp at a BLE address: ``await lamp.on()``, ``level(128)``, ``rgb(255, 160, 60)``."""

    def __init__(
        self,
        address: str,
        *,
        backend: Any = None,
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
        on_state: Callable[[bool, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.state = LampState()
        self.link = BleLink(address, backend=backend, connect_timeout=connect_timeout,
                            backoff=backoff, on_state=on_state, clock=clock)
        self._applied_on_connect = 0  # link.connects when the full state was last sent
        self._lock = asyncio.Lock()
        self.writes = 0

    @property
    def reachable(self) -> bool:
        return self.link.up

    async def on(self) -> None:
        await self._set(replace(self.state, on=True), [encode_power(True)])

    async def off(self) -> None:
        await self._set(replace(self.state, on=False), [encode_power(False)])

    async def level(self, level: int) -> None:
        """Brightness 0..255 (the lamp itself has 0..100 %)."""
        await self._set(replace(self.state, level=level), [encode_brightness(level_to_pct(level))])

    async def rgb(self, r: int, g: int, b: int) -> None:
        await self._set(replace(self.state, rgb=(r, g, b)), [encode_colour(r, g, b)])

    async def refresh(self) -> None:
        """Connect if needed; a new connection gets the remembered state. Raises LampUnreachable."""
        await self._set(self.state, [])

    async def flash(self, times: int = 2, period: float = 0.3) -> None:
        """Identify the lamp to the crew: blink it, then leave it as it was set."""
        async with self._lock:
            await self._ensure_applied()
            for _ in range(times):
                await self._write(encode_power(False))
                await asyncio.sleep(period / 2)
                await self._write(encode_power(True))
                await asyncio.sleep(period / 2)
            if self.state.on is False:
                await self._write(encode_power(False))

    async def _set(self, state: LampState, frames: list[bytes]) -> None:
        async with self._lock:
            self.state = state
            fresh = await self._ensure_applied()
            if not fresh:  # a fresh connection already got the whole new state
                for frame in frames:
                    await self._write(frame)

    async def _ensure_applied(self) -> bool:
        """Connect; after a new connection send the whole remembered state. True if it did."""
        try:
            await self.link.ensure_up()
        except BleError as exc:
            raise LampUnreachable(str(exc)) from exc
        if self._applied_on_connect == self.link.connects:
            return False
        for frame in self.state.frames():
            await self._write(frame)
        self._applied_on_connect = self.link.connects
        return True

    async def _write(self, frame: bytes) -> None:
        try:
            await self.link.write(WRITE_UUID, frame, response=self.link.writes_with_response(WRITE_UUID))
        except BleError as exc:
            raise LampUnreachable(str(exc)) from exc
        self.writes += 1

    def telemetry_fields(self) -> dict[str, Any]:
        """Keyword arguments for ``kits.contract.LightTelemetry`` (what the driver set)."""
        return {"reachable": self.reachable, "on": bool(self.state.on), "level": self.state.level,
                "rgb": self.state.rgb}

    async def self_test(self, device_id: str, expect: Any = None) -> list[Problem]:
        """Blink the lamp; never raises.

        An unreachable lamp is a fault when the manifest marks it a safety light
        (``expect.safety``), otherwise a warning: the kit can open with one lamp less.
        """
        try:
            await self.flash(times=1, period=0.2)
        except (BleError, LampError):
            make = fault if getattr(expect, "safety", False) else warning
            return [make(device_id, "lamp not reachable over Bluetooth", "check it is powered and within range")]
        return []

    async def close(self) -> None:
        await self.link.close()


def ble_lamp(address: str, backend: Any = None, **options: Any) -> BleLamp:
    """The ELK-BLEDOM lamp at ``address``; ``backend`` is bleak's backend class (None: the real stack)."""
    return BleLamp(address, backend=backend, **options)
