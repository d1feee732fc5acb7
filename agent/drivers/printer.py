"""The receipt printer interface every backend implements, and what the kit does with one.

Backends: :class:`agent.drivers.escpos.EscPosPrinter` (a real ESC/POS printer over
pyserial) and ``simulators.printer.SimulatedPrinter`` (in memory, for laptop
demos and tests). One contract test suite (tests/test_printer_contract.py) runs
against both.

A backend **must** implement :meth:`Printer.status` (ask the printer now; raise
:class:`~agent.errors.DriverTimeout` if it does not answer, a
:class:`~agent.errors.PrinterError` if the link fails or the reply breaks the
spec), :meth:`Printer.write` (hand raw ESC/POS bytes to the printer) and
:meth:`Printer.close`. It **may** override :meth:`Printer.print_job` and
:meth:`Printer.self_test`, but the policy here is the point: never send a job
into a printer that cannot print it now, and confirm the printer still answers
afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from agent.errors import DriverError, DriverTimeout, PrinterError
from agent.readiness import Problem, fault, warning

if TYPE_CHECKING:
    from agent.drivers.receipt import Receipt

Paper = Literal["ok", "near_end", "out", "unknown"]


class InvalidPrintJob(PrinterError, ValueError):
    """The job can never print as it is (bad content); retrying will not help."""


class PrinterNotReady(PrinterError):
    """The printer answers but cannot print now (paper out, cover open, error, offline).

    Nothing was sent. ``problems`` says what the crew should do.
    """

    def __init__(self, status: PrinterStatus, problems: list[Problem]) -> None:
        self.status = status
        self.problems = problems
        super().__init__("; ".join(f"{p.what}, {p.fix}" for p in problems) or "printer not ready")


class CorruptStatus(PrinterError):
    """A status reply that breaks the fixed-bit pattern: line noise, a late reply, a wrong device."""


@dataclass(frozen=True)
class PrinterStatus:
    online: bool
    paper: Paper
    cover_open: bool
    error: bool

    @property
    def can_print(self) -> bool:
        """True when a job sent now would print (paper "unknown" means no roll sensor reply, not "out")."""
        return self.online and self.paper != "out" and not self.cover_open and not self.error


def status_problems(device: str, status: PrinterStatus) -> list[Problem]:
    """What a crew must do about this status; [] when the printer is fine."""
    problems = []
    if status.cover_open:
        problems.append(fault(device, "cover open", "close the cover"))
    if status.paper == "out":
        problems.append(fault(device, "paper out", "load a roll"))
    if status.error:
        problems.append(fault(device, "printer error", "power-cycle the printer"))
    if not status.online and not problems:
        # Offline with the cover shut, paper in and no error: the feed button held, or a stalled printer.
        problems.append(fault(device, "printer offline", "check nothing holds the feed button down, then power-cycle the printer"))
    if status.paper == "near_end":
        problems.append(warning(device, "paper low", "have a spare roll ready"))
    elif status.paper == "unknown":
        problems.append(warning(device, "paper level unknown", "check the roll by eye"))
    return problems


def link_problem(device: str, exc: DriverError) -> Problem:
    if isinstance(exc, DriverTimeout):
        return fault(device, "printer not answering", "check its power and USB cable")
    return fault(device, f"printer link failed ({str(exc)[:60]})", "check its USB cable, then power-cycle the printer")


class Printer(ABC):
    """A receipt printer. Blocking calls: run them in a thread from asyncio code."""

    device_id: str = "printer"
    corrupt_replies: int = 0  # status replies rejected for breaking the spec (backends count them)

    @abstractmethod
    def status(self) -> PrinterStatus:
        """Ask the printer now. DriverTimeout: no answer; PrinterError: link failed or nonsense came back."""

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Hand raw ESC/POS bytes to the printer (no status checks)."""

    @abstractmethod
    def close(self) -> None:
        """Release the port. Safe to call twice."""

    def print_job(self, job: Receipt | bytes) -> None:
        """Print a receipt or label, or raise a DriverError saying why not.

        InvalidPrintJob: the content can never print. PrinterNotReady: nothing was
        sent because the printer cannot print now. DriverTimeout (no answer) or
        another PrinterError (link failed, corrupt reply) before the write: nothing
        was sent; after it: the outcome is unknown (the job may have printed).
        """
        data = job if isinstance(job, bytes) else job.encode()
        if not data:
            raise InvalidPrintJob("empty print job")
        before = self.status()
        if not before.can_print:
            raise PrinterNotReady(before, [p for p in status_problems(self.device_id, before)
                                           if p.severity == "fault"])
        self.write(data)
        # A TM-T20 answers DLE EOT while it prints, so this proves it is still
        # there and took the bytes in order. If paper runs out mid-job the
        # printer keeps the rest in its buffer and finishes after a new roll
        # goes in: that is not a reason to send the job again.
        self.status()

    def test_job(self, device: str) -> Receipt | bytes:
        """What the power-up check prints: a receipt-printer test label (a label printer overrides it)."""
        from agent.drivers.receipt import self_test_label

        return self_test_label(device)

    def self_test(self, device_id: str | None = None) -> list[Problem]:
        """Power-up check: status mapped to crew fixes; prints a test label when it can print."""
        device = device_id or self.device_id
        try:
            status = self.status()
        except DriverError as exc:
            return [link_problem(device, exc)]
        problems = status_problems(device, status)
        if not status.can_print:
            return problems
        try:
            self.print_job(self.test_job(device))
        except PrinterNotReady as exc:
            return problems + [p for p in exc.problems if p not in problems]
        except DriverError as exc:
            return problems + [link_problem(device, exc)]
        return problems

    def __enter__(self) -> Printer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_printer(port: str, device_id: str = "printer",
                 named: Mapping[str, Callable[..., Printer]] | None = None) -> Printer:
    """The backend for ``port``, chosen here and nowhere else.

    A port that ``named`` names opens that backend instead (``{"sim": SimulatedPrinter}``: the
    in-memory simulator, for laptop demos and tests): it is only ever chosen by asking for it, and
    the agent never imports the simulators, whoever wants one hands it in. Anything else is a
    serial device or pyserial URL for the real ESC/POS driver, imported here so the agent imports
    without pyserial.
    """
    if named and port in named:
        return named[port](device_id=device_id)
    from agent.drivers.escpos import EscPosPrinter

    return EscPosPrinter.open(port, device_id=device_id)
