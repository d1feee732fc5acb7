"""A JBD BLE BMS on the simulated radio: answers DD A5 requests with real reply frames.

The pack discharges at the load set with ``set_load`` (amps, positive = discharging), so
voltage, current, remaining capacity and RSOC move as a real pack's do. Replies go out in
20-byte notifications like a real JBD module's. Test controls, on top of the radio's
``vanish()``/``come_back()``: ``corrupt_next_reply(kind)``, ``mute_next_replies(n)`` (a
silent BMS), ``set_protection(*flags)``, and ``script`` (register -> raw reply bytes,
e.g. a frame captured from a real BMS, sent instead of the model's).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Literal

from agent.drivers.jbd import (
    NOTIFY_UUID,
    PROTECTION_FLAGS,
    READ,
    REG_BASIC_INFO,
    REG_CELLS,
    REG_NAME,
    SERVICE_UUID,
    START,
    END,
    WRITE_UUID,
    checksum,
    encode_reply,
)
from simulators.ble import SimulatedPeripheral, SimulatedRadio, service

Corruption = Literal["checksum", "end", "length"]

_CELL_EMPTY_V = 3.00  # LiFePO4-ish resting cell voltage at 0 % and 100 %
_CELL_FULL_V = 3.40
_CELL_OHMS = 0.002


class SimulatedJbdBms(SimulatedPeripheral):
    def __init__(
        self,
        address: str = "A4:C1:38:00:00:01",
        *,
        name: str = "xiaoxiang BMS",
        cells: int = 4,
        capacity_ah: float = 100.0,
        soc: float = 0.9,
        load_a: float = 0.0,
        temps_c: tuple[float, ...] = (22.5, 23.0, 22.0),
        cycles: int = 12,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(address, name, [service(
            SERVICE_UUID, (NOTIFY_UUID, ["notify"]), (WRITE_UUID, ["write-without-response", "write"]))])
        self.cells = cells
        self.capacity_ah = capacity_ah
        self.temps_c = tuple(temps_c)
        self.cycles = cycles
        self.model_name = "JBD-SP04S034-L4S-200A-B-U"
        self.charge_fet = True
        self.discharge_fet = True
        self.protection_bits = 0
        self.script: dict[int, bytes] = {}
        self.requests: list[int] = []  # registers asked for, in order
        self.bad_requests = 0
        self._state_lock = threading.Lock()
        self._soc = soc
        self._load_a = load_a
        self._clock = clock
        self._last = clock()
        self._corrupt: deque[Corruption] = deque()
        self._mute = 0
        self._rx = bytearray()

    # -- controls --------------------------------------------------------------------------

    def set_load(self, amps: float) -> None:
        with self._state_lock:
            self._advance()
            self._load_a = amps

    @property
    def soc(self) -> float:
        with self._state_lock:
            self._advance()
            return self._soc

    def set_soc(self, soc: float) -> None:
        with self._state_lock:
            self._advance()
            self._soc = min(1.0, max(0.0, soc))

    def set_protection(self, *flags: str) -> None:
        """Raise these protection flags (names from PROTECTION_FLAGS); none clears them."""
        self.protection_bits = sum(1 << PROTECTION_FLAGS.index(f) for f in flags)

    def corrupt_next_reply(self, kind: Corruption = "checksum", count: int = 1) -> None:
        self._corrupt.extend([kind] * count)

    def mute_next_replies(self, count: int = 1) -> None:
        self._mute += count

    # -- the model -------------------------------------------------------------------------

    def _advance(self) -> None:
        now = self._clock()
        dt, self._last = now - self._last, now
        self._soc = min(1.0, max(0.0, self._soc - self._load_a * dt / 3600.0 / self.capacity_ah))

    def cell_voltages(self) -> list[float]:
        with self._state_lock:
            self._advance()
            soc, load = self._soc, self._load_a
        base = _CELL_EMPTY_V + (_CELL_FULL_V - _CELL_EMPTY_V) * soc - load * _CELL_OHMS
        # A little spread, as real cells have.
        return [round(base + 0.004 * ((k * 7) % 3 - 1), 3) for k in range(self.cells)]

    def basic_info_data(self) -> bytes:
        cells = self.cell_voltages()
        with self._state_lock:
            soc, load = self._soc, self._load_a
        centivolts = round(sum(cells) * 100)
        nominal = round(self.capacity_ah * 100)
        fet = (1 if self.charge_fet else 0) | (2 if self.discharge_fet else 0)
        date_word = (25 << 9) | (3 << 5) | 28  # 2025-03-28
        data = bytearray()
        data += centivolts.to_bytes(2, "big")
        data += round(-load * 100).to_bytes(2, "big", signed=True)
        data += round(nominal * soc).to_bytes(2, "big")
        data += nominal.to_bytes(2, "big")
        data += self.cycles.to_bytes(2, "big")
        data += date_word.to_bytes(2, "big")
        data += bytes(4)  # balance bits: nothing balancing
        data += self.protection_bits.to_bytes(2, "big")
        data += bytes((0x80, round(soc * 100), fet, self.cells, len(self.temps_c)))
        for t in self.temps_c:
            data += (round(t * 10) + 2731).to_bytes(2, "big")
        return bytes(data)

    def cells_data(self) -> bytes:
        return b"".join(round(v * 1000).to_bytes(2, "big") for v in self.cell_voltages())

    def reply_for(self, register: int) -> bytes:
        if register in self.script:
            return self.script[register]
        if register == REG_BASIC_INFO:
            return encode_reply(register, self.basic_info_data())
        if register == REG_CELLS:
            return encode_reply(register, self.cells_data())
        if register == REG_NAME:
            return encode_reply(register, self.model_name.encode("ascii"))
        return encode_reply(register, b"", status=0x80)

    # -- the wire --------------------------------------------------------------------------

    def on_write(self, char_uuid: str, data: bytes) -> None:
        if char_uuid != WRITE_UUID:
            return
        self._rx += data
        while len(self._rx) >= 7:
            start = self._rx.find(START)
            if start < 0:
                self._rx.clear()
                return
            del self._rx[:start]
            if len(self._rx) < 4:
                return
            total = self._rx[3] + 7
            if len(self._rx) < total:
                return
            frame, self._rx = bytes(self._rx[:total]), self._rx[total:]
            self._handle_request(frame)

    def _handle_request(self, frame: bytes) -> None:
        length = frame[3]
        good = frame[-1] == END and int.from_bytes(frame[4 + length : 6 + length], "big") == checksum(frame[2 : 4 + length])
        if not good or frame[1] != READ:
            # A real BMS ignores a request it cannot verify (and writes need factory mode).
            self.bad_requests += 1
            return
        register = frame[2]
        self.requests.append(register)
        if self._mute:
            self._mute -= 1
            return
        self.notify(NOTIFY_UUID, self._spoil(self.reply_for(register)))

    def _spoil(self, reply: bytes) -> bytes:
        if not self._corrupt:
            return reply
        kind = self._corrupt.popleft()
        out = bytearray(reply)
        if kind == "checksum":
            out[-2] ^= 0x01
        elif kind == "end":
            out[-1] = 0x00
        else:  # a length byte far beyond any real reply
            out[3] = 0xF0
        return bytes(out)


def simulated_jbd(address: str = "A4:C1:38:00:00:01", radio: SimulatedRadio | None = None,
                  **pack: Any) -> tuple[type, SimulatedJbdBms]:
    """A simulated JBD BMS at ``address``: (bleak backend class, peripheral handle).

    Pass the backend to ``jbd_monitor(address, backend=...)``. Give several devices the
    same ``radio`` to reach them all through one backend.
    """
    radio = radio if radio is not None else SimulatedRadio()
    bms = SimulatedJbdBms(address, **pack)
    radio.add(bms)
    return radio.backend, bms
