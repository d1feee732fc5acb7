"""Batch label printing (issue 19 section 2): ``popkit retail labels`` through the real TsplPrinter
into the TSPL simulator, every label decoded back to its SKU with zxing-cpp; refusals print
nothing; a printer out of paper mid-batch says what printed and how to finish."""

from __future__ import annotations

import shlex
from collections import Counter

import pytest
import zxingcpp

from agent.drivers.tspl import TsplPrinter
from agent.labelprint import print_batch
from kits.retail import batch
from kits.retail.catalog import parse_catalog_csv
from kits.retail.labels import template
from kits.retail.sku import is_ean13
from popkit.cli import main
from simulators.tspl import TsplSimulator
from tests.conftest import wait_until

CATALOG = """sku,name,price,tax_rate,stock,kit,event,colour,size
TEE-BLK-M,Tour tee,25.00,20,3,alpha,FEST25,black,M
TEE-BLK-L,Tour tee,25.00,20,2,alpha,FEST25,black,L
0400000000015,Sticker pack,4.00,7.5,4,alpha,FEST25,,
PST-A2,Poster A2,12.00,20,0,alpha,FEST25,,
"""
STOCK = {"TEE-BLK-M": 3, "TEE-BLK-L": 2, "0400000000015": 4}


@pytest.fixture
def catalog_csv(tmp_path):
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG)
    return path


@pytest.fixture
def sim():
    s = TsplSimulator().start()
    yield s
    s.stop()
    assert s.error is None


def decoded_skus(labels) -> Counter:
    """SKU -> labels printed, each SKU read back from the label's PNG (one barcode per label)."""
    out: Counter = Counter()
    for label in labels:
        found = zxingcpp.read_barcodes(label.to_png())
        assert len(found) == 1, found
        text = found[0].text
        if found[0].format.name == "EAN13":
            assert is_ean13(text)
        out[text] += label.copies
    return out


def labels_cli(*args: str) -> int:
    return main(["retail", "labels", *args])


def test_all_stock_prints_one_label_per_unit_and_each_decodes_to_its_sku(sim, catalog_csv, capsys) -> None:
    assert labels_cli(str(catalog_csv), "--template", "shelf-40x30", "--all-stock", "--printer", sim.path) == 0
    out = capsys.readouterr().out
    assert "no stock, no labels: PST-A2" in out and "9 labels printed (3 jobs" in out
    wait_until(lambda: len(sim.labels) == 3, 5, interval=0.01, what="three label designs")
    assert sim.bad_commands == []
    assert decoded_skus(sim.labels) == STOCK


def test_all_stock_of_one_product(sim, catalog_csv) -> None:
    assert labels_cli(str(catalog_csv), "--template", "price-50x25", "--all-stock", "--sku", "0400000000015",
                      "--printer", sim.path) == 0
    wait_until(lambda: sim.labels, 5, interval=0.01, what="the label")
    assert decoded_skus(sim.labels) == {"0400000000015": 4}


def test_reprint_two_skus_three_times(sim, catalog_csv) -> None:
    assert labels_cli(str(catalog_csv), "--template", "shelf-40x30", "--sku", "TEE-BLK-L", "0400000000015",
                      "--copies", "3", "--printer", sim.path) == 0
    wait_until(lambda: len(sim.labels) == 2, 5, interval=0.01, what="two label designs")
    assert [label.copies for label in sim.labels] == [3, 3]
    assert decoded_skus(sim.labels) == {"TEE-BLK-L": 3, "0400000000015": 3}


@pytest.mark.parametrize("bad", ["unknown", "too-long"])
def test_a_refusal_prints_nothing(sim, tmp_path, capsys, bad: str) -> None:
    path = tmp_path / "catalog.csv"
    text = CATALOG
    skus = ["TEE-BLK-M", "NOPE-1"]
    if bad == "too-long":  # 40 characters: 19 fit on the 40 mm label at font 3
        text += "LONG-1,A product name far too long for it,5.00,20,1,alpha,FEST25,,\n"
        skus = ["TEE-BLK-M", "LONG-1"]
    path.write_text(text)
    assert labels_cli(str(path), "--template", "shelf-40x30", "--sku", *skus, "--printer", sim.path) == 1
    err = capsys.readouterr().err
    assert f"refused {skus[1]}: " in err and "nothing printed" in err
    assert ("not in the catalog" if bad == "unknown" else "19 fit") in err
    # Not even a status request: the printer was never opened.
    assert sim.model.received == b"" and sim.labels == []


def test_paper_out_mid_batch_reports_what_printed(sim, catalog_csv) -> None:
    products = batch.select(parse_catalog_csv(CATALOG)[0])
    t = template("shelf-40x30")
    plan = batch.plan(products, t, all_stock=True)
    assert [(j.sku, j.copies) for j in plan.jobs] == list(STOCK.items())

    def roll_runs_out(job) -> None:
        if job.sku == "TEE-BLK-M":
            wait_until(lambda: sim.labels, 5, interval=0.01, what="the first label")
            sim.set_state(paper_out=True)

    with TsplPrinter.open(sim.path, status_timeout=2.0) as printer:
        result = print_batch(printer, "tspl", t, plan.jobs, after_each=roll_runs_out)
    assert not result.complete and "paper out" in result.error
    assert [j.sku for j in result.printed] == ["TEE-BLK-M"]
    assert [j.sku for j in result.not_printed] == ["TEE-BLK-L", "0400000000015"] and result.uncertain == []
    assert decoded_skus(sim.labels) == {"TEE-BLK-M": 3}
    assert batch.remaining(result.not_printed) == {2: ["TEE-BLK-L"], 4: ["0400000000015"]}


def test_paper_out_cli_exits_nonzero_and_its_reprint_lines_finish_the_batch(sim, catalog_csv, capsys) -> None:
    sim.set_state(paper_out=True)
    assert labels_cli(str(catalog_csv), "--template", "shelf-40x30", "--all-stock", "--printer", sim.path) == 3
    err = capsys.readouterr().err
    assert "stopped: printer not ready" in err and "printed: none" in err
    assert "not printed: TEE-BLK-M x3, TEE-BLK-L x2, 0400000000015 x4" in err
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("popkit retail labels ")]
    assert len(lines) == 3  # three counts: 3, 2, 4
    sim.set_state(paper_out=False)
    for line in lines:
        assert main(shlex.split(line)[1:]) == 0
    wait_until(lambda: len(sim.labels) == 3, 5, interval=0.01, what="the finished batch")
    assert decoded_skus(sim.labels) == STOCK


def test_png_dir_preview_writes_decodable_pngs(tmp_path, catalog_csv) -> None:
    out = tmp_path / "png"
    assert labels_cli(str(catalog_csv), "--template", "tag-62", "--all-stock", "--png-dir", str(out)) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["001-TEE-BLK-M-x3.png", "002-TEE-BLK-L-x2.png", "003-0400000000015-x4.png"]
    from PIL import Image

    for p, sku in zip(pngs, STOCK):
        found = zxingcpp.read_barcodes(Image.open(p))
        assert [(r.format.name, r.text) for r in found] == [("QRCode", sku)]


def test_plan_needs_a_selection_and_refuses_every_problem_at_once() -> None:
    products = batch.select(parse_catalog_csv(CATALOG)[0])
    with pytest.raises(ValueError, match="--sku"):
        batch.plan(products, template("shelf-40x30"))
    p = batch.plan(products, template("shelf-40x30"), skus=["X-1", "TEE-BLK-M", "Y-2"], copies=2)
    assert p.refused == ["X-1: not in the catalog", "Y-2: not in the catalog"]
    assert p.labels == 2


def test_stock_above_one_print_command_is_split() -> None:
    text = CATALOG.replace("TEE-BLK-M,Tour tee,25.00,20,3", "TEE-BLK-M,Tour tee,25.00,20,2500")
    p = batch.plan(batch.select(parse_catalog_csv(text)[0]), template("shelf-40x30"), skus=["TEE-BLK-M"],
                   all_stock=True)
    assert [j.copies for j in p.jobs] == [999, 999, 502]


# --- the receipt printer (ESC/POS): no copy count, one job per label ------------------------------


@pytest.fixture
def escpos_sim():
    from simulators.printer import PrinterSimulator

    s = PrinterSimulator().start()
    yield s
    s.stop()


def test_escpos_all_stock_prints_one_job_per_label_each_decoding_to_its_sku(escpos_sim, catalog_csv) -> None:
    assert labels_cli(str(catalog_csv), "--template", "shelf-40x30", "--all-stock", "--kind", "escpos",
                      "--printer", escpos_sim.path) == 0
    wait_until(lambda: escpos_sim.roll.cuts == 9, 5, interval=0.01, what="nine cut labels")
    assert Counter(escpos_sim.roll.codes("barcode")) == STOCK
    # zxing-cpp reports identical symbols on one image once, so the PNG proves each SKU reads back;
    # the count is the wire's. The receipt encoder has no EAN-13 block: the RCN-13 prints as
    # Code128 of the same digits.
    found = zxingcpp.read_barcodes(escpos_sim.roll.to_png())
    assert {(r.format.name, r.text) for r in found} == {("Code128", sku) for sku in STOCK}


def test_escpos_paper_out_stops_between_two_labels_of_one_sku(escpos_sim) -> None:
    from agent.drivers.escpos import EscPosPrinter

    t = template("shelf-40x30")
    plan = batch.plan(batch.select(parse_catalog_csv(CATALOG)[0]), t, all_stock=True, kind="escpos")
    sent = []

    def roll_runs_out(job) -> None:
        sent.append(job.sku)
        if len(sent) == 2:
            wait_until(lambda: escpos_sim.roll.cuts == 2, 5, interval=0.01, what="two labels")
            escpos_sim.paper_out()

    with EscPosPrinter.open(escpos_sim.path, status_timeout=2.0) as printer:
        result = print_batch(printer, "escpos", t, plan.jobs, after_each=roll_runs_out)
    assert "paper out" in result.error and result.uncertain == []
    assert [(j.sku, j.copies) for j in result.printed] == [("TEE-BLK-M", 1)] * 2
    assert batch.remaining(result.not_printed) == {1: ["TEE-BLK-M"], 2: ["TEE-BLK-L"], 4: ["0400000000015"]}
    assert escpos_sim.roll.codes("barcode") == ["TEE-BLK-M"] * 2


def test_a_printer_that_vanishes_mid_batch_leaves_that_job_uncertain(escpos_sim) -> None:
    from agent.drivers.escpos import EscPosPrinter

    t = template("shelf-40x30")
    plan = batch.plan(batch.select(parse_catalog_csv(CATALOG)[0]), t, skus=["TEE-BLK-M", "TEE-BLK-L", "PST-A2"],
                      kind="escpos")

    def unplugged(job) -> None:
        escpos_sim.vanish()

    with EscPosPrinter.open(escpos_sim.path, status_timeout=0.5) as printer:
        result = print_batch(printer, "escpos", t, plan.jobs, after_each=unplugged)
    assert result.error.startswith("printer failed: ")
    assert [j.sku for j in result.printed] == ["TEE-BLK-M"]
    assert [j.sku for j in result.uncertain] == ["TEE-BLK-L"]
    assert [j.sku for j in result.not_printed] == ["PST-A2"]
