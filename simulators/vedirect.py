"""A Victron BMV-700 battery monitor on a pty, for tests and demos without hardware."""

from __future__ import annotations

import threading

from agent.drivers.vedirect import encode_block
from simulators.pty import PtySimulator

# 12 V lead-acid/AGM rest voltage roughly spans 11.9 V (empty) to 12.7 V (full);
# close enough for a demo and monotonic in SOC, which is what tests rely on.
_EMPTY_V = 11.9
_FULL_V = 12.7
_INTERNAL_OHMS = 0.01
_LOW_SOC_ALARM = 0.10  # BMV default low-SOC alarm threshold is 10 %


def encode_hex_frame(command: int, payload: bytes) -> bytes:
    """An async VE.Direct HEX frame: ``:`` + command nibble + hex payload + checksum + ``\\n``.

    The checksum byte makes command + payload bytes + checksum sum to 0x55.
    """
    check = (0x55 - command - sum(payload)) & 0xFF
    return b":" + b"%X" % command + (payload + bytes((check,))).hex().upper().encode() + b"\n"


class VEDirectSimulator(PtySimulator):
    """Sends a BMV-700 main block plus history block every ``interval`` seconds.

    The battery discharges at the load set with ``set_load`` (amps, positive =
    discharging, negative = charging); capacity is in Ah. ``hex_every=N`` puts an
    async HEX frame in the middle of every Nth main block, as real devices do.
    """

    name = "vedirect-simulator"

    def __init__(
        self,
        interval: float = 1.0,
        capacity_ah: float = 100.0,
        soc: float = 0.9,
        load_a: float = 0.0,
        hex_every: int = 0,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.capacity_ah = capacity_ah
        self._lock = threading.Lock()
        self._soc = soc
        self._load_a = load_a
        self._hex_every = hex_every
        self._last: float | None = None
        self._corrupt_next = 0
        self.blocks_sent = 0
        self.hex_frames_sent = 0
        self.corrupt_sent = 0

    def set_load(self, amps: float) -> None:
        with self._lock:
            self._load_a = amps

    @property
    def soc(self) -> float:
        """State of charge, 0..1."""
        with self._lock:
            return self._soc

    def inject_corrupt_block(self, count: int = 1) -> None:
        """Send the next ``count`` main blocks with a wrong checksum byte."""
        with self._lock:
            self._corrupt_next += count

    def _advance(self, now: float) -> None:
        dt = 0.0 if self._last is None else now - self._last
        self._last = now
        self._soc -= self._load_a * dt / 3600.0 / self.capacity_ah
        self._soc = min(1.0, max(0.0, self._soc))

    def main_fields(self) -> list[tuple[str, str]]:
        with self._lock:
            soc, load = self._soc, self._load_a
        volts = _EMPTY_V + (_FULL_V - _EMPTY_V) * soc - load * _INTERNAL_OHMS
        amps = -load
        consumed_mah = -(1.0 - soc) * self.capacity_ah * 1000
        # TTG counts down to empty; Victron sends -1 when not discharging.
        ttg = round(soc * self.capacity_ah / load * 60) if load > 0 else -1
        alarm_reason = 4 if soc < _LOW_SOC_ALARM else 0
        return [
            ("PID", "0x203"),
            ("V", str(round(volts * 1000))),
            ("I", str(round(amps * 1000))),
            ("P", str(round(volts * amps))),
            ("CE", str(round(consumed_mah))),
            ("SOC", str(round(soc * 1000))),
            ("TTG", str(ttg)),
            ("Alarm", "ON" if alarm_reason else "OFF"),
            ("Relay", "OFF"),
            ("AR", str(alarm_reason)),
            ("BMV", "700"),
            ("FW", "0308"),
        ]

    def history_fields(self) -> list[tuple[str, str]]:
        # Fixed plausible history; the agent only needs it to parse, not to mean much.
        with self._lock:
            consumed_mah = -(1.0 - self._soc) * self.capacity_ah * 1000
        return [
            ("H1", "-149322"), ("H2", "-82854"), ("H3", "0"), ("H4", "0"), ("H5", "0"),
            ("H6", str(round(consumed_mah) - 5000000)), ("H7", "11733"), ("H8", "16161"),
            ("H9", "368003"), ("H10", "26"), ("H11", "0"), ("H12", "0"),
            ("H17", "6843"), ("H18", "8527"),
        ]

    def _hex_frame(self) -> bytes:
        # Async update of register 0xED8D (main voltage, 0.01 V units), little endian.
        centivolts = int(self.main_fields()[1][1]) // 10
        return encode_hex_frame(0xA, bytes((0x8D, 0xED, 0x00)) + centivolts.to_bytes(2, "little"))

    def frame(self) -> bytes:
        """The bytes of one main+history pair at the current state."""
        main = bytearray(encode_block(self.main_fields()))
        with self._lock:
            corrupt = self._corrupt_next > 0
            if corrupt:
                self._corrupt_next -= 1
        if corrupt:
            main[-1] ^= 0x5A
            self.corrupt_sent += 1
        self.blocks_sent += 1
        if self._hex_every and self.blocks_sent % self._hex_every == 0:
            # Mid-block, right before the SOC field, to exercise the parser's
            # HEX stripping where it is hardest.
            cut = main.index(b"\r\nSOC\t")
            main[cut:cut] = self._hex_frame()
            self.hex_frames_sent += 1
        return bytes(main) + encode_block(self.history_fields())

    def on_tick(self, now: float) -> float | None:
        with self._lock:
            self._advance(now)
        self.pty.write(self.frame())
        return self.interval
