"""Labels (issue 19 section 2): templates rendered for TSPL, ZPL and ESC/POS, printed through the
real drivers into the simulators, and the barcodes decoded back from the PNG with zxing-cpp.

No TSPL or ZPL captures exist in the shared test data (only ESC/POS, JBD and VE.Direct), so the
TSPL wire is checked against the simulator, whose bars come from python-barcode and segno.
"""

from __future__ import annotations

import pytest
import zxingcpp
from pydantic import ValidationError

from agent.drivers.escpos import EscPosPrinter
from agent.drivers.printer import CorruptStatus, InvalidPrintJob, PrinterNotReady
from agent.drivers.receipt import Receipt
from agent.drivers.tspl import TsplPrinter, parse_status
from agent.errors import DriverTimeout
from kits.retail.labels import (
    TEMPLATES,
    BarcodePlacement,
    LabelError,
    LabelTemplate,
    TextField,
    escpos_job,
    layout,
    product_fields,
    render_tspl,
    render_zpl,
    template,
)
from kits.retail.sku import alnum_sku, ean13_check, is_ean13, rcn13
from simulators.printer import PrinterSimulator
from simulators.pty import PtyPair
from simulators.tspl import TsplSimulator
from tests.conftest import wait_until

TEE = {"sku": rcn13(1234), "name": "Tour Tee", "variant": "Black M", "price": "25.00 EUR"}
POSTER = {"sku": alnum_sku("pst", "a2"), "name": "Poster A2", "price": "12.00 EUR"}


@pytest.fixture
def tspl():
    sim = TsplSimulator().start()
    printer = TsplPrinter.open(sim.path, status_timeout=2.0)
    yield sim, printer
    printer.close()
    sim.stop()
    assert sim.error is None


def decode(label) -> list[tuple[str, str]]:
    return [(r.format.name, r.text) for r in zxingcpp.read_barcodes(label.to_png())]


# --- templates and renderers ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_each_builtin_template_renders_tspl_zpl_and_escpos(name: str) -> None:
    t = template(name)
    tspl = render_tspl(t, TEE, copies=2).decode("ascii").split("\r\n")
    assert tspl[0] == f"SIZE {t.width_mm:g} mm,{t.height_mm:g} mm"
    assert tspl[1:4] == [f"GAP {t.gap_mm:g} mm,0 mm", "DIRECTION 1", "CLS"]
    assert tspl[-2:] == ["PRINT 1,2", ""]
    assert any(line.startswith("TEXT ") and '"Tour Tee"' in line for line in tspl)
    symbol = [line for line in tspl if line.startswith(("BARCODE", "QRCODE"))]
    assert len(symbol) == 1
    if t.barcode.symbology == "qr":
        assert symbol[0].endswith(f'"{TEE["sku"]}"')
    else:  # a numeric SKU picks EAN-13; the printer is sent the 12 data digits
        assert '"EAN13"' in symbol[0] and symbol[0].endswith(f'"{TEE["sku"][:12]}"')

    zpl = render_zpl(t, TEE).decode()
    assert zpl.startswith("^XA") and zpl.rstrip().endswith("^XZ") and f"^PW{t.width_dots}" in zpl
    assert ("^BQN" if t.barcode.symbology == "qr" else "^BEN") in zpl

    job = escpos_job(t, TEE)
    assert [b["kind"] for b in job["blocks"]][-2:] == ["qr" if t.barcode.symbology == "qr" else "barcode", "cut"]


def test_alphanumeric_sku_picks_code128_everywhere() -> None:
    t = template("price-50x25")
    assert '"128"' in render_tspl(t, POSTER).decode()
    assert "^BCN" in render_zpl(t, POSTER).decode()
    assert layout(t, POSTER).barcode.symbology == "code128"


def test_builtin_widths_in_dots_at_203_dpi() -> None:
    assert [template(n).width_dots for n in ("shelf-40x30", "price-50x25", "tag-62")] == [320, 400, 496]


# --- TSPL through the driver into the simulator, decoded back ------------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("product", [TEE, POSTER], ids=["rcn13", "alnum"])
def test_tspl_label_prints_and_its_barcode_decodes_to_the_sku(tspl, name: str, product: dict) -> None:
    sim, printer = tspl
    printer.print_job(render_tspl(template(name), product))
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the label")
    assert sim.bad_commands == []
    label = sim.labels[0]
    assert label.copies == 1
    assert product["name"] in label.texts and product["price"] in label.texts
    decoded = decode(label)
    assert len(decoded) == 1, decoded
    fmt, text = decoded[0]
    assert text == product["sku"]
    if template(name).barcode.symbology == "qr":
        assert fmt == "QRCode"
    elif product is TEE:
        assert fmt == "EAN13"
        assert is_ean13(text) and int(text[12]) == ean13_check(text[:12])
    else:
        assert fmt == "Code128"


def test_copies_and_several_labels_in_one_stream(tspl) -> None:
    sim, printer = tspl
    t = template("shelf-40x30")
    printer.print_job(render_tspl(t, TEE, copies=3) + render_tspl(t, POSTER))
    wait_until(lambda: len(sim.labels) == 2, 5, interval=0.01, what="two label designs")
    assert [lab.copies for lab in sim.labels] == [3, 1]
    assert [decode(lab)[0][1] for lab in sim.labels] == [TEE["sku"], POSTER["sku"]]


def test_ready_printer_status(tspl) -> None:
    sim, printer = tspl
    raw = printer.raw_status()
    assert raw.problems == [] and not raw.printing
    status = printer.status()
    assert status.can_print and status.paper == "ok"


@pytest.mark.parametrize("flag, fault", [("paper_out", "paper out"), ("head_open", "cover open"),
                                         ("ribbon_out", "printer error"), ("paper_jam", "printer error")])
def test_faults_refuse_the_job_and_nothing_is_sent(tspl, flag: str, fault: str) -> None:
    sim, printer = tspl
    sim.set_state(**{flag: True})
    assert getattr(printer.raw_status(), flag)
    with pytest.raises(PrinterNotReady) as err:
        printer.print_job(render_tspl(template("shelf-40x30"), TEE))
    assert fault in str(err.value)
    assert sim.model.commands == []  # only status requests went over the wire
    sim.set_state(**{flag: False})
    printer.print_job(render_tspl(template("shelf-40x30"), TEE))
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the label after the fault cleared")


def test_paper_out_printer_holds_what_it_receives_and_prints_it_on_load(tspl) -> None:
    sim, printer = tspl
    sim.set_state(paper_out=True)
    printer.write(render_tspl(template("shelf-40x30"), TEE))  # past the driver's check, as a race would
    wait_until(lambda: len(sim.model.commands) == 9, 5, interval=0.01, what="the job's commands")
    assert sim.labels == []
    sim.set_state(paper_out=False)
    assert len(sim.labels) == 1 and decode(sim.labels[0])[0][1] == TEE["sku"]


def test_status_byte_bits_parse() -> None:
    s = parse_status(bytes([0b1010_0101]))
    assert (s.head_open, s.paper_jam, s.paper_out, s.printing, s.over_temperature) == (True, False, True, True, True)
    assert s.problems == ["head open", "paper out", "over temperature"]
    for bad in (b"", b"\x00\x00"):
        with pytest.raises(CorruptStatus, match="one byte"):
            parse_status(bad)


def test_corrupt_status_reply_is_refused_and_counted(tspl) -> None:
    sim, printer = tspl
    sim.model.corrupt_next_status(b"\x00\xff\x13")
    with pytest.raises(CorruptStatus):
        printer.status()
    assert printer.corrupt_replies == 1
    assert printer.status().can_print  # the next exchange is clean


def test_silent_printer_times_out() -> None:
    pair = PtyPair()  # a port with nobody on the other end
    printer = TsplPrinter.open(pair.path, status_timeout=0.2)
    try:
        with pytest.raises(DriverTimeout, match="did not answer <ESC>!"):
            printer.status()
    finally:
        printer.close()
        pair.close()


def test_receipt_refused_by_the_tspl_driver(tspl) -> None:
    _, printer = tspl
    with pytest.raises(InvalidPrintJob, match="TSPL"):
        printer.print_job(Receipt().text("hello"))


def test_self_test_prints_a_decodable_label(tspl) -> None:
    sim, printer = tspl
    assert printer.self_test() == []
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the self-test label")
    assert decode(sim.labels[0]) == [("Code128", "SELFTEST")]


def test_simulator_counts_bad_commands_with_reasons(tspl) -> None:
    sim, printer = tspl
    printer.write(b'TEXT 10,10,"3",0,1,1,"too early"\r\n'
                  b"FEED 10\r\n"
                  b'SIZE 40 mm,30 mm\r\nCLS\r\n'
                  b'BARCODE 10,10,"EAN13",50,1,0,2,2,"0400000000016"\r\n'
                  b'BARCODE 10,10,"UPCA",50,1,0,2,2,"123"\r\n'
                  b'TEXT 10,10,"9",0,1,1,"x"\r\n'
                  b'TEXT 300,10,"3",0,1,1,"off the edge"\r\n'
                  b'QRCODE 10,10,M,4,A,0,"unterminated\r\n'
                  b"PRINT 1\r\n")
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the PRINT")
    reasons = [reason for _, reason in sim.bad_commands]
    assert len(reasons) == 7, reasons
    assert "SIZE and CLS first" in reasons[0]
    assert reasons[1] == "unknown command 'FEED'"
    assert "wrong check digit (should be 5)" in reasons[2]
    assert "'UPCA' is not supported" in reasons[3]
    assert "font '9'" in reasons[4]
    assert "runs off" in reasons[5]
    assert reasons[6] == "unterminated string"
    assert decode(sim.labels[0]) == []  # nothing bad was drawn


# --- ESC/POS label mode through the existing printer simulator -----------------------------------


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_escpos_label_prints_on_the_receipt_printer_with_the_sku_in_its_symbol(name: str) -> None:
    sim = PrinterSimulator().start()
    printer = EscPosPrinter.open(sim.path)
    try:
        printer.print_job(Receipt.from_dict(escpos_job(template(name), TEE)))
        wait_until(lambda: sim.roll.cuts == 1, 5, interval=0.01, what="the cut")
    finally:
        printer.close()
        sim.stop()
    # The simulator decodes the GS k / GS ( k data from the bytes (its PNG draws symbols as boxes).
    kind = "qr" if template(name).barcode.symbology == "qr" else "barcode"
    codes = sim.roll.codes(kind)
    assert codes == [TEE["sku"]] and is_ean13(codes[0])
    assert "Tour Tee" in sim.roll.text and "25.00 EUR" in sim.roll.text


# --- refusals ------------------------------------------------------------------------------------


def test_wrong_ean13_check_digit_is_refused() -> None:
    t = LabelTemplate(name="t", width_mm=40, height_mm=30,
                      barcode=BarcodePlacement(symbology="ean13", x_mm=2, y_mm=9))
    good = TEE["sku"]
    wrong = good[:12] + str((int(good[12]) + 1) % 10)
    with pytest.raises(LabelError, match=f"EAN-13 '{wrong}' is not 13 digits ending in the right check digit"):
        render_tspl(t, {"sku": wrong, "name": "x"})
    with pytest.raises(LabelError, match="cannot choose a barcode"):  # auto: the SKU rules say why
        render_tspl(template("shelf-40x30"), {"sku": wrong, "name": "x"})


@pytest.mark.parametrize("value, why", [("CAFÉ", "cannot carry 'É'"), ("5€", "cannot carry '€'"), ("A\tB", "control characters"),
                                        ('A"B', "quotes and backslashes")])
def test_code128_value_it_cannot_carry_is_refused(value: str, why: str) -> None:
    t = LabelTemplate(name="t", width_mm=50, height_mm=25,
                      barcode=BarcodePlacement(symbology="code128", x_mm=2, y_mm=9))
    with pytest.raises(LabelError, match=why):
        render_zpl(t, {"sku": "X1", "name": "x", "barcode": value})


def test_text_that_does_not_fit_is_refused() -> None:
    with pytest.raises(LabelError, match=r"name 'A very long product name' is 24 characters; 19 fit at font 3 x1"):
        render_tspl(template("shelf-40x30"), dict(TEE, name="A very long product name"))


def test_barcode_that_does_not_fit_is_refused() -> None:
    t = LabelTemplate(name="narrow", width_mm=30, height_mm=30,
                      barcode=BarcodePlacement(symbology="code128", x_mm=2, y_mm=5))
    with pytest.raises(LabelError, match="code128 'ABCDEFGHIJKL' is 334 dots wide at module 2; from 2 mm only 204 fit"):
        layout(t, {"sku": "X1", "name": "x", "barcode": "ABCDEFGHIJKL"})
    with pytest.raises(LabelError, match="QR data is 300 bytes"):
        layout(template("tag-62"), dict(TEE, barcode="x" * 300))


def test_bad_templates_and_products_are_refused() -> None:
    with pytest.raises(ValidationError, match="field price at"):
        LabelTemplate(name="t", width_mm=40, height_mm=30, fields=(TextField(field="price", x_mm=45, y_mm=1),))
    with pytest.raises(ValidationError):
        LabelTemplate(name="t", width_mm=40, height_mm=30, barcode={"symbology": "pdf417", "x_mm": 1, "y_mm": 1})
    with pytest.raises(LabelError, match="no label template 'huge'; built-in: price-50x25, shelf-40x30, tag-62"):
        template("huge")
    with pytest.raises(LabelError, match="product has no sku"):
        render_tspl(template("shelf-40x30"), {"name": "x"})
    with pytest.raises(LabelError, match="copies must be 1..999"):
        render_tspl(template("shelf-40x30"), TEE, copies=0)
    with pytest.raises(LabelError, match="cannot be printed on labels"):
        render_tspl(template("shelf-40x30"), dict(TEE, name='12" record'))


def test_catalog_product_prints_its_current_price_and_variants(tspl) -> None:
    from kits.retail.catalog import PriceVersion, Product, reprice

    tee = Product(sku=alnum_sku("tee", "blk", "m"), name="Tour Tee", stock=5, kit="kit-a", event="FEST25",
                  variants={"size": "M", "colour": "Black"},
                  prices=(PriceVersion(version=1, price=2500, tax_bp=2000, from_ms=0),))
    tee = reprice(tee, 1999, 2000, 1_000)
    fields = product_fields(tee)
    assert (fields["price"], fields["variant"]) == (1999, "Black / M")
    sim, printer = tspl
    printer.print_job(render_tspl(template("shelf-40x30"), fields))
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the label")
    assert sim.labels[0].texts == ["Tour Tee", "Black / M", "19.99 EUR"]
    assert decode(sim.labels[0]) == [("Code128", "TEE-BLK-M")]
    with pytest.raises(LabelError, match="product price"):
        render_tspl(template("shelf-40x30"), dict(fields, currency="XXXX"))


def test_usb_class_device_path_prints_through_the_raw_file_driver() -> None:
    # /dev/usb/lp* is opened as a plain file, not through pyserial; the simulator's pty slave is a
    # real device file, so the same byte path runs here.
    from agent.drivers.tspl import RawDevice

    with TsplSimulator() as sim:
        printer = TsplPrinter(RawDevice(sim.path), status_timeout=2.0)
        try:
            assert printer.status().can_print
            printer.print_job(render_tspl(template("price-50x25"), POSTER))
            wait_until(lambda: sim.labels, 5, interval=0.01, what="the label")
        finally:
            printer.close()
        assert decode(sim.labels[0]) == [("Code128", POSTER["sku"])]


def test_missing_usb_printer_is_a_clear_error() -> None:
    from agent.errors import PrinterError

    with pytest.raises(PrinterError, match="cannot open label printer port /dev/usb/lp97"):
        TsplPrinter.open("/dev/usb/lp97")


def test_escpos_label_png_decodes_to_the_sku() -> None:
    sim = PrinterSimulator().start()
    printer = EscPosPrinter.open(sim.path)
    try:
        printer.print_job(Receipt.from_dict(escpos_job(template("price-50x25"), POSTER)))
        wait_until(lambda: sim.roll.cuts == 1, 5, interval=0.01, what="the cut")
    finally:
        printer.close()
        sim.stop()
    found = [(r.format.name, r.text) for r in zxingcpp.read_barcodes(sim.roll.to_png())]
    assert found == [("Code128", POSTER["sku"])]


def test_non_ascii_text_is_sent_as_utf8_under_codepage(tspl) -> None:
    sim, printer = tspl
    cafe = {"sku": alnum_sku("caf", "1"), "name": "Café crème", "price": "3.50 EUR"}
    data = render_tspl(template("price-50x25"), cafe)
    assert data.startswith(b"CODEPAGE UTF-8\r\n") and "Café crème".encode() in data
    assert not render_tspl(template("price-50x25"), POSTER).startswith(b"CODEPAGE")
    printer.print_job(data)
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the label")
    assert sim.bad_commands == [] and sim.labels[0].texts[0] == "Café crème"
