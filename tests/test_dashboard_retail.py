"""The dashboard's retail page (fleet/api/static/retail.js) in a real headless Chromium, against a
real fleet (store, ingest on a real Mosquitto, the API under uvicorn) and kit ``dk``'s agent running
its simulated parts (tests/test_labels_command.py's kit):

- ops: the kit's takings per event, its sales per product and payment method, stock left with the
  product sold below zero flagged, a refund, a conflicting upload flagged, the oldest order not
  uploaded past its alert threshold, the CSV exports downloading, and labels printed from the form:
  the agent prints them on the ESC/POS simulator and they decode back to their SKU with zxing-cpp;
- crew, on a phone: their kit's page fits and prints; another crew's kit is not there;
- venue users: no retail link and no retail page.

Orders arrive through the real ingest path: the till's ``order`` and ``refund`` events and its
device telemetry, published as the agent's link publishes them. Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter

import pytest
import zxingcpp

from fleet.auth.testing import token_as
from kits.contract import DeviceTelemetry, Event, encode, topic
from kits.retail.money import line_total
from popkit.broker import free_port
from tests.conftest import publisher, wait_until
from tests.test_dashboard_updates import ARTIFACTS, chromium  # noqa: F401 - the browser fixture
from tests.test_labels_command import EVENT, start_label_kit

BOOT = "5a1e5a1e"
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


class Seller:
    """Publishes the till's sales as kit dk's agent would (events on its tree, QoS 1)."""

    def __init__(self, url: str):
        self.pub = publisher(url)
        self.seq = 0
        self.n = 0

    def send(self, kind: str, data: dict) -> None:
        self.seq += 1
        msg = Event(boot=BOOT, seq=self.seq, ts=now_ms(), kind=kind, data=data)
        self.pub.publish(topic("dk", "dk-agent", "event"), encode(msg), qos=1).wait_for_publish(5)

    def order(self, lines: list[tuple[str, int, int]], payment: str, oversold=(), order_id: str | None = None,
              by: str = "crew-dk") -> dict:
        self.n += 1
        out = []
        for sku, qty, unit in lines:
            t = line_total(unit, qty, 2000)
            out.append(dict(sku=sku, qty=qty, unit=unit, price_version=1, tax_bp=2000, net=t.net, tax=t.tax, gross=t.gross))
        data = dict(id=order_id or str(uuid.uuid4()), kit="dk", event=EVENT, till="main", n=self.n, ts=now_ms(),
                    currency="EUR", net=sum(x["net"] for x in out), tax=sum(x["tax"] for x in out),
                    gross=sum(x["gross"] for x in out), by=by, lines=out, payment=payment, oversold=list(oversold))
        self.send("order", data)
        return data

    def refund(self, order: dict, sku: str, qty: int, reason: str) -> dict:
        self.n += 1
        [line] = [x for x in order["lines"] if x["sku"] == sku]
        t = line_total(line["unit"], qty, line["tax_bp"])
        data = dict(id=str(uuid.uuid4()), kit="dk", event=EVENT, till="main", n=self.n, ts=now_ms(), currency="EUR",
                    net=t.net, tax=t.tax, gross=t.gross, by="crew-dk", order=order["id"], kind="refund",
                    lines=[dict(sku=sku, qty=qty, net=t.net, tax=t.tax, gross=t.gross)], reason=reason)
        self.send("refund", data)
        return data

    def pending(self, orders: int, oldest_ms: int) -> None:
        self.seq += 1
        msg = DeviceTelemetry(boot=BOOT, seq=self.seq, ts=now_ms() + 60_000, uptime_s=5, orders_pending=orders,
                              orders_oldest_ms=oldest_ms)
        self.pub.publish(topic("dk", "dk-agent", "telemetry"), encode(msg), qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.pub.disconnect()
        self.pub.loop_stop()


@pytest.fixture
def shop(broker, tmp_path):
    """Kit dk with its catalog and running agent, the fleet under uvicorn, and a day's sales."""
    import uvicorn

    gen = start_label_kit(broker, tmp_path)
    kit = next(gen)
    app = kit.fleet.api.app
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn serving the fleet")
    seller = Seller(broker.url)
    tee = seller.order([("TEE-BLK-M", 2, 2000)], "cash")
    seller.order([("0400000000015", 1, 1250)], "card_terminal")
    # The tote carried 2: the third sold anyway and flagged at the till.
    twice = seller.order([("0400000000015", 2, 1250)], "cash", oversold=["0400000000015"])
    seller.refund(tee, "TEE-BLK-M", 1, "wrong size")
    # The same order id uploaded again with another body: kept apart and flagged, never merged.
    seller.order([("0400000000015", 2, 1000)], "cash", order_id=twice["id"])
    seller.pending(2, now_ms() - DAY_MS - 3_600_000)  # 25 h: past Square's 24 h

    def arrived():
        s = kit.fleet.api.get(f"/api/v1/kits/dk/sales?event={EVENT}").json()
        return s["orders"] == 3 and s["refunds"] == 1 and s["conflicts"] == 1 and s["pending"]["late"]
    wait_until(arrived, 15, what="the sales ingested")
    yield type("Shop", (), dict(kit=kit, app=app, base=f"http://127.0.0.1:{port}", tee=tee, twice=twice, seller=seller))
    seller.close()
    server.should_exit = True
    thread.join(10)
    gen.close()


def signed_in(chromium, shop, token: str, **kwargs):  # noqa: F811 - the fixture imported above
    ctx = chromium.new_context(accept_downloads=True, **kwargs)
    ctx.add_cookies([{"name": "popkit_token", "value": token, "url": shop.base, "httpOnly": True, "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def test_ops_sees_a_kits_sales_stock_refunds_conflicts_and_late_uploads_and_prints_labels(shop, chromium):  # noqa: F811
    page, errors = signed_in(chromium, shop, token_as(shop.app, "dash-ops", "ops"), viewport={"width": 1280, "height": 900})
    try:
        page.goto(shop.base + "/")
        page.click('[data-testid="retail-link"]')
        row = page.locator(f'[data-testid="retail-row-dk-{EVENT}"]')
        row.wait_for(timeout=5000)
        text = row.inner_text()
        # 2 tees at 20.00 + 1 tote + 2 totes at 12.50 = 77.50 sold; one tee refunded: 57.50 kept.
        assert "77.50" in text and "20.00" in text and "57.50" in text, text
        assert "ALERT" in text  # the oldest order not uploaded is 25 h old
        row.locator("a").first.click()
        page.wait_for_selector('[data-testid="sales-TEE-BLK-M"]', timeout=5000)
        assert page.url.endswith(f"#/retail/dk/{EVENT}")
        assert page.locator('[data-testid="total-orders"]').inner_text() == "3"
        assert "57.50" in page.locator('[data-testid="total-kept"]').inner_text()
        tee = page.locator('[data-testid="sales-TEE-BLK-M"]').inner_text()
        assert "Tee" in tee and "−1" in tee and "20.00" in tee
        assert "37.50" in page.locator('[data-testid="sales-0400000000015"]').inner_text()
        # The bar chart (a canvas) says its bars in words, best seller first: the totes kept 37.50, the tee 20.00.
        chart = page.locator('[data-testid="sales-chart"][role="img"]')
        assert chart.locator("canvas").count() == 1
        assert re.search(r"Tote \S*37\.50, Tee \S*20\.00", chart.get_attribute("aria-label")), chart.get_attribute("aria-label")
        assert "45.00" in page.locator('[data-testid="payment-cash"]').inner_text()  # 2 tees - 1 refunded + 2 totes
        assert "12.50" in page.locator('[data-testid="payment-card_terminal"]').inner_text()

        # Stock: the tote went below zero and says so; the tee's refund went back on the rail.
        tote = page.locator('[data-testid="stock-0400000000015"]')
        assert tote.get_attribute("data-oversold") == "true" and "-1" in tote.inner_text() and "oversold" in tote.inner_text().lower()
        assert page.locator('[data-testid="stock-TEE-BLK-M"]').get_attribute("data-oversold") == "false"
        assert page.locator('[data-testid="stock-POSTER-A2"]').get_attribute("data-oversold") == "false"

        refund = page.locator('[data-testid^="refund-"]')
        assert refund.count() == 1 and "wrong size" in refund.inner_text() and "crew-dk" in refund.inner_text()
        assert page.locator(f'[data-testid="conflict-{shop.twice["id"]}"]').count() == 1
        assert "1 upload conflicting" in page.locator('[data-testid="conflicts"]').inner_text()
        assert page.locator('[data-testid="pending"]').get_attribute("data-late") == "true"
        assert "2 orders not uploaded" in page.locator('[data-testid="pending"]').inner_text()
        assert page.locator('[data-testid="pending-alert"]').is_visible()

        # The exports download with the page's sign-in.
        for name, expect in (("sales", "TOTAL"), ("orders", shop.tee["id"]), ("catalog", "POSTER-A2")):
            with page.expect_download() as dl:
                page.click(f'[data-testid="csv-{name}"]')
            body = open(dl.value.path(), encoding="utf-8").read()
            assert expect in body, (name, body[:300])
            assert dl.value.suggested_filename == f"{name}-dk-{EVENT}.csv"

        # Labels: a reprint of two damaged tee labels, printed by the kit and decoded off the paper.
        form = page.locator('[data-testid="labels-form"]')
        assert form.locator('[data-testid="labels-sku"]').is_disabled()  # all stock needs no product
        form.locator('input[value="reprint"]').check()
        form.locator('[data-testid="labels-sku"]').select_option("TEE-BLK-M")
        form.locator('[data-testid="labels-count"]').fill("2")
        form.locator('[data-testid="labels-print"]').click()
        page.wait_for_selector('[data-testid="labels-status"][data-state="queued"]', timeout=20_000)
        said = page.locator('[data-testid="labels-status"]').inner_text()
        assert "2 labels of 1 SKU queued on dk-printer" in said, said
        wait_until(lambda: shop.kit.printed() == Counter({"TEE-BLK-M": 2}), 15, what="two tee labels on paper")
        found = {(r.format.name, r.text) for r in zxingcpp.read_barcodes(shop.kit.roll.to_png())}
        assert ("Code128", "TEE-BLK-M") in found
        # Live: a sale uploaded now shows without a reload, and the form keeps what was typed.
        shop.seller.order([("TEE-BLK-M", 1, 2000)], "other")
        page.wait_for_selector('[data-testid="total-orders"] >> text="4"', timeout=10_000)
        assert "20.00" in page.locator('[data-testid="payment-other"]').inner_text()
        assert form.locator('[data-testid="labels-count"]').input_value() == "2"
        # A refusal is said on the page and prints nothing: the poster has no stock.
        form.locator('input[value="one"]').check()
        form.locator('[data-testid="labels-sku"]').select_option("POSTER-A2")
        form.locator('[data-testid="labels-print"]').click()
        page.wait_for_selector('[data-testid="labels-status"][data-state="refused"]', timeout=5000)
        assert "no stock, no labels: POSTER-A2" in page.locator('[data-testid="labels-status"]').inner_text()
        page.screenshot(path=str(ARTIFACTS / "dashboard-retail.png"), full_page=True)
        assert not errors, errors
    finally:
        page.context.close()


def test_crew_sees_their_kit_on_a_phone_another_crew_does_not_and_venue_users_have_no_retail(shop, chromium):  # noqa: F811
    page, errors = signed_in(chromium, shop, token_as(shop.app, "crew-dk", "crew", kits=["dk"]),
                             viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page.goto(f"{shop.base}/#/retail/dk")
        page.wait_for_selector('[data-testid="sales-TEE-BLK-M"]', timeout=5000)
        assert page.locator('[data-testid="retail-kit"]').get_attribute("data-event") == EVENT  # its only event
        assert page.locator('[data-testid="retail-link"]').is_visible()
        print_button = page.locator('[data-testid="labels-print"]')
        box = print_button.bounding_box()
        assert box["height"] >= 44  # a finger's height
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{width[0]}px wide content in a {width[1]}px viewport"
        page.screenshot(path=str(ARTIFACTS / "dashboard-retail-phone.png"), full_page=True)
        assert not errors, errors
    finally:
        page.context.close()

    page, errors = signed_in(chromium, shop, token_as(shop.app, "crew-other", "crew", kits=["other"]))
    try:
        page.goto(f"{shop.base}/#/retail")
        page.wait_for_selector('[data-testid="retail-list"] >> text=No sales uploaded yet.', timeout=5000)
        assert page.locator('[data-testid^="retail-row-"]').count() == 0
        page.goto(f"{shop.base}/#/retail/dk/{EVENT}")
        page.wait_for_selector('[data-testid="retail-error"] >> text=No kit', timeout=5000)
        assert page.locator('[data-testid="labels-form"]').count() == 0
        assert not errors, errors
    finally:
        page.context.close()

    page, errors = signed_in(chromium, shop, token_as(shop.app, "venue-v", "venue", venues=["hall"]))
    try:
        page.goto(f"{shop.base}/#/retail")
        page.wait_for_url("**/#/venues", timeout=5000)  # a venue user lands on their venues
        assert page.locator('[data-testid="retail-link"]').is_hidden()
        page.evaluate("location.hash = '#/retail/dk'")
        page.wait_for_selector('[data-testid="retail-forbidden"]', timeout=5000)
        assert page.locator('[data-testid="sales-TEE-BLK-M"]').count() == 0
        assert not errors, errors
    finally:
        page.context.close()
