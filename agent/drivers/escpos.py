"""ESC/POS receipt printer (Epson TM-T20 class) over pyserial: real-time status and printing.

What to print is encoded in :mod:`agent.drivers.receipt` (pure); the policy of
when to send (status first, confirm after) is :class:`agent.drivers.printer.Printer`'s.

Status comes from ``DLE EOT n`` (``10 04 n``), which the printer answers with
one byte immediately, even while offline or busy printing. Every reply byte has
bits 1 and 4 set and bits 0 and 7 clear; a byte without that pattern is not a
status reply (a late reply from an earlier query, an ASB packet, line noise).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import serial

from agent.drivers.printer import CorruptStatus, Paper, Printer, PrinterStatus
from agent.drivers.serialport import PORT_ERRORS, close_port, write_port
from agent.errors import DriverTimeout, PrinterError

DLE = 0x10
EOT = 0x04

STATUS_PRINTER = 1
STATUS_OFFLINE_CAUSE = 2
STATUS_ERROR_CAUSE = 3
STATUS_PAPER_SENSOR = 4

_FIXED_SET = 0x12
_FIXED_CLEAR = 0x81


def status_request(n: int) -> bytes:
    """The ``DLE EOT n`` bytes asking for status ``n``."""
    return bytes((DLE, EOT, n))


def _check_fixed_bits(byte: int, n: int) -> None:
    if not 0 <= byte <= 0xFF:
        raise CorruptStatus(f"DLE EOT {n} reply {byte!r} is not a byte")
    if byte & _FIXED_SET != _FIXED_SET or byte & _FIXED_CLEAR:
        raise CorruptStatus(
            f"DLE EOT {n} reply 0x{byte:02X} is not a status byte "
            f"(bits 0x12 must be set and 0x81 clear)"
        )


@dataclass(frozen=True)
class PrinterStatusByte:
    """Reply to DLE EOT 1."""

    drawer_pin3_high: bool  # bit 2: drawer kick connector pin 3 (cash drawer sensor)
    offline: bool  # bit 3
    waiting_online_recovery: bool  # bit 5
    feed_button_pressed: bool  # bit 6


@dataclass(frozen=True)
class OfflineCause:
    """Reply to DLE EOT 2."""

    cover_open: bool  # bit 2
    feed_button_feeding: bool  # bit 3: paper is being fed by the FEED button
    paper_end_stop: bool  # bit 5: printing stopped because the paper ran out
    error: bool  # bit 6


@dataclass(frozen=True)
class ErrorCause:
    """Reply to DLE EOT 3."""

    recoverable: bool  # bit 2
    autocutter: bool  # bit 3
    unrecoverable: bool  # bit 5
    auto_recoverable: bool  # bit 6 (e.g. head overheated; clears by itself)

    @property
    def any(self) -> bool:
        return self.recoverable or self.autocutter or self.unrecoverable or self.auto_recoverable


@dataclass(frozen=True)
class PaperSensor:
    """Reply to DLE EOT 4 (roll paper sensors)."""

    near_end: bool  # bits 2|3
    out: bool  # bits 5|6


def parse_printer_status(byte: int) -> PrinterStatusByte:
    _check_fixed_bits(byte, STATUS_PRINTER)
    return PrinterStatusByte(
        drawer_pin3_high=bool(byte & 0x04),
        offline=bool(byte & 0x08),
        waiting_online_recovery=bool(byte & 0x20),
        feed_button_pressed=bool(byte & 0x40),
    )


def parse_offline_cause(byte: int) -> OfflineCause:
    _check_fixed_bits(byte, STATUS_OFFLINE_CAUSE)
    return OfflineCause(
        cover_open=bool(byte & 0x04),
        feed_button_feeding=bool(byte & 0x08),
        paper_end_stop=bool(byte & 0x20),
        error=bool(byte & 0x40),
    )


def parse_error_cause(byte: int) -> ErrorCause:
    _check_fixed_bits(byte, STATUS_ERROR_CAUSE)
    return ErrorCause(
        recoverable=bool(byte & 0x04),
        autocutter=bool(byte & 0x08),
        unrecoverable=bool(byte & 0x20),
        auto_recoverable=bool(byte & 0x40),
    )


def parse_paper_sensor(byte: int) -> PaperSensor:
    # Epson documents each pair as "both set"; we accept either bit of a pair
    # because printers with a single sensor per pair set only one of them.
    _check_fixed_bits(byte, STATUS_PAPER_SENSOR)
    return PaperSensor(near_end=bool(byte & 0x0C), out=bool(byte & 0x60))


def printer_status(
    printer: PrinterStatusByte,
    offline: OfflineCause,
    errors: ErrorCause,
    paper: PaperSensor | None,
) -> PrinterStatus:
    """Combine the parsed replies; ``paper=None`` means the printer did not answer DLE EOT 4."""
    if paper is None:
        level: Paper = "out" if offline.paper_end_stop else "unknown"
    elif paper.out:
        level = "out"
    elif paper.near_end:
        level = "near_end"
    else:
        level = "ok"
    return PrinterStatus(
        online=not printer.offline,
        paper=level,
        cover_open=offline.cover_open,
        error=offline.error or errors.any,
    )


def status_from_replies(replies: dict[int, int]) -> PrinterStatus:
    """Parse raw replies to DLE EOT 1, 2, 3 and (if it answered) 4; CorruptStatus on a bad byte."""
    paper_byte = replies.get(STATUS_PAPER_SENSOR)
    return printer_status(
        parse_printer_status(replies[STATUS_PRINTER]),
        parse_offline_cause(replies[STATUS_OFFLINE_CAUSE]),
        parse_error_cause(replies[STATUS_ERROR_CAUSE]),
        parse_paper_sensor(paper_byte) if paper_byte is not None else None,
    )


class _PrinterPort(Protocol):
    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...


class EscPosPrinter(Printer):
    """An ESC/POS printer on an open serial port (or anything with read/write)."""

    def __init__(self, port: _PrinterPort, device_id: str = "printer", status_timeout: float = 1.0) -> None:
        self.port = port
        self.device_id = device_id
        self.status_timeout = status_timeout  # status()'s default deadline for the whole exchange
        self.corrupt_replies = 0

    @classmethod
    def open(cls, path: str, baudrate: int = 9600, device_id: str = "printer",
             status_timeout: float = 1.0) -> EscPosPrinter:
        # A short read timeout lets status() enforce its own deadline; the
        # write timeout stops a printer that holds flow control forever from
        # hanging the agent.
        try:
            port = serial.serial_for_url(path, baudrate=baudrate, timeout=0.05, write_timeout=5.0)
        except PORT_ERRORS as exc:
            raise PrinterError(f"cannot open printer port {path}: {exc}") from exc
        return cls(port, device_id, status_timeout)

    def close(self) -> None:
        close_port(self.port)

    def __enter__(self) -> EscPosPrinter:
        return self

    def write(self, data: bytes) -> None:
        write_port(self.port, data, "printer")

    def _discard_input(self) -> None:
        # A reply that arrived after an earlier query timed out would otherwise
        # be taken as the answer to the next query, shifting every status bit.
        try:
            reset = getattr(self.port, "reset_input_buffer", None)
            if reset is not None:
                reset()
        except PORT_ERRORS as exc:
            raise PrinterError(f"printer port failed: {exc}") from exc

    def _read_byte(self, deadline: float) -> int | None:
        while True:
            try:
                data = self.port.read(1)
            except PORT_ERRORS as exc:
                raise PrinterError(f"printer port failed: {exc}") from exc
            if data:
                return data[0]
            if time.monotonic() >= deadline:
                return None

    def query(self, n: int, timeout: float = 1.0) -> int | None:
        """Send ``DLE EOT n``; return the raw reply byte, or None if none came in time."""
        self.write(status_request(n))
        return self._read_byte(time.monotonic() + timeout)

    def status(self, timeout: float | None = None) -> PrinterStatus:
        """Ask the four real-time statuses; ``timeout`` bounds the whole exchange.

        No answer to DLE EOT 1..3 raises DriverTimeout: that is what a
        switched-off or unplugged printer looks like. A printer that answers
        those but not DLE EOT 4 has no roll sensor reply, so paper is "unknown".
        """
        timeout = self.status_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._discard_input()
        replies: dict[int, int] = {}
        for n in (STATUS_PRINTER, STATUS_OFFLINE_CAUSE, STATUS_ERROR_CAUSE, STATUS_PAPER_SENSOR):
            self.write(status_request(n))
            byte = self._read_byte(deadline)
            if byte is None:
                if n == STATUS_PAPER_SENSOR:
                    break
                raise DriverTimeout(
                    f"printer did not answer DLE EOT {n} within {timeout:g}s (switched off or unplugged?)"
                )
            replies[n] = byte
        try:
            return status_from_replies(replies)
        except CorruptStatus:
            self.corrupt_replies += 1
            raise
