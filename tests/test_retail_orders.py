"""The tills' orders in the fleet (fleet/retail/orders.py, sales.py, push.py; issue 19): orders and
refunds published as the kit agent's events through a real Mosquitto into the real ingest, receipted
only once stored; duplicates counted, conflicts kept and flagged, refunds before their orders
matched later; sales, stock and CSV from them; who may see what; the catalog pushed to the till as
its agent's retained config. On SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import secrets
import uuid

import pytest

from fleet.auth.testing import client_as
from fleet.retail import orders as order_module
from kits.contract import MAX_CONFIG_PAYLOAD, Event, Order, Refund, decode, encode
from kits.manifest import parse_manifest
from kits.retail.money import line_total
from kits.retail.sku import rcn13
from tests.conftest import publisher, start_fleet, wait_until

KIT, AGENT, EVENT = "demo", "demo-agent", "FEST25"
TEE, TOTE, MUG = "0400000000015", "TOTE-NAT", "MUG-WHT"
PRICES = {TEE: (2000, 2000), TOTE: (1250, 2000), MUG: (900, 550)}  # unit gross, tax bp
CATALOG = ("sku,name,price,tax_rate,stock,kit,event\n"
           f"{TEE},Tee,20.00,20,3,demo,FEST25\n"
           f"{TOTE},Tote bag,12.50,20,40,demo,FEST25\n"
           f"{MUG},Mug,9.00,5.5,10,demo,FEST25\n")
OTHER_KIT = 'id = "other"\nname = "Other"\nagent = "other-agent"\n'


def order_data(lines: list[tuple[str, int]], n: int = 1, payment: str = "cash", kit: str = KIT, event: str = EVENT,
               oversold: list[str] | None = None, order_id: str | None = None, till: str = "main") -> dict:
    """A valid Order's data: the lines priced from PRICES, totals as money.line_total makes them."""
    out = []
    for sku, qty in lines:
        unit, tax_bp = PRICES[sku]
        t = line_total(unit, qty, tax_bp)
        out.append(dict(sku=sku, qty=qty, unit=unit, price_version=1, tax_bp=tax_bp, net=t.net, tax=t.tax,
                        gross=t.gross))
    d = dict(id=order_id or str(uuid.uuid4()), kit=kit, event=event, till=till, n=n, ts=1_760_000_000_000 + n,
             currency="EUR", by="crew-a", lines=out, payment=payment, oversold=oversold or [],
             **{k: sum(x[k] for x in out) for k in ("net", "tax", "gross")})
    return Order.model_validate(d).model_dump(mode="json", exclude_none=True)


def refund_data(order: dict, lines: list[tuple[str, int]] | None = None, restock: bool = True, n: int = 100,
                kind: str = "refund") -> dict:
    """A refund of ``lines`` (sku, qty) of ``order`` (all of it by default)."""
    units = {x["sku"]: (x["unit"], x["tax_bp"]) for x in order["lines"]}
    out = []
    for sku, qty in lines or [(x["sku"], x["qty"]) for x in order["lines"]]:
        t = line_total(*units[sku][:1], qty, units[sku][1])
        out.append(dict(sku=sku, qty=qty, net=t.net, tax=t.tax, gross=t.gross))
    d = dict(id=str(uuid.uuid4()), kit=order["kit"], event=order["event"], till=order["till"], n=n,
             ts=order["ts"] + 1000, currency=order["currency"], by="crew-a", order=order["id"], kind=kind,
             lines=out, restock=restock, reason="changed mind", **{k: sum(x[k] for x in out) for k in
                                                                     ("net", "tax", "gross")})
    return Refund.model_validate(d).model_dump(mode="json", exclude_none=True)


class Till:
    """The kit's agent as the fleet sees it: events on its tree, receipts back on its receipt topic."""

    def __init__(self, url: str, kit: str = KIT, device: str = AGENT):
        self.kit, self.device = kit, device
        self.boot, self.seq = secrets.token_hex(4), 0
        self.receipted: set[tuple[str, int]] = set()
        self.client = publisher(url)
        self.client.on_message = self._on_receipt
        self.client.subscribe(f"popkit/v1/{kit}/{device}/receipt", qos=1)

    def _on_receipt(self, _c, _u, msg) -> None:
        r = decode("receipt", msg.payload)
        self.receipted.update((r.boot, s) for a, b in r.seqs for s in range(a, b + 1))

    def send(self, kind: str, data: dict, new_boot: bool = False) -> tuple[str, int]:
        if new_boot:  # the agent restarted and sends what its outbox still held
            self.boot, self.seq = secrets.token_hex(4), 0
        self.seq += 1
        msg = Event(boot=self.boot, seq=self.seq, ts=data["ts"], kind=kind, data=data)
        self.client.publish(f"popkit/v1/{self.kit}/{self.device}/event", encode(msg), qos=1)
        return self.boot, self.seq

    def wait_receipted(self, *keys: tuple[str, int]) -> None:
        wait_until(lambda: set(keys) <= self.receipted, 15, what=f"receipts for {keys}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, broker, tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    f = start_fleet(broker.url, url)
    f.store.registry.register_kit(parse_manifest(OTHER_KIT))
    f.ingest.refresh_devices()
    till = Till(broker.url)
    yield type("World", (), dict(fleet=f, api=f.api, store=f.store, till=till, broker=broker))
    till.close()
    f.ingest.stop()
    f.store.close()


def orders(world, **params) -> dict:
    r = world.api.get(f"/api/v1/kits/{KIT}/orders", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def metric(world, line_start: str) -> int:
    text = world.api.get("/metrics").text
    [line] = [x for x in text.splitlines() if x.startswith(line_start + " ")]
    return int(float(line.split()[-1]))


def test_an_order_is_stored_before_its_receipt_and_a_duplicate_upload_is_one_order(world):
    a, b = order_data([(TEE, 1), (TOTE, 2)], n=1), order_data([(MUG, 1)], n=2, payment="card_terminal")
    seen_at_receipt = []
    world.till.client.on_message = lambda c, u, msg: (
        seen_at_receipt.append(world.api.get(f"/api/v1/kits/{KIT}/orders/{a['id']}").status_code),
        world.till._on_receipt(c, u, msg))
    first = world.till.send("order", a)
    world.till.wait_receipted(first)
    # The receipt lets the till forget the order: by then the fleet already answers with it.
    assert seen_at_receipt and seen_at_receipt[0] == 200
    keys = [world.till.send("order", b), world.till.send("order", a),  # the same order uploaded again
            world.till.send("order", a, new_boot=True)]  # and again after the agent restarted
    world.till.wait_receipted(*keys)  # a duplicate is receipted like any stored message: no error
    page = orders(world)
    assert page["total"] == 2 and [o["id"] for o in page["orders"]] == [b["id"], a["id"]]  # newest first
    got = world.api.get(f"/api/v1/kits/{KIT}/orders/{a['id']}").json()
    assert {k: got[k] for k in a} == a  # as the till made it
    assert got["duplicates"] == 2 and got["conflict"] is False and got["refunds"] == []
    assert metric(world, 'popkit_retail_duplicates{kind="order"}') == 2
    assert metric(world, 'popkit_retail_sales{kind="order"}') == 2
    assert world.api.get(f"/api/v1/kits/{KIT}/orders/{uuid.uuid4()}").status_code == 404
    assert world.api.get(f"/api/v1/kits/{KIT}/orders/not-a-uuid").status_code == 422


def test_the_same_id_with_another_body_is_kept_and_flagged_never_merged(world):
    a = order_data([(TEE, 1)], n=1)
    other = dict(a, payment="card_terminal")  # same id, another body
    keys = [world.till.send("order", a), world.till.send("order", other), world.till.send("order", other)]
    world.till.wait_receipted(*keys)
    got = world.api.get(f"/api/v1/kits/{KIT}/orders/{a['id']}").json()
    assert got["payment"] == "cash" and got["conflict"] is True  # the first body stands
    assert [c["body"]["payment"] for c in got["conflicting"]] == ["card_terminal"]  # kept once
    assert got["duplicates"] == 1  # the conflicting body uploaded twice is one conflict
    sales = world.api.get(f"/api/v1/kits/{KIT}/sales").json()
    assert sales["orders"] == 1 and sales["conflicts"] == 1
    assert [p["payment"] for p in sales["payments"]] == ["cash"]  # never added twice, never merged
    assert metric(world, 'popkit_retail_conflicts{kind="order"}') == 1
    assert orders(world)["orders"][0]["conflict"] is True


def test_a_refund_before_its_order_is_kept_and_matched_when_the_order_arrives(world):
    world.api.post(f"/api/v1/kits/{KIT}/catalog", content=CATALOG, headers={"Content-Type": "text/csv"})
    a = order_data([(TEE, 2), (MUG, 1)], n=1)
    r = refund_data(a, [(TEE, 1)])
    world.till.wait_receipted(world.till.send("refund", r))
    page = orders(world)
    assert page["total"] == 0 and [x["id"] for x in page["unmatched_refunds"]] == [r["id"]]
    assert world.api.get(f"/api/v1/kits/{KIT}/sales").json()["unmatched_refunds"] == 1
    assert metric(world, "popkit_retail_refunds_unmatched") == 1
    world.till.wait_receipted(world.till.send("order", a))
    page = orders(world)
    assert page["unmatched_refunds"] == [] and [x["id"] for x in page["orders"][0]["refunds"]] == [r["id"]]
    assert metric(world, "popkit_retail_refunds_unmatched") == 0
    stock = {p["sku"]: p for p in world.api.get(f"/api/v1/kits/{KIT}/stock", params={"event": EVENT}).json()["products"]}
    assert (stock[TEE]["carried"], stock[TEE]["sold"], stock[TEE]["restocked"], stock[TEE]["left"]) == (3, 2, 1, 2)


def test_sales_stock_and_payments_add_up_in_minor_units(world):
    assert world.api.post(f"/api/v1/kits/{KIT}/catalog", content=CATALOG,
                          headers={"Content-Type": "text/csv"}).status_code == 200
    o1 = order_data([(TEE, 2), (MUG, 3)], n=1)
    o2 = order_data([(TEE, 2)], n=2, payment="card_terminal", oversold=[TEE])  # 4 tees of 3 carried
    o3 = order_data([(TOTE, 1)], n=3, payment="other")
    kept = refund_data(o1, [(MUG, 1)], restock=False)  # a broken mug: money back, not back on the shelf
    back = refund_data(o3, kind="void")
    keys = [world.till.send("order", o) for o in (o1, o2, o3)] + [world.till.send("refund", x) for x in (kept, back)]
    world.till.wait_receipted(*keys)
    s = world.api.get(f"/api/v1/kits/{KIT}/sales", params={"event": EVENT}).json()
    p = {x["sku"]: x for x in s["products"]}
    two_tees, mug = line_total(2000, 2, 2000), line_total(900, 3, 550)  # tax is rounded per line, as sold
    assert p[TEE]["sold"] == dict(qty=4, gross=2 * two_tees.gross, net=2 * two_tees.net, tax=2 * two_tees.tax)
    assert p[TEE]["name"] == "Tee"
    assert p[MUG]["sold"]["qty"] == 3 and p[MUG]["refunded"] == dict(qty=1, **{k: kept[k] for k in ("gross", "net", "tax")})
    assert p[MUG]["qty"] == 2 and p[MUG]["gross"] == mug.gross - kept["gross"]
    assert p[TOTE]["qty"] == 0 and p[TOTE]["gross"] == 0  # voided
    sold_gross = o1["gross"] + o2["gross"] + o3["gross"]
    assert s["totals"]["sold"]["gross"] == sold_gross and s["totals"]["gross"] == sold_gross - kept["gross"] - back["gross"]
    assert s["totals"]["net"] + s["totals"]["tax"] == s["totals"]["gross"]
    pay = {x["payment"]: x for x in s["payments"]}
    assert pay["cash"]["orders"] == 1 and pay["cash"]["gross"] == o1["gross"] - kept["gross"]
    assert pay["card_terminal"]["gross"] == o2["gross"] and pay["other"]["gross"] == 0
    assert (s["orders"], s["refunds"], s["currency"]) == (3, 2, "EUR")
    stock = {x["sku"]: x for x in world.api.get(f"/api/v1/kits/{KIT}/stock", params={"event": EVENT}).json()["products"]}
    assert (stock[TEE]["left"], stock[TEE]["oversold"], stock[TEE]["oversold_at_till"]) == (-1, True, True)
    assert (stock[MUG]["left"], stock[MUG]["restocked"], stock[MUG]["oversold"]) == (7, 0, False)
    assert (stock[TOTE]["left"], stock[TOTE]["restocked"]) == (40, 1)
    everywhere = world.api.get("/api/v1/retail/sales").json()
    [row] = [x for x in everywhere["sales"] if x["kit"] == KIT]
    assert (row["event"], row["orders"], row["refunds"], row["gross"]) == (EVENT, 3, 2, s["totals"]["gross"])


def test_csv_exports_sum_to_the_sales(world):
    o1, o2 = order_data([(TEE, 1), (TOTE, 2)], n=1), order_data([(MUG, 2)], n=2)
    r = refund_data(o1, [(TOTE, 1)])
    world.till.wait_receipted(world.till.send("order", o1), world.till.send("order", o2), world.till.send("refund", r))
    res = world.api.get(f"/api/v1/kits/{KIT}/orders.csv", params={"event": EVENT})
    assert res.status_code == 200 and res.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(res.text)))
    assert [x["record"] for x in rows] == ["order", "order", "refund", "order"]
    assert sum(int(x["gross"]) for x in rows) == o1["gross"] + o2["gross"] - r["gross"]
    assert {x["order"] for x in rows if x["record"] == "refund"} == {o1["id"]}
    sales = list(csv.DictReader(io.StringIO(world.api.get(f"/api/v1/kits/{KIT}/sales.csv").text)))
    assert sales[-1]["sku"] == "TOTAL" and int(sales[-1]["gross"]) == o1["gross"] + o2["gross"] - r["gross"]
    assert sum(int(x["gross"]) for x in sales[:-1]) == int(sales[-1]["gross"])


def test_a_product_name_a_spreadsheet_would_run_is_exported_as_text(world):
    catalog = CATALOG.replace("Mug,9.00", "=HYPERLINK(1)+Mug,9.00").replace("Tote bag", "@Tote")
    r = world.api.post(f"/api/v1/kits/{KIT}/catalog", content=catalog, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    o = order_data([(MUG, 1), (TOTE, 1)])
    world.till.wait_receipted(world.till.send("order", o), world.till.send("refund", refund_data(o, [(MUG, 1)])))
    sales = {x["sku"]: x for x in csv.DictReader(io.StringIO(world.api.get(f"/api/v1/kits/{KIT}/sales.csv").text))}
    assert sales[MUG]["name"] == "'=HYPERLINK(1)+Mug" and sales[TOTE]["name"] == "'@Tote"
    rows = list(csv.DictReader(io.StringIO(world.api.get(f"/api/v1/kits/{KIT}/orders.csv").text)))
    assert [int(x["gross"]) < 0 for x in rows if x["record"] == "refund"] == [True]  # amounts stay numbers


def test_a_malformed_order_is_refused_with_the_contracts_reason_and_counted(world):
    bad = order_data([(TEE, 1)])
    bad["lines"][0]["gross"] += 1  # does not add up
    msg = {"boot": world.till.boot, "seq": 1, "ts": bad["ts"], "kind": "order", "data": bad}
    world.till.client.publish(f"popkit/v1/{KIT}/{AGENT}/event", json.dumps(msg).encode(), qos=1)
    wait_until(lambda: world.fleet.ingest.metrics.rejected["invalid"] >= 1, what="the bad order refused")
    [letter] = world.api.get("/api/v1/dead-letters").json()
    assert letter["reason"] == "invalid" and "data.lines.0" in letter["detail"] and "must be" in letter["detail"]
    assert orders(world)["total"] == 0
    good = order_data([(TEE, 1)], n=2)
    world.till.wait_receipted(world.till.send("order", good))  # the till carries on
    assert orders(world)["total"] == 1


def test_only_the_kits_own_agent_records_its_kits_orders(world):
    before = order_module.refused()
    door = Till(world.broker.url, device="demo-scanner-1")
    try:
        world.till.wait_receipted(world.till.send("order", order_data([(TEE, 1)], kit="other")))
        door.wait_receipted(door.send("order", order_data([(TEE, 1)])))  # receipted: it is in the ledger
    finally:
        door.close()
    assert orders(world)["total"] == 0 and world.api.get("/api/v1/kits/other/orders").json()["total"] == 0
    after = order_module.refused()
    assert after["other_kit"] == before["other_kit"] + 1 and after["not_agent"] == before["not_agent"] + 1


def test_crew_see_their_kits_orders_only_and_venue_users_nothing(world):
    world.till.wait_receipted(world.till.send("order", order_data([(TEE, 1)])))
    other = Till(world.broker.url, kit="other", device="other-agent")
    try:
        other.wait_receipted(other.send("order", order_data([(MUG, 1)], kit="other")))
    finally:
        other.close()
    crew = client_as(world.fleet.api.app, "crew-a", "crew", kits=[KIT])
    venue = client_as(world.fleet.api.app, "venue-v", "venue", venues=["hall"])
    for path in ("orders", "orders.csv", "sales", "sales.csv", "stock", "orders-pending"):
        assert crew.get(f"/api/v1/kits/{KIT}/{path}").status_code == 200, path
        assert crew.get(f"/api/v1/kits/other/{path}").status_code == 404, path
        assert venue.get(f"/api/v1/kits/{KIT}/{path}").status_code == 403, path
    assert {r["kit"] for r in crew.get("/api/v1/retail/sales").json()["sales"]} == {KIT}
    assert {r["kit"] for r in world.api.get("/api/v1/retail/sales").json()["sales"]} == {KIT, "other"}
    assert venue.get("/api/v1/retail/sales").status_code == 403


def test_the_catalog_goes_to_the_till_as_its_agents_retained_config(world, collect):
    r = world.api.post(f"/api/v1/kits/{KIT}/catalog", content=CATALOG, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    till = r.json()["till"]
    assert till["pushed"] is True and till["event"] == EVENT and till["agent"] == AGENT
    seen = collect(f"popkit/v1/{KIT}/{AGENT}/config")  # subscribed after: it is retained
    wait_until(lambda: seen.on("/config"), what="the retained config")
    cfg = decode("config", seen.on("/config")[-1])
    assert cfg.version == till["version"]
    assert {p["sku"]: p["prices"][-1]["price"] for p in cfg.data["catalog"]["products"]} == {
        TEE: 2000, TOTE: 1250, MUG: 900}
    r = world.api.put(f"/api/v1/kits/{KIT}/catalog/{TEE}/price", json={"price": "18.00"})
    assert r.status_code == 200 and r.json()["till"]["version"] > cfg.version
    wait_until(lambda: len(seen.on("/config")) >= 2, what="the repriced catalog")
    newer = decode("config", seen.on("/config")[-1])
    tee = [p for p in newer.data["catalog"]["products"] if p["sku"] == TEE][0]
    assert newer.version > cfg.version and [v["price"] for v in tee["prices"]] == [2000, 1800]


def test_a_catalog_too_big_for_the_tills_config_is_refused_and_nothing_stored(world):
    lines = [f"{rcn13(i)},A product with a long name number {i:05d},1.00,20,5,demo,FEST25" for i in range(1, 700)]
    body = "sku,name,price,tax_rate,stock,kit,event\n" + "\n".join(lines) + "\n"
    r = world.api.post(f"/api/v1/kits/{KIT}/catalog", content=body, headers={"Content-Type": "text/csv"})
    assert r.status_code == 422, r.text
    [problem] = r.json()["detail"]
    assert str(MAX_CONFIG_PAYLOAD) in problem["msg"] and "FEST25" in problem["msg"]
    assert world.api.get(f"/api/v1/kits/{KIT}/catalog").json()["products"] == []
    assert world.store.config.desired(AGENT)["version"] is None  # nothing pushed


def test_one_batch_holding_an_order_its_repeats_and_another_body_stores_each_once(world):
    """What a till resending its outbox puts in one batch: the same order under several seqs, a body
    that conflicts with it, and that conflicting body again (written as ingest writes a batch)."""
    from fleet.ledger import Batch, LedgerMessage

    a = order_data([(TEE, 1)], n=1)
    other = dict(a, by="crew-b")
    r = refund_data(a)
    seq = iter(range(1, 100))

    def msg(kind: str, data: dict) -> LedgerMessage:
        ev = Event(boot="b0b0b0b0", seq=next(seq), ts=data["ts"], kind=kind, data=data)
        return LedgerMessage(AGENT, "event", ev, encode(ev).decode())

    world.store.ledger.write_batch(Batch(ledger=[msg("refund", r), msg("order", a), msg("order", a),
                                                 msg("order", other), msg("order", other), msg("refund", r)]))
    got = world.api.get(f"/api/v1/kits/{KIT}/orders/{a['id']}").json()
    assert (got["by"], got["duplicates"], got["conflict"]) == ("crew-a", 2, True)
    assert [c["body"]["by"] for c in got["conflicting"]] == ["crew-b"]
    assert [(x["id"], x["duplicates"]) for x in got["refunds"]] == [(r["id"], 1)]
    assert orders(world)["total"] == 1


def test_two_ingest_workers_sharing_the_stream_store_each_order_once(broker, pg_url):
    """Scaled out (a shared subscription, one PostgreSQL): the same order uploaded again and again
    lands on both workers, and still is one order with every other upload counted."""
    from tests.test_shared_ingest import worker

    workers = [worker(broker, pg_url, n) for n in (1, 2)]
    till = Till(broker.url)
    try:
        same = order_data([(TEE, 1)], n=1)
        others = [order_data([(MUG, 1)], n=i) for i in range(2, 202)]
        keys = []
        for i, o in enumerate(others):
            keys.append(till.send("order", o))
            if i % 5 == 0:
                keys.append(till.send("order", same))
        till.wait_receipted(*keys)
        assert min(ingest.metrics.ingested for _s, ingest in workers) > 0  # both took part
        store = workers[0][0]
        total, page = store.retail.orders.orders(KIT, limit=500)
        assert total == 201 and len({o["id"] for o in page}) == 201
        [got] = [o for o in page if o["id"] == same["id"]]
        assert got["duplicates"] == 39 and got["conflict"] is False
    finally:
        till.close()
        for store, ingest in workers:
            ingest.stop()
            store.close()


def test_orders_and_sales_filter_by_event_and_page(world):
    fest = [order_data([(TEE, 1)], n=i) for i in range(1, 6)]
    late = order_data([(MUG, 2)], n=6, event="LATE26")
    world.till.wait_receipted(*[world.till.send("order", o) for o in (*fest, late)])
    assert orders(world)["total"] == 6
    page = orders(world, event=EVENT, limit=2, offset=1)
    assert page["total"] == 5 and [o["n"] for o in page["orders"]] == [4, 3]  # newest first
    assert [o["id"] for o in orders(world, event="LATE26")["orders"]] == [late["id"]]
    s = world.api.get(f"/api/v1/kits/{KIT}/sales", params={"event": "LATE26"}).json()
    assert [(p["event"], p["sku"], p["qty"]) for p in s["products"]] == [("LATE26", MUG, 2)]
    both = world.api.get(f"/api/v1/kits/{KIT}/sales").json()
    assert {(p["event"], p["sku"]) for p in both["products"]} == {(EVENT, TEE), ("LATE26", MUG)}
    assert world.api.get(f"/api/v1/kits/{KIT}/orders", params={"event": "bad event"}).status_code == 422
