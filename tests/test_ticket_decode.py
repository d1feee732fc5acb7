"""Tickets through the labels' decoder (issue 19 section 2, last bullet): the QR sheet of
``popkit tickets issue --qr-sheet`` and a ticket printed as a QR on the kit's ESC/POS printer
(the paper redemption point beside the phone's QR) decode with zxing-cpp back to payloads that
the scanner's verdict admits: the reference (kits/tickets.py) and the firmware's verdict.Gate,
run in the real MicroPython."""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta, timezone

import pytest
import zxingcpp
from PIL import Image

from agent.drivers.escpos import EscPosPrinter
from agent.drivers.receipt import Receipt
from kits.tickets import check, issue, load_or_create_key, parse, verify
from popkit.cli import main
from simulators.printer import PrinterSimulator
from tests.conftest import wait_until
from tests.device.test_ticket_firmware import device_json, gate_config

NOW = datetime.now(timezone.utc).replace(microsecond=0)
FROM, UNTIL = NOW - timedelta(hours=1), NOW + timedelta(hours=10)


@pytest.fixture
def issued(tmp_path):
    """7 GA tickets for FEST25 from the CLI: (payloads in CSV order, the event key, the sheet)."""
    out, key_file, sheet = tmp_path / "t.csv", tmp_path / "FEST25.key", tmp_path / "sheet.png"
    assert main(["tickets", "issue", "--event", "FEST25", "--count", "7", "--out", str(out), "--key-file",
                 str(key_file), "--valid-from", FROM.isoformat(), "--valid-until", UNTIL.isoformat(),
                 "--qr-sheet", str(sheet)]) == 0
    with open(out, newline="") as f:
        payloads = [row["payload"] for row in csv.DictReader(f)]
    key, created = load_or_create_key("FEST25", key_file)
    assert not created and len(payloads) == 7
    return payloads, key, sheet


def firmware_verdicts(tmp_path, key, payloads: list[str], now: int) -> list[str]:
    """What the scanner's firmware (verdict.Gate, in MicroPython) says at the door for each scan."""
    (tmp_path / "config.json").write_text(json.dumps(gate_config(key)))
    return device_json("""
import json, verdict
gate = verdict.Gate(json.load(open('config.json')), '.')
for line in open('in.txt'):
    print(json.dumps(gate.decide(line.strip(), %d)[0]))
""" % now, tmp_path, payloads)


def test_qr_sheet_decodes_in_csv_order_to_tickets_the_scanner_admits(issued, tmp_path) -> None:
    payloads, key, sheet = issued
    found = zxingcpp.read_barcodes(Image.open(sheet))
    assert all(r.format.name == "QRCode" for r in found)
    # The sheet is 5 per row, left to right, top to bottom: reading order is CSV order.
    found.sort(key=lambda r: (r.position.top_left.y // 50, r.position.top_left.x))
    decoded = [r.text for r in found]
    assert decoded == payloads
    for p in decoded:
        t = verify(key, p, NOW)
        assert (t.event, t.tier) == ("FEST25", "GA")
    fw_dir = tmp_path / "fw"
    fw_dir.mkdir()
    assert firmware_verdicts(fw_dir, key, decoded, int(NOW.timestamp())) == ["admitted"] * 7


def print_ticket(payload: str) -> str:
    """The ticket on the ESC/POS simulator through the real driver; the QR read back from its PNG."""
    sim = PrinterSimulator().start()
    try:
        with EscPosPrinter.open(sim.path) as printer:
            t = parse(payload)
            printer.print_job(Receipt().text(f"{t.event} {t.tier}", bold=True).text(t.ticket_id)
                              .qr(payload, module=6).cut())
            wait_until(lambda: sim.roll.cuts == 1, 5, interval=0.01, what="the cut")
        assert sim.roll.codes("qr") == [payload]  # the bytes on the wire carry the payload
        found = zxingcpp.read_barcodes(sim.roll.to_png())
    finally:
        sim.stop()
    assert [r.format.name for r in found] == ["QRCode"]
    return found[0].text


def test_ticket_printed_on_the_receipt_printer_decodes_and_is_admitted(issued, tmp_path) -> None:
    payloads, key, _ = issued
    decoded = print_ticket(payloads[0])
    assert decoded == payloads[0]
    assert check(key, decoded, NOW) == "admitted"
    now = int(NOW.timestamp())
    # The same paper ticket scanned twice: the second is the door's double entry.
    assert firmware_verdicts(tmp_path, key, [decoded, decoded], now) == ["admitted", "already_admitted"]


def test_a_forged_paper_ticket_decodes_but_is_refused(issued, tmp_path) -> None:
    _, key, _ = issued
    t = parse(issue(key, "FEST25", "FORGED1", "GA", FROM, UNTIL))
    vip = t.payload.replace(":GA:", ":VIP:")  # tier upgraded by hand: the MAC no longer matches
    decoded = print_ticket(vip)
    assert decoded == vip
    assert check(key, decoded, NOW) == "bad_signature"
    assert firmware_verdicts(tmp_path, key, [decoded], int(NOW.timestamp())) == ["bad_signature"]
