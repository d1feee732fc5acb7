"""The till as the crew uses it, on a real SQLite file: carts, pay, refunds and voids, stock, the
catalog's versions, the clock unset, and what a restart finds on disk."""

from __future__ import annotations

import pytest

from agent.till.errors import CatalogRefused, EmptyCart, NotInCatalog, RefundTooLarge, TillError, UnknownOrder
from agent.till.service import Till
from kits.contract import Event, Order, Refund
from kits.retail.catalog import PriceVersion, Product, reprice
from kits.retail.money import line_total
from kits.retail.sku import rcn13

TEE = rcn13(1)
MUG = "MUG-W"
KIT, EVENT = "demo", "FEST25"


def product(sku: str, name: str, price: int, stock: int, tax_bp: int = 2000, **kw) -> Product:
    return Product(sku=sku, name=name, stock=stock, kit=kw.pop("kit", KIT), event=kw.pop("event", EVENT),
                   prices=(PriceVersion(version=1, price=price, tax_bp=tax_bp, from_ms=0),), **kw)


CATALOG = [product(TEE, "Tee", 1250, 2, variants={"colour": "black", "size": "M"}), product(MUG, "Mug", 800, 5)]


class FakeUplink:
    """Records what the till hands the outbox; ``receipted`` are the keys the fleet has confirmed."""

    def __init__(self):
        self.sent: list[tuple[str, dict, int]] = []
        self.receipted: set[tuple[str, int]] = set()

    def send(self, kind: str, data: dict, ts: int) -> tuple[str, int]:
        Event(boot="b007", seq=len(self.sent) + 1, ts=ts, kind=kind, data=data)  # what the link would build
        self.sent.append((kind, data, ts))
        return "b007", len(self.sent)

    def waiting(self, keys):
        return {k for k in keys if k not in self.receipted}


class Clock:
    def __init__(self, ts: int = 1_800_000_000_000, unset: bool = False):
        self.ts, self.unset = ts, unset

    def __call__(self):
        self.ts += 1
        return self.ts, self.unset


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def uplink():
    return FakeUplink()


@pytest.fixture
def till(tmp_path, clock, uplink):
    t = Till(tmp_path / "till.db", KIT, "Demo stall", uplink=uplink, clock=clock).start()
    t.load_catalog(CATALOG, "fleet", 1)
    yield t
    t.close()


def test_scanned_codes_fill_the_cart_with_todays_prices_and_totals(till):
    assert till.add("main", TEE).ok and till.add("main", TEE).qty == 2
    assert till.add("main", " mug-w\r\n").sku == MUG  # as a scan module or a keyboard gives it
    cart = till.cart("main")
    assert [(x["sku"], x["qty"], x["unit"], x["gross"]) for x in cart["lines"]] == [(TEE, 2, 1250, 2500),
                                                                                    (MUG, 1, 800, 800)]
    assert cart["lines"][0]["variant"] == "black / M"
    assert (cart["net"], cart["tax"], cart["gross"], cart["currency"]) == (2750, 550, 3300, "EUR")
    assert till.cart("other")["lines"] == []  # each station its own open order


def test_unknown_or_unreadable_codes_leave_the_cart_unchanged(till):
    till.add("main", MUG)
    assert till.add("main", "TEE-RED-X").reason == "unknown_sku"  # a good SKU, not this catalog's
    assert till.add("main", rcn13(1)[:-1] + "0").reason == "bad_code"  # EAN-13 check digit wrong
    assert till.add("main", "https://example.com/x").reason == "bad_code"
    assert till.add("main", "").reason == "bad_code"
    assert [(x["sku"], x["qty"]) for x in till.cart("main")["lines"]] == [(MUG, 1)]


def test_a_till_with_no_catalog_says_so(tmp_path):
    t = Till(tmp_path / "empty.db", KIT)
    assert t.add("main", TEE).reason == "no_till"
    assert t.stock() == [] and t.catalog() == []
    t.close()


def test_pay_records_the_order_takes_stock_and_queues_it_for_the_fleet(till, uplink):
    till.add("main", TEE)
    till.add("main", MUG, 3)
    order = till.pay("main", "card_terminal", "anna")
    assert isinstance(order, Order) and order.n == 1 and order.oversold == [] and order.clock is None
    assert (order.net, order.tax, order.gross) == (1042 + 2000, 208 + 400, 3650)
    assert [(x.sku, x.qty, x.unit, x.price_version) for x in order.lines] == [(TEE, 1, 1250, 1), (MUG, 3, 800, 1)]
    assert till.cart("main")["lines"] == []
    assert uplink.sent == [("order", order.model_dump(mode="json", exclude_none=True), order.ts)]
    stock = {s["sku"]: s for s in till.stock()}
    assert (stock[TEE]["sold"], stock[TEE]["left"]) == (1, 1)
    assert (stock[MUG]["sold"], stock[MUG]["left"]) == (3, 2)
    assert till.pending() == {"orders": 1, "oldest_ms": order.ts}
    uplink.receipted.add(("b007", 1))
    assert till.pending() == {"orders": 0, "oldest_ms": None}
    assert till.order(order.id)["uploaded"] is True


def test_a_second_pay_of_the_same_cart_is_refused_and_names_the_paid_order(till, uplink):
    till.add("main", MUG)
    first = till.pay("main", "cash", "anna")
    with pytest.raises(EmptyCart, match=f"#1 {first.id[:8]}.*paid"):
        till.pay("main", "cash", "anna")
    assert len(uplink.sent) == 1 and len(till.orders()) == 1


def test_selling_past_zero_stock_is_allowed_and_flagged(till):
    till.add("main", TEE, 2)
    assert till.pay("main", "cash", "anna").oversold == []  # takes it to exactly 0
    till.add("main", TEE)
    till.add("main", MUG)
    order = till.pay("main", "cash", "anna")
    assert order.oversold == [TEE]
    tee = next(s for s in till.stock() if s["sku"] == TEE)
    assert (tee["carried"], tee["sold"], tee["left"], tee["oversold"]) == (2, 3, -1, 1)


def test_bad_payment_station_or_quantity_is_refused_before_anything_is_written(till):
    till.add("main", MUG)
    with pytest.raises(TillError, match="payment must be one of cash, card_terminal, other"):
        till.pay("main", "bitcoin", "anna")
    with pytest.raises(TillError, match="till station"):
        till.add("Main Till", MUG)
    with pytest.raises(TillError, match="quantity"):
        till.add("main", MUG, 0)
    with pytest.raises(TillError, match="by"):
        till.pay("main", "cash", "")
    assert till.orders() == [] and till.cart("main")["lines"][0]["qty"] == 1
    assert till.pay("main", "cash", "anna").n == 1  # the refused attempts used no number


def test_set_qty_changes_and_removes_lines(till):
    till.add("main", TEE)
    till.add("main", MUG)
    till.set_qty("main", TEE, 4)
    till.set_qty("main", MUG, 0)
    assert [(x["sku"], x["qty"]) for x in till.cart("main")["lines"]] == [(TEE, 4)]
    with pytest.raises(NotInCatalog):
        till.set_qty("main", "NOPE-1", 1)
    till.clear("main")
    assert till.cart("main")["lines"] == []


def test_a_refund_is_a_new_record_and_cannot_return_more_than_was_sold(till, uplink):
    till.add("main", TEE, 2)
    order = till.pay("main", "cash", "anna")
    first = till.refund(order.id, [(TEE, 1)], "wrong size", "ben")
    assert isinstance(first, Refund) and first.order == order.id and first.kind == "refund" and first.n == 2
    assert first.gross == 1250 and first.lines[0].qty == 1
    with pytest.raises(RefundTooLarge, match="2 to return, but the order sold 2 and 1 went back already: at most 1"):
        till.refund(order.id, [(TEE, 2)], "", "ben")
    with pytest.raises(TillError, match="has no MUG-W"):
        till.refund(order.id, [(MUG, 1)], "", "ben")
    rest = till.refund(order.id, None, "", "ben", restock=False)
    assert rest.lines[0].qty == 1
    with pytest.raises(RefundTooLarge, match="everything on this order was refunded already"):
        till.refund(order.id, None, "", "ben")
    # The order itself is as it was paid; its refunds point at it.
    seen = till.order(order.id)
    assert seen["gross"] == 2500 and seen["refunded"] == 2500 and [r["id"] for r in seen["refunds"]] == [first.id, rest.id]
    assert [k for k, _d, _t in uplink.sent] == ["order", "refund", "refund"]
    tee = next(s for s in till.stock() if s["sku"] == TEE)
    assert (tee["sold"], tee["refunded"], tee["left"]) == (2, 2, 1)  # one back on the shelf, one kept (damaged)


def test_partial_refunds_never_return_more_money_than_the_line_took(till):
    # 2 x 0.03 at 20 %: the line's tax is 0.01 (exactly 1), one unit's alone rounds half up to 0.01 too.
    till.load_catalog([product("PIN-A", "Pin", 3, 10)], "upload", None)
    till.add("main", "PIN-A", 2)
    order = till.pay("main", "cash", "anna")
    assert (order.lines[0].net, order.lines[0].tax, order.lines[0].gross) == (5, 1, 6)
    parts = [till.refund(order.id, [("PIN-A", 1)], "", "ben") for _ in range(2)]
    assert (sum(p.net for p in parts), sum(p.tax for p in parts), sum(p.gross for p in parts)) == (5, 1, 6)


def test_a_void_cancels_the_whole_order_and_only_an_untouched_one(till):
    till.add("main", TEE)
    till.add("main", MUG, 2)
    order = till.pay("main", "cash", "anna")
    void = till.refund(order.id, None, "customer left", "anna", kind="void")
    assert void.kind == "void" and void.gross == order.gross
    assert {(x.sku, x.qty) for x in void.lines} == {(TEE, 1), (MUG, 2)}
    assert till.order(order.id)["voided"] is True
    till.add("main", MUG)
    other = till.pay("main", "cash", "anna")
    till.refund(other.id, [(MUG, 1)], "", "anna")
    with pytest.raises(RefundTooLarge, match="refund what is left instead of a void"):
        till.refund(other.id, None, "", "anna", kind="void")
    with pytest.raises(UnknownOrder):
        till.refund("00000000-0000-4000-8000-000000000000", None, "", "anna")
    with pytest.raises(UnknownOrder):  # a refund is not an order to refund
        till.refund(void.id, None, "", "anna")


def test_with_the_clock_unset_orders_are_flagged_and_keep_their_local_order(till, clock):
    till.load_catalog([reprice(CATALOG[0], 1500, 2000, clock.ts + 10**9), CATALOG[1]], "fleet", 2)
    till.add("main", TEE)
    assert till.pay("main", "cash", "anna").lines[0].unit == 1250  # the new price is not in force yet
    clock.unset, clock.ts = True, 0  # the Pi lost its time: its clock reads 1970
    till.add("main", TEE)
    a = till.pay("main", "cash", "anna")
    till.add("main", MUG)
    b = till.pay("main", "cash", "anna")
    assert (a.clock, b.clock) == ("unset", "unset") and (a.n, b.n) == (2, 3)
    assert (a.lines[0].unit, a.lines[0].price_version) == (1500, 2)  # no time: the catalog's latest price
    assert [o["n"] for o in till.orders()] == [3, 2, 1]


def test_an_order_keeps_the_price_version_it_was_sold_at(till, clock):
    till.add("main", TEE)
    before = till.pay("main", "cash", "anna")
    till.load_catalog([reprice(CATALOG[0], 1000, 2000, clock.ts), CATALOG[1]], "fleet", 2)
    till.add("main", TEE)
    after = till.pay("main", "cash", "anna")
    assert [(o.lines[0].unit, o.lines[0].price_version) for o in (before, after)] == [(1250, 1), (1000, 2)]
    assert till.order(before.id)["lines"][0]["unit"] == 1250
    assert after.lines[0].gross == line_total(1000, 1, 2000).gross


def test_the_same_fleet_version_again_does_not_undo_a_crew_upload(till):
    assert till.load_catalog([product(TEE, "Tee", 1100, 9), CATALOG[1]], "upload", None) is True
    assert till.load_catalog(CATALOG, "fleet", 1) is False  # the retained config, at a reconnect
    tee = next(p for p in till.catalog() if p.sku == TEE)
    assert (tee.price, tee.price_version, tee.stock) == (1100, 2, 9)  # the upload repriced: version 2
    assert till.catalog_info()["source"] == "upload"
    assert till.load_catalog(CATALOG, "fleet", 2) is True  # a new fleet version wins
    assert till.catalog_info() == {"source": "fleet", "version": 2, "event": EVENT, "currency": "EUR", "products": 2,
                                   "fleet_version": 2}


@pytest.mark.parametrize(("products", "why"), [
    ([], "no products"),
    ([product(TEE, "Tee", 1, 1, kit="other")], "kit 'other'; this till is kit 'demo'"),
    ([product(TEE, "Tee", 1, 1), product(MUG, "Mug", 1, 1, event="OTHER")], "2 events"),
    ([product(TEE, "Tee", 1, 1), product(MUG, "Mug", 1, 1, currency="GBP")], "EUR, GBP"),
], ids=["empty", "other-kit", "two-events", "two-currencies"])
def test_a_catalog_the_till_cannot_sell_from_is_refused_and_the_old_one_stays(till, products, why):
    with pytest.raises(CatalogRefused, match=why):
        till.load_catalog(products, "fleet", 9)
    assert {p.sku for p in till.catalog()} == {TEE, MUG} and till.catalog_info()["version"] == 1


def test_everything_is_on_disk_for_the_next_start(tmp_path, clock):
    path = tmp_path / "till.db"
    first = Till(path, KIT, clock=clock).start()  # no uplink yet: sales wait on disk
    first.load_catalog(CATALOG, "fleet", 4)
    first.add("main", MUG)
    order = first.pay("main", "cash", "anna")
    first.add("main", TEE)  # an open cart at the power cut
    first.close()

    uplink = FakeUplink()
    again = Till(path, KIT, uplink=uplink, clock=clock).start()
    assert [d["id"] for _k, d, _t in uplink.sent] == [order.id]  # queued now, as it was paid
    assert [x["sku"] for x in again.cart("main")["lines"]] == [TEE]
    assert again.catalog_info()["version"] == 4 and again.load_catalog(CATALOG, "fleet", 4) is False
    again.add("main", MUG)
    assert again.pay("main", "cash", "anna").n == 2
    again.close()


def test_an_order_too_big_for_one_message_is_refused_and_the_cart_kept(tmp_path, clock):
    long = "k" * 63  # the longest ids the contract allows, everywhere
    big = [Product(sku=rcn13(10**9 + i), name="X" * 60, stock=0, kit=long, event="E" * 16,
                   prices=(PriceVersion(version=1, price=9_999_999, tax_bp=1999, from_ms=0),)) for i in range(24)]
    t = Till(tmp_path / "big.db", long, clock=clock).start()
    t.load_catalog(big, "fleet", 1)
    for p in big:
        assert t.add(long, p.sku, 999).ok
    with pytest.raises(TillError, match="too big to upload as one message .* sell them as a second order"):
        t.pay(long, "card_terminal", "b" * 63)
    assert len(t.cart(long)["lines"]) == 24 and t.orders() == []
    t.set_qty(long, big[0].sku, 0)
    assert t.pay(long, "card_terminal", "b" * 63).n == 1
    t.close()


def test_the_kits_clock_decides_when_an_order_is_flagged_clock_unset(tmp_path):
    """The till takes its time from the kit's clock (agent/kitclock.py) as the daemon wires it: a Pi
    booted behind its last known time sells with that time running on, and says so in each order."""
    from types import SimpleNamespace

    from agent.kitclock import KitClock
    from agent.till.runner import kit_clock
    from tests.test_kitclock import T0, FakeClock, keep

    keep(tmp_path / "clock.json", int(T0 * 1000))
    hw = FakeClock(now=T0 - 3000)  # no RTC, no uplink: the system clock came up behind
    t = Till(tmp_path / "till.db", KIT, clock=kit_clock(SimpleNamespace(clock=KitClock(tmp_path / "clock.json", hw))))
    t.load_catalog(CATALOG, "fleet", 1)
    t.add("main", MUG)
    hw.elapse(5)
    offline = t.pay("main", "cash", "anna")
    assert (offline.clock, offline.ts) == ("unset", int(T0 * 1000) + 5000)  # never behind the last known time
    hw.synced, hw.wall = True, T0 + 600  # the uplink is back: chrony stepped the clock
    t.add("main", MUG)
    synced = t.pay("main", "cash", "anna")
    assert (synced.clock, synced.ts, synced.n) == (None, int((T0 + 600) * 1000), 2)
    t.close()
