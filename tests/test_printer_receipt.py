"""Receipts and labels as ESC/POS bytes (pure encoding, checked byte for byte against Epson's command set)."""

from __future__ import annotations

import pytest

from agent.drivers.printer import InvalidPrintJob
from agent.drivers.receipt import Receipt, self_test_label
from simulators.printer import EscPosStreamParser, PrinterModel


def test_receipt_encodes_to_exact_escpos_bytes() -> None:
    data = Receipt().text("Hi", bold=True, width=2, height=3, align="center").qr("T1", module=4).barcode(
        "T1", height=50).feed(2).cut().encode()
    assert data == (
        b"\x1b@" b"\x1bt\x00"  # init, code page PC437
        b"\x1ba\x01" b"\x1bE\x01" b"\x1d!\x12" b"Hi\n" b"\x1bE\x00\x1d!\x00"
        b"\x1ba\x01"
        b"\x1d(k\x04\x00\x31\x41\x32\x00"  # model 2
        b"\x1d(k\x03\x00\x31\x43\x04"  # module size 4
        b"\x1d(k\x03\x00\x31\x45\x31"  # error correction M
        b"\x1d(k\x05\x00\x31\x50\x30T1"  # store "T1"
        b"\x1d(k\x03\x00\x31\x51\x30\n"  # print
        b"\x1ba\x01" b"\x1dh\x32" b"\x1dw\x02" b"\x1dH\x02" b"\x1dkI\x04{BT1\n"  # CODE128, code set B
        b"\x1bd\x02"
        b"\x1dVB\x03"  # feed 3 and partial cut
    )


def test_long_qr_data_sets_both_length_bytes() -> None:
    data = Receipt().qr("x" * 300).encode()
    assert b"\x1d(k\x2f\x01\x31\x50\x30" + b"x" * 300 in data  # 300 + 3 = 0x012F


def test_brace_in_barcode_data_is_escaped_and_rendered_back() -> None:
    model = PrinterModel()
    model.receive(Receipt().barcode("A{1").encode())
    assert model.roll.codes("barcode") == ["A{1"]


def test_multi_line_text_and_unencodable_characters() -> None:
    model = PrinterModel()
    model.receive(Receipt().text("Zoë\n€5 ☃").encode())
    assert [line.text for line in model.roll.lines] == ["Zoë", "?5 ?"]


@pytest.mark.parametrize(
    ("receipt", "message"),
    [
        (Receipt(), "empty print job"),
        (Receipt().text("x", width=9), "text width must be an integer 1..8"),
        (Receipt().text("x", align="middle"), "align must be left, center or right"),
        (Receipt().text("tab\tstop"), "control bytes 0x09"),
        (Receipt().qr(""), "QR code needs some data"),
        (Receipt().qr("x" * 1274, ecc="H"), "a symbol holds 1273"),
        (Receipt().barcode("x" * 254), "barcode data too long"),
        (Receipt().barcode("ticket\n"), "CODE128 code set B cannot carry"),
        (Receipt().feed(-1), "feed lines must be an integer 0..255"),
    ],
)
def test_content_that_can_never_print_is_refused(receipt: Receipt, message: str) -> None:
    with pytest.raises(InvalidPrintJob, match=message):
        receipt.encode()


@pytest.mark.parametrize("description", [None, {}, {"blocks": [{"kind": "qr"}]}, {"blocks": [{"text": "no kind"}]},
                                         {"blocks": [{"kind": "text", "text": "x", "colour": "red"}]}])
def test_malformed_stored_job_is_invalid(description: object) -> None:
    with pytest.raises(InvalidPrintJob, match="not a print job description"):
        Receipt.from_dict(description)


def test_self_test_label_parses_cleanly_as_one_stream() -> None:
    parser = EscPosStreamParser()
    items = parser.feed(self_test_label("printer-1").encode())
    assert parser.pending == 0
    assert not [i for i in items if i.kind in ("unknown", "status_request")]
    assert [i.name for i in items].count("GS ( k") == 5
