"""The simulated printer renders what real ESC/POS streams print and behaves like a TM-T20 without paper."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.drivers.escpos import EscPosPrinter
from agent.errors import PrinterError
from simulators.printer import PrinterModel, PrinterSimulator
from tests.conftest import wait_until
from tests.testdata import data_dir, read_data

CAPTURES = sorted((data_dir() / "escpos").glob("escposphp_*.bin"))


@pytest.mark.parametrize("capture", CAPTURES, ids=[p.stem for p in CAPTURES])
def test_real_capture_renders_without_desync(capture: Path) -> None:
    whole = PrinterModel()
    whole.receive(capture.read_bytes())
    assert whole.parser.pending == 0
    assert not [i for i in whole.items if i.kind == "unknown"]
    assert whole.roll.cuts >= 1 and whole.roll.lines[-1].kind == "cut"
    # The same stream in odd-sized pieces (as a serial line delivers it) prints the same roll.
    pieces, data = PrinterModel(), capture.read_bytes()
    for i in range(0, len(data), 61):
        pieces.receive(data[i : i + 61])
    assert pieces.roll.lines == whole.roll.lines


def render(name: str) -> PrinterModel:
    model = PrinterModel()
    model.receive(read_data(f"escpos/escposphp_{name}.bin"))
    return model


def test_real_receipt_renders_its_lines_logo_and_cut() -> None:
    roll = render("receipt-with-logo").roll
    assert roll.lines[0].kind == "image" and roll.lines[0].text == "[IMAGE 300x236]"
    assert "ExampleMart Ltd." in roll.text
    assert "Thank you for shopping at ExampleMart" in roll.text
    assert roll.drawer_kicks == 1 and roll.cuts == 1


def test_real_codes_render_with_their_data() -> None:
    qr = render("qr-code").roll.codes("qr")
    assert qr.count("Testing 123") >= 2 and len(qr) >= 10  # model, size and error-correction variations
    assert set(render("pdf417-code").roll.codes("pdf417")) == {"Testing 123"}
    barcodes = render("barcode").roll.codes("barcode")
    assert "012ABCDabcd" in barcodes and "213243" in barcodes  # CODE128 sets B and C
    assert "[BARCODE CODE39: ABC 012]" in render("barcode").roll.text


def test_code_page_switches_decode_real_text() -> None:
    text = render("character-encodings").roll.text
    assert "Pchnąć w tę łódź jeża lub ośm skrzyń fig." in text  # ESC t 18, PC852
    assert "В чащах юга жил бы цитрус?" in text  # ESC t 17, PC866


def test_text_size_is_recorded() -> None:
    lines = render("text-size").roll.lines
    assert any(line.text == "Hello" and line.width == 8 and line.height == 8 for line in lines)


def test_roll_renders_to_png(tmp_path) -> None:
    pytest.importorskip("PIL")
    image = render("receipt-with-logo").roll.to_png(tmp_path / "receipt.png")
    assert (tmp_path / "receipt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.width == 576 and image.height > 236
    assert image.getextrema() == (0, 255)  # black print on white paper


def test_paper_out_printer_keeps_received_data_and_prints_it_on_load() -> None:
    # What a TM-T20 does with data sent while it has no paper; our driver never relies on it.
    model = PrinterModel()
    model.paper_out()
    model.receive(b"\x1b@held\n\x1dVB\x00")
    assert model.roll.lines == [] and model.received == b"\x1b@held\n\x1dVB\x00"
    assert model.receive(b"\x10\x04\x04") == b"\x72"  # as a real Epson answered with no roll
    model.load_paper()
    assert model.roll.text.startswith("held") and model.roll.cuts == 1


def test_simulator_vanishing_fails_the_open_port() -> None:
    sim = PrinterSimulator().start()
    with EscPosPrinter.open(sim.path, status_timeout=0.3) as printer:
        assert printer.status().online
        sim.vanish()
        wait_until(lambda: sim.pty.closed, what="pty closed")
        with pytest.raises(PrinterError, match="printer port failed"):
            printer.status()
