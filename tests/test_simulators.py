"""The real drivers, over pyserial, against the pty simulators."""

from __future__ import annotations

import time

import pytest
import serial

from agent.drivers.escpos import EscPosPrinter, PrinterStatus, status_request
from agent.drivers.vedirect import VEDirectParser, VEDirectReader, battery_reading
from agent.errors import DriverTimeout, PowerBankError
from simulators.printer import EscPosStreamParser, PrinterSimulator
from simulators.vedirect import VEDirectSimulator
from tests.testdata import data_dir, read_data


@pytest.fixture
def bmv():
    # A tiny battery so SOC visibly moves within a test: 0.05 Ah at 10 A is ~5.6 %/s.
    sim = VEDirectSimulator(interval=0.05, capacity_ah=0.05, soc=0.9, hex_every=3)
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def printer_sim():
    sim = PrinterSimulator()
    sim.start()
    yield sim
    sim.stop()


def test_bmv_readings_arrive_and_soc_falls_under_load(bmv: VEDirectSimulator) -> None:
    with VEDirectReader.open(bmv.path) as reader:
        idle = reader.read_reading(timeout=2.0)
        assert idle.i == 0.0 and idle.ttg == -1 and idle.alarm is None
        assert idle.soc == pytest.approx(90.0, abs=0.2)

        bmv.set_load(10.0)
        first = reader.read_reading(timeout=2.0)
        while first.i != -10.0:  # skip samples taken before the load switched on
            first = reader.read_reading(timeout=2.0)
        # Read (not sleep): readings queue up in the port, oldest first.
        deadline = time.monotonic() + 0.6
        later = first
        while time.monotonic() < deadline:
            later = reader.read_reading(timeout=2.0)
        assert later.i == -10.0 and later.p is not None and later.p < 0
        assert later.soc is not None and first.soc is not None
        assert later.soc < first.soc - 1.0
        assert later.v < first.v
        assert later.ttg is not None and later.ttg >= 0  # minutes; this battery is tiny

        # hex_every=3 put HEX frames mid-block; the parser stripped them, no losses.
        assert reader.parser.hex_frames >= 1
        assert reader.parser.blocks_bad == 0


def test_corrupt_block_is_rejected_and_counted(bmv: VEDirectSimulator) -> None:
    with VEDirectReader.open(bmv.path) as reader:
        reader.read_reading(timeout=2.0)
        bmv.inject_corrupt_block()
        deadline = time.monotonic() + 3.0
        while reader.parser.blocks_bad == 0 and time.monotonic() < deadline:
            reader.read_reading(timeout=2.0)
        assert reader.parser.blocks_bad == 1
        assert bmv.corrupt_sent == 1
        reader.read_reading(timeout=2.0)  # and it carries on


def test_low_soc_alarm() -> None:
    sim = VEDirectSimulator(interval=0.05, soc=0.05)
    with sim, VEDirectReader.open(sim.path) as reader:
        assert reader.read_reading(timeout=2.0).alarm == "low_soc"


def test_simulator_stream_parses_with_the_driver_parser() -> None:
    sim = VEDirectSimulator(hex_every=2)
    try:
        stream = b"".join(sim.frame() for _ in range(10))
    finally:
        sim.stop()
    parser = VEDirectParser()
    blocks = parser.feed(stream)
    assert parser.blocks_ok == 20 and parser.blocks_bad == 0 and parser.hex_frames == 5
    assert [battery_reading(b) is not None for b in blocks] == [True, False] * 10
    # Same shape as the real BMV-700 capture: same labels, same order.
    real = VEDirectParser().feed(read_data("vedirect/karioja_bmv700_fw0308.dump"))
    assert [list(b) for b in blocks[:2]] == [list(b) for b in real[:2]]


def test_port_vanishing_raises_power_bank_error() -> None:
    sim = VEDirectSimulator(interval=0.05)
    sim.start()
    with VEDirectReader.open(sim.path) as reader:
        reader.read_reading(timeout=2.0)
        sim.stop()
        with pytest.raises(PowerBankError):
            for _ in range(100):
                reader.read_reading(timeout=1.0)


def test_silent_port_times_out() -> None:
    sim = VEDirectSimulator(interval=10.0)  # not started: nothing is sent
    try:
        with VEDirectReader.open(sim.path) as reader:
            t0 = time.monotonic()
            with pytest.raises(DriverTimeout):
                reader.read_reading(timeout=0.2)
            assert time.monotonic() - t0 < 0.4  # the port's own 0.5 s read timeout doesn't leak through
    finally:
        sim.stop()


def test_stop_is_quick() -> None:
    for sim in (VEDirectSimulator(interval=60.0), PrinterSimulator()):
        sim.start()
        time.sleep(0.05)
        t0 = time.monotonic()
        sim.stop()
        assert time.monotonic() - t0 < 0.2
        assert sim.error is None
        sim.stop()  # idempotent


def test_printer_status_states(printer_sim: PrinterSimulator) -> None:
    with EscPosPrinter.open(printer_sim.path) as printer:
        assert printer.status() == PrinterStatus(online=True, paper="ok", cover_open=False, error=False)
        printer_sim.set_state(paper="near_end")
        assert printer.status() == PrinterStatus(online=True, paper="near_end", cover_open=False, error=False)
        printer_sim.set_state(paper="out")
        assert printer.status() == PrinterStatus(online=False, paper="out", cover_open=False, error=False)
        printer_sim.set_state(paper="ok", cover_open=True)
        assert printer.status() == PrinterStatus(online=False, paper="ok", cover_open=True, error=False)
        printer_sim.set_state(cover_open=False, error="autocutter")
        assert printer.status() == PrinterStatus(online=False, paper="ok", cover_open=False, error=True)
        printer_sim.set_state(error=None)
        assert printer.status().online is True
        assert printer_sim.status_requests == [1, 2, 3, 4] * 6


def test_switched_off_printer_times_out(printer_sim: PrinterSimulator) -> None:
    with EscPosPrinter.open(printer_sim.path) as printer:
        printer_sim.set_state(powered=False)
        t0 = time.monotonic()
        with pytest.raises(DriverTimeout):
            printer.status(timeout=0.3)
        assert time.monotonic() - t0 < 0.6
        printer_sim.set_state(powered=True)
        assert printer.status().online is True


def test_printer_records_real_print_jobs(printer_sim: PrinterSimulator) -> None:
    jobs = sorted((data_dir() / "escpos").glob("escposphp_*.bin"))
    assert len(jobs) == 10
    with EscPosPrinter.open(printer_sim.path) as printer:
        expected = bytearray()
        for job in jobs:
            data = job.read_bytes()
            printer.write(data)
            expected += data
            # A status round trip is a barrier: the simulator handles bytes in order.
            assert printer.status().online is True
        assert printer_sim.received == expected
    assert printer_sim.status_requests == [1, 2, 3, 4] * len(jobs)
    assert not [i for i in printer_sim.items if i.kind == "unknown"]


def test_dle_eot_inside_image_data_is_not_a_status_request(printer_sim: PrinterSimulator) -> None:
    # A 2-byte-wide, 3-row raster image whose pixels happen to read 10 04 01 10 04 02.
    image = b"\x1dv0\x00\x02\x00\x03\x00" + b"\x10\x04\x01\x10\x04\x02"
    with EscPosPrinter.open(printer_sim.path) as printer:
        printer.write(b"\x1b@" + image + b"text\n")
        assert printer.status().paper == "ok"
    assert printer_sim.received == b"\x1b@" + image + b"text\n"
    assert printer_sim.status_requests == [1, 2, 3, 4]


def test_stream_parser_finds_requests_between_commands_of_a_real_job() -> None:
    job = read_data("escpos/escposphp_receipt-with-logo.bin")
    items = EscPosStreamParser().feed(job)
    # Splice a status request after every command, then parse in odd-sized chunks.
    spliced = b"".join(item.raw + status_request(4) for item in items)
    parser, got = EscPosStreamParser(), []
    for i in range(0, len(spliced), 7):
        got += parser.feed(spliced[i : i + 7])
    requests = [item for item in got if item.kind == "status_request"]
    assert len(requests) == len(items)
    assert b"".join(item.raw for item in got if item.kind != "status_request") == job
    assert parser.pending == 0


def test_pyserial_sees_raw_bytes_from_the_pty() -> None:
    # Raw mode matters: a cooked pty would turn the device's \r into \n.
    sim = VEDirectSimulator()
    port = serial.serial_for_url(sim.path, baudrate=19200, timeout=0.5)
    try:
        sim.pty.write(b"\r\n\x00\xff:\t")
        assert port.read(6) == b"\r\n\x00\xff:\t"
    finally:
        port.close()
        sim.stop()
