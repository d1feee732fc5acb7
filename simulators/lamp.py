"""An ELK-BLEDOM lamp on the simulated radio: decodes the 9-byte frames and shows the result.

``shows`` is what a person in the room would see: ``(0, 0, 0)`` when off, otherwise the
colour scaled by the brightness. Frames that break the envelope (length, 7E ... EF) are
counted in ``frames_bad``; well-formed frames with a command this model does not act on
(effects, speed) in ``frames_unknown``. Like the real lamp it keeps its state across
connections and loses it when switched off (``power_cycle()``).
"""

from __future__ import annotations

from typing import Any

from agent.drivers.lamp import (
    CMD_BRIGHTNESS,
    CMD_COLOUR,
    CMD_POWER,
    COLOUR_RGB,
    FRAME_LEN,
    HEAD,
    MAX_PCT,
    SERVICE_UUID,
    TAIL,
    WRITE_UUID,
)
from simulators.ble import SimulatedPeripheral, SimulatedRadio, service


class SimulatedElkLamp(SimulatedPeripheral):
    def __init__(self, address: str = "BE:16:02:00:11:01", *, name: str = "ELK-BLEDOM") -> None:
        super().__init__(address, name, [service(
            SERVICE_UUID, (WRITE_UUID, ["read", "write-without-response", "write"]), ("fff4", ["notify"]))])
        self.frames_ok = 0
        self.frames_bad = 0
        self.frames_unknown = 0
        self.power_cycle()

    def power_cycle(self) -> None:
        """Switched off and on at the wall: back to the factory state (on, white, full)."""
        self.is_on = True
        self.rgb = (255, 255, 255)
        self.brightness_pct = MAX_PCT
        self.history: list[tuple[bool, tuple[int, int, int]]] = []

    @property
    def shows(self) -> tuple[int, int, int]:
        if not self.is_on:
            return (0, 0, 0)
        return tuple(round(c * self.brightness_pct / MAX_PCT) for c in self.rgb)  # type: ignore[return-value]

    def on_write(self, char_uuid: str, data: bytes) -> None:
        if char_uuid != WRITE_UUID:
            return
        if len(data) != FRAME_LEN or data[0] != HEAD or data[-1] != TAIL:
            self.frames_bad += 1
            return
        command = data[2]
        if command == CMD_POWER:
            self.is_on = data[3] != 0
        elif command == CMD_COLOUR and data[3] == COLOUR_RGB:
            self.rgb = (data[4], data[5], data[6])
        elif command == CMD_BRIGHTNESS and data[3] <= MAX_PCT:
            self.brightness_pct = data[3]
        else:
            self.frames_unknown += 1
            return
        self.frames_ok += 1
        self.history.append((self.is_on, self.shows))


def simulated_lamp(address: str = "BE:16:02:00:11:01", radio: SimulatedRadio | None = None,
                   **options: Any) -> tuple[type, SimulatedElkLamp]:
    """A simulated ELK-BLEDOM lamp at ``address``: (bleak backend class, peripheral handle)."""
    radio = radio if radio is not None else SimulatedRadio()
    lamp = SimulatedElkLamp(address, **options)
    radio.add(lamp)
    return radio.backend, lamp
