"""ESC/POS DLE EOT status parsing, checked against real replies from GitHub issues."""

from __future__ import annotations

import select
import threading

import pytest

from agent.drivers.escpos import (
    EscPosPrinter,
    ErrorCause,
    OfflineCause,
    PaperSensor,
    PrinterStatus,
    PrinterStatusByte,
    parse_error_cause,
    parse_offline_cause,
    parse_paper_sensor,
    parse_printer_status,
    printer_status,
    status_request,
)
from agent.errors import DriverError, DriverTimeout, PrinterError
from simulators.pty import PtyPair
from tests.testdata import read_data

PARSERS = {1: parse_printer_status, 2: parse_offline_cause, 3: parse_error_cause, 4: parse_paper_sensor}


def captured_exchanges() -> list[tuple[bytes, int]]:
    """(request bytes, reply byte) pairs from escpos/issue_dle_eot_status_replies.hex."""
    pairs: list[tuple[bytes, int]] = []
    tx: bytes | None = None
    for line in read_data("escpos/issue_dle_eot_status_replies.hex").decode("ascii").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        direction, _, hexbytes = line.partition(" ")
        data = bytes.fromhex(hexbytes)
        if direction == "TX":
            tx = data
        elif direction == "RX":
            assert tx is not None and len(data) == 1
            pairs.append((tx, data[0]))
            tx = None
    return pairs


def test_capture_file_has_both_exchanges() -> None:
    assert captured_exchanges() == [(bytes.fromhex("100401"), 0x16), (bytes.fromhex("100404"), 0x72)]


def test_captured_printer_status_0x16() -> None:
    # Epson on COM1 answering DLE EOT 1 with 0x16: online; bit 2 is the cash
    # drawer connector pin, which says nothing about the printer's health.
    (request, reply), _ = captured_exchanges()
    assert request == status_request(1)
    assert parse_printer_status(reply) == PrinterStatusByte(
        drawer_pin3_high=True, offline=False, waiting_online_recovery=False, feed_button_pressed=False
    )


def test_captured_paper_removed_0x72() -> None:
    _, (request, reply) = captured_exchanges()
    assert request == status_request(4)
    assert parse_paper_sensor(reply) == PaperSensor(near_end=False, out=True)


VARIABLE_BITS = {
    1: {0x04: "drawer_pin3_high", 0x08: "offline", 0x20: "waiting_online_recovery", 0x40: "feed_button_pressed"},
    2: {0x04: "cover_open", 0x08: "feed_button_feeding", 0x20: "paper_end_stop", 0x40: "error"},
    3: {0x04: "recoverable", 0x08: "autocutter", 0x20: "unrecoverable", 0x40: "auto_recoverable"},
}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_variable_bit(n: int) -> None:
    parse = PARSERS[n]
    assert not any(vars(parse(0x12)).values())
    for bit, field in VARIABLE_BITS[n].items():
        flags = vars(parse(0x12 | bit))
        assert flags[field] is True
        assert [k for k, v in flags.items() if v] == [field]
    assert all(vars(parse(0x12 | 0x04 | 0x08 | 0x20 | 0x40)).values())


def test_paper_sensor_bits() -> None:
    assert parse_paper_sensor(0x12) == PaperSensor(near_end=False, out=False)
    for near in (0x04, 0x08, 0x0C):
        assert parse_paper_sensor(0x12 | near) == PaperSensor(near_end=True, out=False)
    for out in (0x20, 0x40, 0x60):
        assert parse_paper_sensor(0x12 | out) == PaperSensor(near_end=False, out=True)
    assert parse_paper_sensor(0x7E) == PaperSensor(near_end=True, out=True)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_fixed_bits_checked_for_all_256_values(n: int) -> None:
    for byte in range(256):
        if byte & 0x93 == 0x12:
            PARSERS[n](byte)
        else:
            with pytest.raises(PrinterError, match=f"DLE EOT {n} reply 0x{byte:02X}"):
                PARSERS[n](byte)


def test_error_classes() -> None:
    assert issubclass(PrinterError, DriverError)
    assert issubclass(DriverTimeout, TimeoutError)


def test_printer_status_combination() -> None:
    ok_printer = parse_printer_status(0x12)
    no_cause = parse_offline_cause(0x12)
    no_error = parse_error_cause(0x12)
    assert printer_status(ok_printer, no_cause, no_error, parse_paper_sensor(0x12)) == PrinterStatus(
        online=True, paper="ok", cover_open=False, error=False
    )
    assert printer_status(ok_printer, no_cause, no_error, parse_paper_sensor(0x1E)).paper == "near_end"
    assert printer_status(ok_printer, no_cause, no_error, parse_paper_sensor(0x72)).paper == "out"
    assert printer_status(ok_printer, no_cause, no_error, None).paper == "unknown"
    stopped = parse_offline_cause(0x32)  # printing stopped by paper end
    assert printer_status(ok_printer, stopped, no_error, None).paper == "out"
    assert printer_status(parse_printer_status(0x1A), parse_offline_cause(0x16), no_error, None) == PrinterStatus(
        online=False, paper="unknown", cover_open=True, error=False
    )
    assert printer_status(ok_printer, no_cause, parse_error_cause(0x1A), None).error is True
    assert printer_status(ok_printer, parse_offline_cause(0x52), no_error, None).error is True
    assert ErrorCause(False, False, False, False).any is False
    assert OfflineCause(False, False, False, False) == no_cause


class ReplayPrinter(threading.Thread):
    """Plays the printer side of a pty: answers each DLE EOT n from a reply table."""

    def __init__(self, pty: PtyPair, replies: dict[int, int]) -> None:
        super().__init__(daemon=True)
        self.pty, self.replies = pty, replies
        self.stop = threading.Event()
        self.requests = bytearray()

    def run(self) -> None:
        while not self.stop.is_set():
            if select.select([self.pty.master_fd], [], [], 0.02)[0]:
                self.requests += self.pty.read()
                while len(self.requests) >= 3:
                    request, self.requests[:] = bytes(self.requests[:3]), self.requests[3:]
                    assert request[:2] == b"\x10\x04"
                    if request[2] in self.replies:
                        self.pty.write(bytes((self.replies[request[2]],)))


@pytest.mark.parametrize(
    "replies,expected",
    [
        # Capture 1: n=1 -> 0x16. The other queries answer "nothing to report".
        ({1: 0x16, 2: 0x12, 3: 0x12, 4: 0x12}, PrinterStatus(True, "ok", False, False)),
        # Capture 2: paper roll removed, n=4 -> 0x72.
        ({1: 0x12, 2: 0x12, 3: 0x12, 4: 0x72}, PrinterStatus(True, "out", False, False)),
        # A printer that never answers the roll sensor query.
        ({1: 0x16, 2: 0x12, 3: 0x12}, PrinterStatus(True, "unknown", False, False)),
    ],
)
def test_status_over_a_serial_port_with_captured_replies(replies: dict[int, int], expected: PrinterStatus) -> None:
    pty = PtyPair()
    player = ReplayPrinter(pty, replies)
    player.start()
    printer = EscPosPrinter.open(pty.path)
    try:
        assert printer.status(timeout=0.5) == expected
    finally:
        printer.close()
        player.stop.set()
        player.join()
        pty.close()


def test_wrong_fixed_bits_over_the_wire_raise_printer_error() -> None:
    pty = PtyPair()
    player = ReplayPrinter(pty, {1: 0x00, 2: 0x12, 3: 0x12, 4: 0x12})
    player.start()
    printer = EscPosPrinter.open(pty.path)
    try:
        with pytest.raises(PrinterError, match="0x00"):
            printer.status(timeout=0.5)
    finally:
        printer.close()
        player.stop.set()
        player.join()
        pty.close()
