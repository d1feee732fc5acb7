"""Till receipts on the ESC/POS simulator (real driver bytes over a pty): printed at once, decoded back
from the paper, and an empty roll never loses an order: the receipt waits in the print queue."""

from __future__ import annotations

import pytest
import zxingcpp

from agent.printing import PrintQueue
from agent.till.service import Till
from tests.conftest import wait_until
from tests.test_printer_contract import pty_rig
from tests.test_till_service import CATALOG, KIT, MUG, TEE, Clock

FAST = {"min_backoff_s": 0.01, "max_backoff_s": 0.05}


@pytest.fixture
def printer():
    rig, cleanup = pty_rig()
    rig.printer.close()  # the queue opens its own connection
    yield rig
    cleanup()


@pytest.fixture
def queue(printer, tmp_path):
    with PrintQueue(tmp_path / "print.db", printer.reopen, **FAST) as q:
        yield q


@pytest.fixture
def till(tmp_path, queue):
    t = Till(tmp_path / "till.db", KIT, "Demo stall", clock=Clock(), printer=queue).start()
    t.load_catalog(CATALOG, "fleet", 1)
    yield t
    t.close()


def receipt_state(till, order_id):
    return (till.order(order_id)["receipt"] or {}).get("state")


def test_a_paid_order_prints_its_receipt_with_the_order_id_as_a_qr(till, printer):
    till.add("main", TEE, 2)
    till.add("main", MUG)
    order = till.pay("main", "cash", "anna")
    wait_until(lambda: receipt_state(till, order.id) == "done", what="the receipt printed")
    roll = printer.model.roll
    text = roll.text
    for want in ("Demo stall", "FEST25", "Tee black / M", "2 x 12.50", "25.00", "Mug", "TOTAL", "EUR 33.00",
                 "incl. tax 20%", "5.50", "cash", f"Order {order.id[:8]}", "#1", "till main"):
        assert want in text, f"{want!r} not on the receipt:\n{text}"
    assert roll.codes("qr") == [order.id] and roll.cuts == 1
    assert [r.text for r in zxingcpp.read_barcodes(roll.to_png())] == [order.id]  # decodes from the paper


def test_out_of_paper_the_order_stands_and_its_receipt_prints_once_when_paper_is_back(till, printer, queue):
    printer.model.paper_out()
    till.add("main", MUG)
    order = till.pay("main", "card_terminal", "anna")
    assert till.orders()[0]["id"] == order.id  # recorded at once, whatever the printer says
    seen: dict = {}

    def waiting_again() -> bool:  # between two tries: a look during a try would see "printing"
        seen.update(till.order(order.id)["receipt"])
        return queue.job(seen["job"]).attempts >= 2 and seen["state"] == "queued"

    wait_until(waiting_again, what="the print queue retrying while paper is out")
    assert "paper out" in seen["error"]
    assert printer.model.received == b""
    till.add("main", TEE)  # the stall sells on while the roll is changed
    second = till.pay("main", "cash", "anna")

    printer.model.load_paper()
    wait_until(lambda: receipt_state(till, second.id) == "done", what="both receipts printed after loading paper")
    assert printer.model.roll.codes("qr") == [order.id, second.id]  # in order, each once


def test_a_refund_prints_a_slip_that_names_its_order(till, printer):
    till.add("main", TEE, 2)
    order = till.pay("main", "cash", "anna")
    refund = till.refund(order.id, [(TEE, 1)], "wrong size", "ben")
    wait_until(lambda: (till.order(order.id)["refunds"][0]["receipt"] or {}).get("state") == "done",
               what="the refund slip printed")
    text = printer.model.roll.text
    assert "REFUND" in text and f"of order {order.id[:8]} (#1)" in text and "-12.50" in text
    assert "reason: wrong size" in text
    assert printer.model.roll.codes("qr") == [order.id, refund.id]


def test_receipts_of_orders_taken_before_the_printer_was_up_print_when_it_is(tmp_path, queue, printer):
    t = Till(tmp_path / "till.db", KIT, "Demo stall", clock=Clock()).start()  # the agent starting: no queue yet
    t.load_catalog(CATALOG, "fleet", 1)
    t.add("main", MUG)
    order = t.pay("main", "cash", "anna")
    assert t.order(order.id)["receipt"] is None
    t.attach_printer(queue)
    wait_until(lambda: receipt_state(t, order.id) == "done", what="the waiting receipt printed")
    t.attach_printer(queue)  # again (a restart of the queue): nothing queued twice
    assert (queue.counts().queued, queue.counts().printed) == (0, 1)
    assert printer.model.roll.codes("qr") == [order.id]
    t.close()
