"""TSPL label printer (TSC and the common cheap 203 dpi label printers) over serial or USB.

What to print is TSPL text from :func:`kits.retail.labels.render_tspl`; the policy of when to
send (status first, confirm after) is :class:`agent.drivers.printer.Printer`'s, as for the
ESC/POS receipt printer.

Status is TSC's real-time ``<ESC>!?`` (``1B 21 3F``): the printer answers one byte at once, even
mid-job. Bits: 0 head open, 1 paper jam, 2 paper out, 3 ribbon out, 4 paused, 5 printing,
6 cover open, 7 temperature out of range; 0x00 is ready. No reply in time is a DriverTimeout; a
reply of more than one byte is not a status (line noise, a late reply, another device) and is
counted and refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import serial

from agent.drivers.printer import CorruptStatus, InvalidPrintJob, Printer, PrinterStatus
from agent.drivers.serialport import PORT_ERRORS, close_port, write_port
from agent.errors import DriverTimeout, PrinterError

if TYPE_CHECKING:
    from agent.drivers.receipt import Receipt

STATUS_REQUEST = b"\x1b!?"

_BITS = ("head_open", "paper_jam", "paper_out", "ribbon_out", "paused", "printing", "cover_open", "over_temperature")


@dataclass(frozen=True)
class TsplStatus:
    head_open: bool
    paper_jam: bool
    paper_out: bool
    ribbon_out: bool
    paused: bool
    printing: bool
    cover_open: bool
    over_temperature: bool

    @property
    def problems(self) -> list[str]:
        """Every set bit but "printing", in words."""
        return [name.replace("_", " ") for name in _BITS if name != "printing" and getattr(self, name)]


def parse_status(reply: bytes) -> TsplStatus:
    """The ``<ESC>!?`` reply: exactly one byte; CorruptStatus otherwise."""
    if len(reply) != 1:
        raise CorruptStatus(f"<ESC>!? reply must be one byte, got {len(reply)}: {reply[:8].hex(' ')}")
    byte = reply[0]
    return TsplStatus(*(bool(byte >> i & 1) for i in range(8)))


def printer_status(s: TsplStatus) -> PrinterStatus:
    """The kit's common printer status: a jam, ribbon or temperature fault is an error."""
    return PrinterStatus(
        online=not s.paused,
        paper="out" if s.paper_out else "ok",
        cover_open=s.head_open or s.cover_open,
        error=s.paper_jam or s.ribbon_out or s.over_temperature,
    )


class RawDevice:
    """A printer class device (Linux usblp: ``/dev/usb/lp0``) read and written as a file.

    Most USB label printers show up as usblp, not as a serial port, and pyserial cannot open
    that (no termios). Reads are non-blocking so the driver's own deadline applies.
    """

    def __init__(self, path: str) -> None:
        import os

        self._os = os
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)

    def read(self, size: int = 1) -> bytes:
        try:
            return self._os.read(self.fd, size)
        except BlockingIOError:
            return b""

    def write(self, data: bytes) -> int:
        view, sent = memoryview(data), 0
        deadline = time.monotonic() + 5.0
        while sent < len(data):
            try:
                sent += self._os.write(self.fd, view[sent:])
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise DriverTimeout(f"label printer took {sent} of {len(data)} bytes in 5 s") from None
                time.sleep(0.005)
        return sent

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self._os.close(fd)


class TsplPrinter(Printer):
    """A TSPL printer on an open serial port (or anything with read/write)."""

    def __init__(self, port, device_id: str = "label-printer", status_timeout: float = 1.0) -> None:
        self.port = port
        self.device_id = device_id
        self.status_timeout = status_timeout
        self.corrupt_replies = 0
        self.last_status: TsplStatus | None = None

    @classmethod
    def open(cls, path: str, baudrate: int = 9600, device_id: str = "label-printer",
             status_timeout: float = 1.0) -> TsplPrinter:
        """A serial port or pyserial URL; a ``/dev/usb/lp*`` path opens the USB printer class device."""
        try:
            if path.startswith("/dev/usb/lp"):
                port: object = RawDevice(path)
            else:
                port = serial.serial_for_url(path, baudrate=baudrate, timeout=0.05, write_timeout=5.0)
        except PORT_ERRORS as exc:
            raise PrinterError(f"cannot open label printer port {path}: {exc}") from exc
        return cls(port, device_id, status_timeout)

    def close(self) -> None:
        close_port(self.port)

    def write(self, data: bytes) -> None:
        write_port(self.port, data, "label printer")

    def _read(self, size: int = 1) -> bytes:
        try:
            return self.port.read(size)
        except PORT_ERRORS as exc:
            raise PrinterError(f"label printer port failed: {exc}") from exc

    def _read_waiting(self) -> bytes:
        """What has already arrived, without waiting out the port's read timeout."""
        try:
            waiting = getattr(self.port, "in_waiting", None)
        except PORT_ERRORS as exc:
            raise PrinterError(f"label printer port failed: {exc}") from exc
        if waiting is None:  # RawDevice: its reads never block
            return self._read(64)
        return self._read(waiting) if waiting else b""

    def raw_status(self, timeout: float | None = None) -> TsplStatus:
        """Ask ``<ESC>!?`` and parse the byte. DriverTimeout: no answer; CorruptStatus: not one byte."""
        timeout = self.status_timeout if timeout is None else timeout
        try:
            reset = getattr(self.port, "reset_input_buffer", None)
            if reset is not None:
                reset()  # a late reply to an earlier query must not answer this one
        except PORT_ERRORS as exc:
            raise PrinterError(f"label printer port failed: {exc}") from exc
        self.write(STATUS_REQUEST)
        deadline = time.monotonic() + timeout
        reply = b""
        while not reply:
            reply = self._read()
            if not reply and time.monotonic() >= deadline:
                raise DriverTimeout(f"label printer did not answer <ESC>!? within {timeout:g}s "
                                    f"(switched off or unplugged?)")
        # A status is one byte; anything right behind it in the same burst makes it suspect.
        # (read(1) returns at the first byte; a bigger read would wait out the port timeout.)
        time.sleep(0.02)
        reply += self._read_waiting()
        try:
            self.last_status = parse_status(reply)
        except CorruptStatus:
            self.corrupt_replies += 1
            raise
        return self.last_status

    def status(self) -> PrinterStatus:
        return printer_status(self.raw_status())

    def print_job(self, job: Receipt | bytes) -> None:
        if not isinstance(job, bytes):
            # A Receipt encodes to ESC/POS, which a TSPL printer would print as garbage text.
            raise InvalidPrintJob("a TSPL printer takes TSPL bytes (kits.retail.labels.render_tspl), not a receipt")
        super().print_job(job)

    def test_job(self, device: str) -> bytes:
        """A small TSPL test label (Printer.self_test prints it when the printer can print)."""
        from kits.retail.labels import render_tspl, template

        return render_tspl(template("shelf-40x30"), {"sku": "SELFTEST", "name": "PopKit test"})
