"""The print queue: no job is lost to an empty roll, an open cover, an unplugged printer or a restart.

Run against both backends (the real driver over the pty simulator, and the in-memory one).
"""

from __future__ import annotations

import sqlite3

import pytest

from agent.drivers.escpos import EscPosPrinter
from agent.drivers.receipt import Receipt
from agent.errors import DriverError
from agent.printing import PrintQueue, QueueCounts
from simulators.printer import PrinterSimulator
from tests.conftest import wait_until
from tests.test_printer_contract import DEVICE, Rig, rig, ticket  # noqa: F401 - rig is a fixture

FAST = {"min_backoff_s": 0.01, "max_backoff_s": 0.05}


@pytest.fixture
def queue_path(tmp_path):
    return tmp_path / "print-queue.db"


def state_of(queue: PrintQueue, job_id: int) -> str:
    record = queue.job(job_id)
    assert record is not None
    return record.state


def test_queued_job_prints_and_is_counted(rig: Rig, queue_path) -> None:
    with PrintQueue(queue_path, rig.reopen, **FAST) as queue:
        job = queue.enqueue(ticket("T-0100"))
        wait_until(lambda: state_of(queue, job) == "done", what="job printed")
        assert queue.counts() == QueueCounts(queued=0, printed=1, failed=0)
    assert rig.model.roll.codes("barcode") == ["T-0100"]


def test_job_queued_while_paper_is_out_prints_exactly_once_after_a_roll_is_loaded(rig: Rig, queue_path) -> None:
    rig.model.paper_out()
    with PrintQueue(queue_path, rig.reopen, **FAST) as queue:
        job = queue.enqueue(ticket("T-0101"))
        wait_until(lambda: queue.job(job).attempts >= 3, what="the queue retrying while paper is out")
        assert state_of(queue, job) in ("queued", "printing")  # waiting, or its next attempt under way
        assert "paper out, load a roll" in (queue.job(job).error or "")
        assert rig.model.received == b"" and rig.model.roll.lines == []  # nothing sent, nothing printed
        assert queue.counts() == QueueCounts(queued=1, printed=0, failed=0)

        rig.model.load_paper()  # no kick: the queue notices by itself
        wait_until(lambda: state_of(queue, job) == "done", what="job printed after loading paper")
    assert bytes(rig.model.received) == ticket("T-0101").encode()
    assert rig.model.roll.codes("qr") == ["https://popkit.example/t/T-0101"]
    assert rig.model.roll.cuts == 1


def test_cover_open_holds_jobs_in_order_until_it_closes(rig: Rig, queue_path) -> None:
    rig.model.open_cover()
    with PrintQueue(queue_path, rig.reopen, **FAST) as queue:
        jobs = [queue.enqueue(ticket(f"T-02{i}")) for i in range(3)]
        wait_until(lambda: queue.job(jobs[0]).attempts >= 2, what="retries while the cover is open")
        rig.model.close_cover()
        queue.kick()
        wait_until(lambda: queue.counts().printed == 3, what="three jobs printed")
    assert rig.model.roll.codes("barcode") == ["T-020", "T-021", "T-022"]


def test_jobs_survive_an_agent_restart(rig: Rig, queue_path) -> None:
    rig.model.paper_out()
    queue = PrintQueue(queue_path, rig.reopen, **FAST).start()
    first, second = queue.enqueue(ticket("T-0300")), queue.enqueue(ticket("T-0301"))
    wait_until(lambda: queue.job(first).attempts >= 1, what="a first attempt")
    queue.stop()

    rig.model.load_paper()
    with PrintQueue(queue_path, rig.reopen, **FAST) as again:
        wait_until(lambda: again.counts().printed == 2, what="both jobs printed after the restart")
        assert [state_of(again, j) for j in (first, second)] == ["done", "done"]
    assert rig.model.roll.codes("barcode") == ["T-0300", "T-0301"]


def test_job_caught_mid_print_by_a_crash_prints_again_after_restart(queue_path) -> None:
    # The documented duplicate: bytes sent, agent killed before "done" was committed.
    from simulators.printer import SimulatedPrinter

    printer = SimulatedPrinter(device_id=DEVICE)
    queue = PrintQueue(queue_path, lambda: printer, **FAST)
    job = queue.enqueue(ticket("T-0400"))
    queue.stop()
    with sqlite3.connect(queue_path) as db:
        db.execute("UPDATE print_jobs SET state = 'printing' WHERE id = ?", (job,))
    with PrintQueue(queue_path, lambda: printer, **FAST) as again:
        wait_until(lambda: state_of(again, job) == "done", what="the interrupted job printed")
    assert printer.model.roll.codes("barcode") == ["T-0400"]


def test_invalid_job_fails_and_the_next_one_still_prints(rig: Rig, queue_path) -> None:
    with PrintQueue(queue_path, rig.reopen, **FAST) as queue:
        bad = queue.enqueue({"blocks": [{"kind": "qr", "data": ""}]})
        unknown = queue.enqueue({"blocks": [{"kind": "hologram"}]})
        good = queue.enqueue(ticket("T-0500"))
        wait_until(lambda: state_of(queue, good) == "done", what="the good job printed")
        assert state_of(queue, bad) == "failed" and "QR code needs some data" in queue.job(bad).error
        assert state_of(queue, unknown) == "failed" and "not a print job" in queue.job(unknown).error
        assert queue.counts() == QueueCounts(queued=0, printed=1, failed=2)
    assert rig.model.roll.codes("barcode") == ["T-0500"]


def test_unplugged_printer_keeps_the_job_until_a_printer_is_back(queue_path) -> None:
    sim = PrinterSimulator().start()
    port = {"path": sim.path}
    with PrintQueue(queue_path, lambda: EscPosPrinter.open(port["path"], device_id=DEVICE), **FAST) as queue:
        wait_until(lambda: queue.enqueue(ticket("T-0600")), what="enqueue")
        wait_until(lambda: queue.counts().printed == 1, what="first job printed")
        sim.vanish()
        job = queue.enqueue(ticket("T-0601"))
        wait_until(lambda: queue.job(job).attempts >= 2, what="retries against the vanished printer")
        assert state_of(queue, job) == "queued"
        assert isinstance(queue.last_error, DriverError)

        replugged = PrinterSimulator().start()  # the USB adapter comes back (on a new tty)
        try:
            port["path"] = replugged.path
            wait_until(lambda: state_of(queue, job) == "done", what="job printed on the replugged printer")
        finally:
            queue.stop()
            replugged.stop()
    assert sim.roll.codes("barcode") == ["T-0600"]
    assert replugged.roll.codes("barcode") == ["T-0601"]


def test_switched_off_printer_keeps_the_job_and_resumes_when_powered(rig: Rig, queue_path) -> None:
    rig.model.set_state(powered=False)
    with PrintQueue(queue_path, rig.reopen, **FAST) as queue:
        job = queue.enqueue(ticket("T-0700"))
        wait_until(lambda: queue.job(job).attempts >= 2, what="retries while switched off")
        assert "did not answer" in (queue.job(job).error or "")
        rig.model.set_state(powered=True)
        wait_until(lambda: state_of(queue, job) == "done", what="printed once switched on")
    assert rig.model.roll.codes("barcode") == ["T-0700"]


def test_corrupt_status_during_a_job_is_retried_not_lost(rig: Rig, queue_path) -> None:
    printers: list = []

    def open_printer():
        printers.append(rig.reopen())
        return printers[-1]

    rig.model.corrupt_next_status(0x00)
    with PrintQueue(queue_path, open_printer, **FAST) as queue:
        job = queue.enqueue(ticket("T-0800"))
        wait_until(lambda: state_of(queue, job) == "done", what="job printed after a corrupt reply")
        assert queue.job(job).attempts == 2
    assert printers[0].corrupt_replies == 1 and len(printers) == 2  # the port was reopened
    assert rig.model.roll.codes("barcode") == ["T-0800"]


def test_receipt_round_trips_through_its_stored_form() -> None:
    job = ticket("T-0900")
    assert Receipt.from_dict(job.to_dict()) == job
    assert Receipt.from_dict(job.to_dict()).encode() == job.encode()


def test_telemetry_reads_status_through_the_queue_connection(rig: Rig, queue_path) -> None:
    opened: list = []

    def open_printer():
        opened.append(rig.reopen())
        return opened[-1]

    with PrintQueue(queue_path, open_printer, **FAST) as queue:
        rig.model.paper_low()
        assert queue.printer_status().paper == "near_end"
        job = queue.enqueue(ticket("T-1000"))
        wait_until(lambda: state_of(queue, job) == "done", what="job printed")
        rig.model.paper_out()
        assert queue.printer_status().paper == "out" and queue.last_status.paper == "out"
    assert len(opened) == 1  # one connection shared by jobs and status
