"""One contract for every Printer backend: the real ESC/POS driver over the pty simulator
(real wire bytes through pyserial) and the in-memory SimulatedPrinter used for demos.

What a crew sees: a receipt comes out with its text, QR code, barcode and a cut; a
printer with no paper or an open cover gets nothing sent to it and says what to do;
an unplugged printer is a clear error, not a hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import pytest

from agent.drivers.escpos import EscPosPrinter
from agent.drivers.printer import CorruptStatus, InvalidPrintJob, Printer, PrinterNotReady, PrinterStatus
from agent.drivers.receipt import Receipt
from agent.errors import DriverError, DriverTimeout, PrinterError
from agent.readiness import fault, warning
from simulators.printer import PrinterModel, PrinterSimulator, SimulatedPrinter

DEVICE = "printer-1"


@dataclass
class Rig:
    """A printer backend and the simulated printer behind it."""

    name: str
    printer: Printer
    model: PrinterModel  # the verbs: paper_out(), load_paper(), open_cover(), ...
    vanish: Callable[[], None]
    reopen: Callable[[], Printer]  # a fresh connection to the same printer


def pty_rig() -> tuple[Rig, Callable[[], None]]:
    sim = PrinterSimulator()
    sim.start()

    def reopen() -> Printer:
        return EscPosPrinter.open(sim.path, device_id=DEVICE, status_timeout=0.3)

    rig = Rig("escpos-over-pty", reopen(), sim.model, sim.vanish, reopen)
    return rig, lambda: (rig.printer.close(), sim.stop())


def memory_rig() -> tuple[Rig, Callable[[], None]]:
    model = PrinterModel()

    def reopen() -> Printer:
        return SimulatedPrinter(model, device_id=DEVICE)

    rig = Rig("in-memory", reopen(), model, model.vanish, reopen)
    return rig, rig.printer.close


@pytest.fixture(params=["escpos-over-pty", "in-memory"])
def rig(request):
    made, cleanup = (pty_rig if request.param == "escpos-over-pty" else memory_rig)()
    yield made
    cleanup()


def ticket(code: str) -> Receipt:
    return (
        Receipt()
        .text("PopKit Summer Fest", bold=True, width=2, height=2, align="center")
        .text(f"Ticket {code}\nGate B")
        .qr(f"https://popkit.example/t/{code}")
        .barcode(code)
        .feed(2)
        .cut()
    )


OK = PrinterStatus(online=True, paper="ok", cover_open=False, error=False)


def test_print_receipt_comes_out_with_text_qr_barcode_and_cut(rig: Rig) -> None:
    rig.printer.print_job(ticket("T-0001"))
    roll = rig.model.roll
    assert "PopKit Summer Fest" in roll.text
    assert "Ticket T-0001" in roll.text and "Gate B" in roll.text
    assert roll.codes("qr") == ["https://popkit.example/t/T-0001"]
    assert roll.codes("barcode") == ["T-0001"]
    assert roll.cuts == 1
    assert bytes(rig.model.received) == ticket("T-0001").encode()
    title = next(line for line in roll.lines if line.text == "PopKit Summer Fest")
    assert (title.bold, title.width, title.height, title.align) == (True, 2, 2, "center")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, OK),
        ({"paper": "near_end"}, PrinterStatus(online=True, paper="near_end", cover_open=False, error=False)),
        ({"paper": "out"}, PrinterStatus(online=False, paper="out", cover_open=False, error=False)),
        ({"cover_open": True}, PrinterStatus(online=False, paper="ok", cover_open=True, error=False)),
        ({"error": "autocutter"}, PrinterStatus(online=False, paper="ok", cover_open=False, error=True)),
        ({"online": False}, PrinterStatus(online=False, paper="ok", cover_open=False, error=False)),
    ],
    ids=["ready", "paper-near-end", "paper-out", "cover-open", "error", "offline"],
)
def test_status_reports_printer_state(rig: Rig, change: dict, expected: PrinterStatus) -> None:
    rig.model.set_state(**change)
    assert rig.printer.status() == expected


def test_nothing_is_sent_while_paper_is_out(rig: Rig) -> None:
    rig.model.paper_out()
    with pytest.raises(PrinterNotReady, match="paper out, load a roll") as caught:
        rig.printer.print_job(ticket("T-0002"))
    assert caught.value.problems == [fault(DEVICE, "paper out", "load a roll")]
    assert rig.model.received == b""
    rig.model.load_paper()
    rig.printer.print_job(ticket("T-0002"))
    assert rig.model.roll.codes("barcode") == ["T-0002"]


def test_nothing_is_sent_while_the_cover_is_open(rig: Rig) -> None:
    rig.model.open_cover()
    with pytest.raises(PrinterNotReady, match="cover open, close the cover"):
        rig.printer.print_job(ticket("T-0003"))
    assert rig.model.received == b""


def test_paper_near_end_still_prints(rig: Rig) -> None:
    rig.model.paper_low()
    rig.printer.print_job(ticket("T-0004"))
    assert rig.model.roll.codes("qr") == ["https://popkit.example/t/T-0004"]


def test_invalid_job_is_refused_before_any_byte_is_sent(rig: Rig) -> None:
    with pytest.raises(InvalidPrintJob, match="CODE128"):
        rig.printer.print_job(Receipt().barcode("café"))
    with pytest.raises(InvalidPrintJob, match="control bytes"):
        rig.printer.print_job(Receipt().text("bell\x07"))
    assert rig.model.received == b"" and rig.model.status_requests == []


def test_vanished_printer_is_a_clear_driver_error(rig: Rig) -> None:
    rig.vanish()
    with pytest.raises(DriverError):
        rig.printer.status()
    with pytest.raises(DriverError):
        rig.printer.print_job(ticket("T-0005"))
    assert rig.model.roll.lines == []


def test_switched_off_printer_times_out(rig: Rig) -> None:
    rig.model.set_state(powered=False)
    with pytest.raises(DriverTimeout, match="did not answer DLE EOT 1"):
        rig.printer.status()
    rig.model.set_state(powered=True)
    assert rig.printer.status() == OK


def test_corrupt_status_reply_is_rejected_and_counted(rig: Rig) -> None:
    rig.model.corrupt_next_status(0x00)
    with pytest.raises(CorruptStatus, match="DLE EOT 1 reply 0x00 is not a status byte") as caught:
        rig.printer.status()
    assert isinstance(caught.value, PrinterError)
    assert rig.printer.corrupt_replies == 1
    rig.model.corrupt_next_status(0xFF)
    with pytest.raises(CorruptStatus):
        rig.printer.print_job(ticket("T-0006"))
    assert rig.printer.corrupt_replies == 2 and rig.model.received == b""
    assert rig.printer.status() == OK  # the next exchange is clean again


def test_self_test_on_a_healthy_printer_prints_a_test_label(rig: Rig) -> None:
    assert rig.printer.self_test(DEVICE) == []
    roll = rig.model.roll
    assert f"{DEVICE}: printer self-test" in roll.text
    assert roll.codes("qr") == [f"popkit:selftest:{DEVICE}"]
    assert roll.codes("barcode") == ["SELFTEST"] and roll.cuts == 1


@pytest.mark.parametrize(
    ("change", "problems"),
    [
        ({"paper": "out"}, [fault(DEVICE, "paper out", "load a roll")]),
        ({"cover_open": True}, [fault(DEVICE, "cover open", "close the cover")]),
        ({"error": "unrecoverable"}, [fault(DEVICE, "printer error", "power-cycle the printer")]),
        ({"online": False}, [fault(DEVICE, "printer offline",
                                   "check nothing holds the feed button down, then power-cycle the printer")]),
        ({"powered": False}, [fault(DEVICE, "printer not answering", "check its power and USB cable")]),
    ],
    ids=["paper-out", "cover-open", "error", "offline", "no-answer"],
)
def test_self_test_names_the_fix_and_prints_nothing(rig: Rig, change: dict, problems: list) -> None:
    rig.model.set_state(**change)
    assert rig.printer.self_test(DEVICE) == problems
    assert rig.model.received == b""


def test_self_test_with_paper_low_warns_and_still_prints_the_label(rig: Rig) -> None:
    rig.model.paper_low()
    problems = rig.printer.self_test(DEVICE)
    assert problems == [warning(DEVICE, "paper low", "have a spare roll ready")]
    assert str(problems[0]) == "printer-1: paper low, have a spare roll ready"
    assert rig.model.roll.cuts == 1


def test_self_test_on_a_vanished_printer_is_a_fault_not_a_crash(rig: Rig) -> None:
    rig.vanish()
    [problem] = rig.printer.self_test(DEVICE)
    assert problem.severity == "fault" and problem.device == DEVICE


def test_open_printer_picks_the_backend_asked_for() -> None:
    from agent.drivers.printer import open_printer

    # The simulator is handed in by name (the agent imports no simulators), and chosen only when asked for.
    with open_printer("sim", device_id=DEVICE, named={"sim": SimulatedPrinter}) as printer:
        assert isinstance(printer, SimulatedPrinter) and printer.status() == OK
    with pytest.raises(PrinterError, match="cannot open printer port /dev/nonexistent-printer"):
        open_printer("/dev/nonexistent-printer", named={"sim": SimulatedPrinter})
    with pytest.raises(PrinterError, match="cannot open printer port sim"):
        open_printer("sim")


@pytest.mark.skipif(not os.environ.get("POPKIT_PRINTER_PORT"),
                    reason="no real printer attached (set POPKIT_PRINTER_PORT=/dev/ttyUSB0)")
def test_real_printer_answers_status_and_prints_its_self_test_label() -> None:
    from agent.drivers.printer import open_printer

    with open_printer(os.environ["POPKIT_PRINTER_PORT"], device_id=DEVICE) as printer:
        status = printer.status()
        assert status.online and status.paper in ("ok", "near_end"), f"load paper and close the cover: {status}"
        assert [p for p in printer.self_test(DEVICE) if p.severity == "fault"] == []
