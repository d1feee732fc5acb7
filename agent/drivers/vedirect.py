"""Victron VE.Direct text protocol: BMV battery monitors and MPPT solar chargers.

The device talks unprompted at 19200 8N1: about once a second it sends a block
of ``\\r\\n<label>\\t<value>`` fields closed by ``\\r\\nChecksum\\t<byte>``, where
the byte makes every byte of the block sum to 0 mod 256. Asynchronous HEX
protocol frames (``:<hex digits>\\n``) can be interleaved anywhere, even in the
middle of a block, and are not part of the checksum.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Mapping, Protocol

import serial

from agent.errors import DriverTimeout, PowerBankError

BAUDRATE = 19200

# Victron's blocks are a few hundred bytes; anything much longer without a
# Checksum field is line noise or the wrong baud rate, and must not grow
# without bound on a Pi that runs for days.
MAX_BLOCK_BYTES = 1024
# Real HEX frames are well under 100 characters.
MAX_HEX_BYTES = 256

_CHECKSUM_LABEL = b"Checksum"
_HEX_DIGITS = frozenset(b"0123456789ABCDEFabcdef")

# Parser states.
_IDLE = 0  # after a Checksum byte: expecting the "\r\n" that starts the next block
_NAME = 1  # reading a label, up to the tab
_VALUE = 2  # reading a value, up to the "\r\n" that starts the next field
_CHECKSUM = 3  # the next byte is the checksum byte, whatever its value
_HEX = 4  # inside an async ":...\n" frame


class VEDirectParser:
    """Incremental VE.Direct text-protocol parser.

    Feed it bytes as they arrive, in chunks of any size; it returns each block
    whose checksum verifies, as a label -> value dict. A BMV's main block and
    its history block (H1..H18) carry separate checksums, so they come back as
    two separate blocks.

    Counters: ``blocks_ok``, ``blocks_bad`` (checksum failures, malformed or
    oversize blocks) and ``hex_frames`` (async HEX frames stripped out).

    The bytes before the first Checksum field are usually the tail of a block
    whose start we never saw; if they do not verify they are dropped without
    counting them bad, because that is how every connection starts, not a sign
    of a bad link. If the stream happens to start exactly on a block boundary,
    that first block verifies and is returned like any other.
    """

    def __init__(self) -> None:
        self.blocks_ok = 0
        self.blocks_bad = 0
        self.hex_frames = 0
        # Nothing is known about the stream until the first Checksum field.
        self._synced = False
        self._state = _IDLE
        self._state_before_hex = _IDLE
        self._hex_len = 0
        self._reset_block()

    def _reset_block(self) -> None:
        self._sum = 0
        self._size = 0
        self._malformed = False
        self._name = bytearray()
        self._value = bytearray()
        self._fields: list[tuple[str, str]] = []

    def feed(self, data: bytes) -> list[dict[str, str]]:
        """Consume ``data``; return the blocks it completed that verified."""
        out: list[dict[str, str]] = []
        for byte in data:
            self._feed_byte(byte, out)
        return out

    def _feed_byte(self, byte: int, out: list[dict[str, str]]) -> None:
        state = self._state
        if state == _HEX:
            self._hex_byte(byte, out)
            return
        # A checksum byte may legitimately be ':' (0x3A), so only outside the
        # checksum position does ':' start a HEX frame.
        if byte == 0x3A and state != _CHECKSUM:
            self._state_before_hex = state
            self._state = _HEX
            self._hex_len = 1
            return

        self._sum = (self._sum + byte) & 0xFF
        self._size += 1
        if self._size > MAX_BLOCK_BYTES:
            self.blocks_bad += 1
            self._reset_block()
            self._state = _IDLE
            # We are now somewhere inside garbage; the fragment up to the next
            # Checksum field is the tail of this same bad block, don't count it twice.
            self._synced = False
            return

        if state == _IDLE:
            if byte == 0x0A:
                self._state = _NAME
            elif byte != 0x0D:
                self._malformed = True
        elif state == _NAME:
            if byte == 0x09:
                if self._name == _CHECKSUM_LABEL:
                    self._state = _CHECKSUM
                else:
                    if not self._name:
                        self._malformed = True
                    self._state = _VALUE
            elif byte == 0x0A:
                # A field with no tab: structure is broken even if the sum works out.
                self._malformed = True
                self._name.clear()
            elif 0x20 < byte < 0x7F:
                self._name.append(byte)
            elif byte != 0x0D:
                self._malformed = True
        elif state == _VALUE:
            if byte == 0x0A:
                self._fields.append((self._name.decode("ascii"), self._value.decode("ascii")))
                self._name.clear()
                self._value.clear()
                self._state = _NAME
            elif 0x20 <= byte < 0x7F:
                self._value.append(byte)
            elif byte != 0x0D:
                self._malformed = True
        else:  # _CHECKSUM: this byte closes the block
            self._finish_block(out)

    def _hex_byte(self, byte: int, out: list[dict[str, str]]) -> None:
        if byte == 0x0A:
            self.hex_frames += 1
            self._state = self._state_before_hex
            return
        self._hex_len += 1
        if byte in _HEX_DIGITS and self._hex_len <= MAX_HEX_BYTES:
            return
        # Not a real HEX frame (or one cut short by a glitch): the text block
        # it interrupted can no longer be trusted, but resume in the state we
        # left so the field structure after it is still followed.
        self._malformed = True
        self._state = self._state_before_hex
        self._feed_byte(byte, out)

    def _finish_block(self, out: list[dict[str, str]]) -> None:
        good = self._sum == 0 and not self._malformed and bool(self._fields)
        if good:
            self.blocks_ok += 1
            out.append(dict(self._fields))
        elif self._synced:
            self.blocks_bad += 1
        self._synced = True
        self._reset_block()
        self._state = _IDLE


def encode_block(fields: list[tuple[str, str]]) -> bytes:
    """Build one text-protocol block, with the Checksum byte that makes it sum to 0."""
    body = bytearray()
    for label, value in fields:
        raw_label, raw_value = label.encode("ascii"), value.encode("ascii")
        if not raw_label or label == "Checksum" or any(b <= 0x20 or b >= 0x7F or b == 0x3A for b in raw_label):
            raise ValueError(f"invalid VE.Direct label {label!r}")
        if any(b < 0x20 or b >= 0x7F or b == 0x3A for b in raw_value):
            raise ValueError(f"invalid VE.Direct value {value!r} for {label}")
        body += b"\r\n" + raw_label + b"\t" + raw_value
    body += b"\r\n" + _CHECKSUM_LABEL + b"\t"
    body.append(-sum(body) & 0xFF)
    return bytes(body)


# Bit meanings of the AR (alarm reason) field, from Victron's VE.Direct protocol document.
ALARM_REASONS: dict[int, str] = {
    1: "low_voltage",
    2: "high_voltage",
    4: "low_soc",
    8: "low_starter_voltage",
    16: "high_starter_voltage",
    32: "low_temperature",
    64: "high_temperature",
    128: "mid_voltage",
    256: "overload",
    512: "dc_ripple",
    1024: "low_v_ac_out",
    2048: "high_v_ac_out",
    4096: "short_circuit",
    8192: "bms_lockout",
}
# BatteryTelemetry.alarm's max_length in the contract: the agent sends the text as it is.
MAX_ALARM_CHARS = 40
# No VE.Direct field comes near this; past it a float (and JSON) would lose digits or overflow.
MAX_FIELD_INT = 2**53


@dataclass(frozen=True)
class BatteryReading:
    """One battery sample in SI-ish units.

    ``i`` is negative while discharging. ``ttg`` is minutes to go, -1 meaning
    infinite (not discharging), exactly as Victron sends it. ``alarm`` is None
    when no alarm is active, otherwise a comma-separated list of reasons.
    """

    v: float
    i: float
    p: float | None = None
    soc: float | None = None
    ttg: int | None = None
    alarm: str | None = None


def _int_field(block: Mapping[str, str], label: str) -> int | None:
    # Devices send "---" for values they don't know yet (e.g. TTG before the
    # monitor has synchronised); that is "unknown", not an error.
    raw = block.get(label)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if abs(value) < MAX_FIELD_INT else None


def _alarm(block: Mapping[str, str]) -> str | None:
    reason = _int_field(block, "AR")
    if reason:
        names = [name for bit, name in ALARM_REASONS.items() if reason & bit]
        unknown = reason & ~sum(ALARM_REASONS)
        if unknown:
            names.append(f"AR_0x{unknown:X}")
        return _join_alarms(names)
    if block.get("Alarm", "").upper() == "ON":
        return "alarm"
    return None


def _join_alarms(names: list[str]) -> str:
    """The reasons, comma-separated, within MAX_ALARM_CHARS: those that do not fit become "+N"."""
    for keep in range(len(names), 0, -1):
        text = ",".join(names[:keep] + ([f"+{len(names) - keep}"] if keep < len(names) else []))
        if len(text) <= MAX_ALARM_CHARS:
            return text
    return f"+{len(names)}"


def battery_reading(block: Mapping[str, str]) -> BatteryReading | None:
    """Map a verified block to a BatteryReading; None if it has no battery V and I.

    History blocks (H1..H18) carry neither, so they map to None. MPPT chargers
    report the battery's V and I too, so they give a reading without P/SOC/TTG.
    """
    millivolts = _int_field(block, "V")
    milliamps = _int_field(block, "I")
    if millivolts is None or milliamps is None:
        return None
    watts = _int_field(block, "P")
    permille = _int_field(block, "SOC")
    return BatteryReading(
        v=millivolts / 1000,
        i=milliamps / 1000,
        p=float(watts) if watts is not None else None,
        # Outside 0..100 % is no state of charge (the contract refuses it): unknown.
        soc=permille / 10 if permille is not None and 0 <= permille <= 1000 else None,
        ttg=_int_field(block, "TTG"),
        alarm=_alarm(block),
    )


class _ReadablePort(Protocol):
    def read(self, size: int = 1) -> bytes: ...


class VEDirectReader:
    """Reads battery readings from a VE.Direct device on an open serial port."""

    def __init__(self, port: _ReadablePort, parser: VEDirectParser | None = None) -> None:
        self.port = port
        self.parser = parser if parser is not None else VEDirectParser()
        self._pending: deque[dict[str, str]] = deque()

    @classmethod
    def open(cls, path: str) -> VEDirectReader:
        """Open ``path`` (a device node or any pyserial URL) at VE.Direct settings."""
        try:
            port = serial.serial_for_url(path, baudrate=BAUDRATE, timeout=0.5)
        except (serial.SerialException, OSError) as exc:
            raise PowerBankError(f"cannot open VE.Direct port {path}: {exc}") from exc
        return cls(port)

    def close(self) -> None:
        close = getattr(self.port, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> VEDirectReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _read_some(self, remaining: float) -> bytes:
        # Block for one byte, then take whatever else has already arrived, so
        # a whole block costs a couple of syscalls rather than one per byte.
        port_timeout = getattr(self.port, "timeout", None)
        # Near the deadline, shorten the port's own read timeout so callers'
        # timeouts hold (it is 0.5 s as opened, longer than some callers wait).
        shorten = isinstance(port_timeout, (int, float)) and 0 < remaining < port_timeout
        try:
            if shorten:
                self.port.timeout = remaining  # type: ignore[attr-defined]
            try:
                data = self.port.read(1)
            finally:
                if shorten:
                    self.port.timeout = port_timeout  # type: ignore[attr-defined]
            waiting = getattr(self.port, "in_waiting", 0) if data else 0
            if waiting:
                data += self.port.read(waiting)
        except (serial.SerialException, OSError) as exc:
            raise PowerBankError(f"VE.Direct port failed: {exc}") from exc
        return data

    def read_block(self, timeout: float = 3.0) -> dict[str, str]:
        """Return the next verified block (any kind), or raise DriverTimeout."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DriverTimeout(
                    f"no verified VE.Direct block within {timeout:g}s "
                    f"(bad blocks so far: {self.parser.blocks_bad})"
                )
            data = self._read_some(remaining)
            if data:
                self._pending.extend(self.parser.feed(data))
        return self._pending.popleft()

    def read_reading(self, timeout: float = 3.0) -> BatteryReading:
        """Return the next battery reading, skipping history blocks.

        Raises DriverTimeout if none arrives in ``timeout`` seconds and
        PowerBankError if the port fails (e.g. the USB adapter was unplugged).
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                block = self.read_block(max(remaining, 0.0))
            except DriverTimeout:
                raise DriverTimeout(
                    f"no VE.Direct battery reading within {timeout:g}s "
                    f"(bad blocks so far: {self.parser.blocks_bad})"
                ) from None
            reading = battery_reading(block)
            if reading is not None:
                return reading
