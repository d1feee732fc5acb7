"""The till page on a phone: a real headless Chromium (Debian's, driven by Playwright, as the
dashboard's tests do) on a 390x844 touch screen, against the page as the agent serves it
(``serve_till`` on its own port), the real Till on SQLite and its receipts through the kit's print
queue to the ESC/POS simulator on a pty.

A crew member signs in (a wrong passphrase says so), taps products and types a code, sees a line a
till-mode scanner added appear by itself, pays cash, watches the receipt wait for paper and then
print, sees the offline banner while the orders wait for the fleet, refunds one item, sees the
stock drop and come back, and loads a catalog CSV on the page (a bad line refused by line and
column first). Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

import pytest

from agent.drivers.escpos import EscPosPrinter
from agent.printing import PrintQueue
from agent.till.logins import Logins, logins_path
from agent.till.service import Till
from agent.till.web import serve_till
from kits.retail.catalog import parse_catalog_csv
from simulators.printer import PrinterSimulator
from tests.axe import assert_no_serious_violation
from tests.conftest import wait_until
from tests.test_dashboard import ARTIFACTS, CHROMIUM
from tests.test_till_web import CATALOG, KIT, STICKERS, TEE

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
WAIT_MS = 8000


class TillOnItsPort:
    """``serve_till`` in a thread of its own, as the agent's loop runs it."""

    def __init__(self, till: Till, data: Path):
        self.till, self.data = till, data
        self.bound = threading.Event()
        self.base = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="till-page", daemon=True)
        self._thread.start()
        assert self.bound.wait(10), "the till page did not start listening"

    async def _main(self) -> None:
        import types

        settings = types.SimpleNamespace(till_listen="127.0.0.1:0", update_listen="", agent_data=self.data)
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(serve_till(self.till, settings, started=self._started))
        await asyncio.gather(self._task, return_exceptions=True)

    def _started(self, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"
        self.bound.set()

    def close(self) -> None:
        assert self._loop is not None and self._task is not None
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


@pytest.fixture
def stall(tmp_path):
    sim = PrinterSimulator()
    sim.start()
    queue = PrintQueue(tmp_path / "print.db", lambda: EscPosPrinter.open(sim.path, device_id="nm-printer",
                                                                        status_timeout=0.3),
                       min_backoff_s=0.05, max_backoff_s=0.2).start()
    till = Till(tmp_path / "till.db", kit=KIT, kit_name="Night market", printer=queue).start()
    products, errors = parse_catalog_csv(CATALOG.read_text(encoding="utf-8"))
    assert not errors
    till.load_catalog(products, "fleet", 1)
    passphrase = Logins(logins_path(tmp_path)).add("sam")  # as `popkit till login add sam` on the Pi
    server = TillOnItsPort(till, tmp_path)
    yield server, sim, passphrase
    server.close()
    queue.stop()
    till.close()
    sim.stop()


@pytest.fixture
def phone():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (./dev test does)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} not found: the page tests need Debian's chromium (apt-get install chromium; "
                    "./dev test installs it), or set POPKIT_CHROMIUM")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        ctx = browser.new_context(**PHONE)
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        ctx.close()
        browser.close()
        assert not errors, errors


def tid(name: str) -> str:
    return f'[data-testid="{name}"]'


def fits_the_screen(page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{width[0]}px wide content on a {width[1]}px screen"


def left_of(page, sku: str) -> str:
    return page.locator(tid(f"stock-{sku}")).get_attribute("data-left")


def test_a_crew_member_sells_refunds_and_watches_stock_on_a_phone(stall, phone):
    server, printer, passphrase = stall
    page = phone
    page.goto(server.base + "/till/")

    # Signing in: a wrong passphrase is refused in words, the right one opens the till.
    form = page.locator(tid("signin-form"))
    form.wait_for(state="visible", timeout=WAIT_MS)
    form.locator('input[name="login"]').fill("sam")
    form.locator('input[name="passphrase"]').fill("wrong-passphrase")
    form.locator('button[type="submit"]').tap()
    page.wait_for_selector(f'{tid("signin-status")}[data-error="true"]', timeout=WAIT_MS)
    assert "wrong login name or passphrase" in page.locator(tid("signin-status")).inner_text()
    form.locator('input[name="passphrase"]').fill(passphrase)
    form.locator('button[type="submit"]').tap()
    page.wait_for_selector(tid(f"product-{TEE}"), timeout=WAIT_MS)
    assert page.locator(tid("who")).inner_text() == "sam"
    assert page.evaluate("document.cookie") == ""  # the session is HttpOnly: no script reads it
    assert page.locator(tid("offline-banner")).is_hidden()  # nothing sold, nothing waiting for the fleet

    page.locator(tid("tab-stock")).tap()
    page.wait_for_selector(tid(f"stock-{TEE}"), timeout=WAIT_MS)
    assert left_of(page, TEE) == "12" and left_of(page, STICKERS) == "100"
    assert "6 products for NM26, from the fleet (version 1)" in page.locator(tid("catalog-info")).inner_text()
    page.locator(tid("tab-sell")).tap()

    # Tapping a product, +1 on its line, a code typed (or a wedge scanner's) with Enter.
    page.locator(tid(f"product-{TEE}")).tap()
    page.wait_for_selector(f'{tid(f"line-{TEE}")}[data-qty="1"]', timeout=WAIT_MS)
    page.locator(tid(f"plus-{TEE}")).tap()
    page.wait_for_selector(f'{tid(f"line-{TEE}")}[data-qty="2"]', timeout=WAIT_MS)
    page.locator(tid("code-input")).fill(STICKERS)
    page.locator(tid("code-input")).press("Enter")
    page.wait_for_selector(f'{tid(f"line-{STICKERS}")}[data-qty="1"]', timeout=WAIT_MS)
    page.locator(tid("code-input")).fill("NOPE-42")
    page.locator(tid("code-input")).press("Enter")
    page.wait_for_selector(f'{tid("message")}[data-error="true"]', timeout=WAIT_MS)
    assert "no product with code 'NOPE-42'" in page.locator(tid("message")).inner_text()

    # A till-mode scanner adds a line to the same station: the open order shows it by itself.
    assert server.till.add("main", "TEE-BLK-S").ok
    page.wait_for_selector(f'{tid("line-TEE-BLK-S")}[data-qty="1"]', timeout=WAIT_MS)
    assert page.locator(tid("cart-total")).inner_text() == "79.00 EUR"  # 2 x 25.00 + 4.00 + 25.00
    fits_the_screen(page)
    page.screenshot(path=str(ARTIFACTS / "till-phone-order.png"), full_page=True)
    assert_no_serious_violation(page)

    # Paid in cash with the printer out of paper: the order stands, its receipt waits, then prints.
    printer.paper_out()
    page.locator(tid("pay-cash")).tap()
    page.wait_for_selector(f'{tid("receipt-status")}[data-state="queued"]', timeout=WAIT_MS)
    assert "Order #1 paid: 79.00 EUR" in page.locator(tid("message")).inner_text()
    assert "waiting for the printer" in page.locator(tid("receipt-status")).inner_text()
    assert page.locator(f'{tid("cart")} li').count() == 0  # the order is paid: the next one starts empty
    printer.model.load_paper()
    page.wait_for_selector(f'{tid("receipt-status")}[data-state="done"]', timeout=WAIT_MS)
    assert "79.00" in printer.roll.text and "Night-market tee" in printer.roll.text

    # No uplink here: the sale waits for the fleet, and the page says so (and that it is safe).
    page.wait_for_selector(f'{tid("offline-banner")}[data-pending="1"]', state="visible", timeout=WAIT_MS)
    assert "not uploaded yet" in page.locator(tid("offline-banner")).inner_text()

    # Stock dropped by what was sold: on the product's button, and on the Stock tab.
    page.wait_for_selector(f'{tid(f"product-{TEE}")} .left:text-is("10 left")', timeout=WAIT_MS)
    page.locator(tid("tab-stock")).tap()
    page.wait_for_selector(f'{tid(f"stock-{TEE}")}[data-left="10"]', timeout=WAIT_MS)
    assert left_of(page, STICKERS) == "99"

    # One tee back: two taps on its refund (a stray tap does nothing), a slip printed, stock back.
    page.locator(tid("tab-orders")).tap()
    [order] = server.till.orders()
    refund = page.locator(tid(f"refund-{order['id']}-{TEE}"))
    refund.tap()
    assert refund.inner_text() == "Tap again to refund" and not server.till.order(order["id"])["refunds"]
    refund.tap()
    row = tid(f"order-{order['id']}")
    page.wait_for_selector(f'{row}[data-refunded="2500"]', timeout=WAIT_MS)
    assert "refunded 1 × TEE-BLK-M: 25.00 EUR back" in page.locator(tid("message")).inner_text()
    wait_until(lambda: printer.roll.cuts == 2, what="the refund slip printed")
    fits_the_screen(page)
    page.screenshot(path=str(ARTIFACTS / "till-phone-orders.png"), full_page=True)
    assert_no_serious_violation(page)
    page.locator(tid("tab-stock")).tap()
    page.wait_for_selector(f'{tid(f"stock-{TEE}")}[data-left="11"]', timeout=WAIT_MS)

    # No uplink to bring a catalog: one loaded on the page, checked whole first.
    good = CATALOG.read_text(encoding="utf-8")
    page.locator(tid("catalog-file")).set_input_files(files=[{"name": "catalog.csv", "mimeType": "text/csv",
                                                               "buffer": good.replace("18.5,", "18.555,").encode()}])
    page.locator(f'{tid("catalog-form")} button[type="submit"]').tap()
    page.wait_for_selector(f'{tid("catalog-status")}[data-error="true"]', timeout=WAIT_MS)
    status = page.locator(tid("catalog-status")).inner_text()
    assert "nothing loaded" in status and "line 5, price" in status and "more than two decimals" in status
    page.locator(tid("catalog-file")).set_input_files(files=[{"name": "catalog.csv", "mimeType": "text/csv",
                                                               "buffer": good.encode()}])
    page.locator(f'{tid("catalog-form")} button[type="submit"]').tap()
    page.wait_for_selector(f'{tid("catalog-status")}[data-error="false"]', timeout=WAIT_MS)
    assert page.locator(tid("catalog-status")).inner_text() == "Loaded 6 products."
    page.wait_for_function("document.querySelector('[data-testid=catalog-info]').textContent.includes('loaded at the till')",
                           timeout=WAIT_MS)

    # Signing out ends the session: the form again, and the till's API answers no more.
    page.locator(tid("signout")).tap()
    form.wait_for(state="visible", timeout=WAIT_MS)
    status = page.evaluate("fetch('/till/api/cart').then(r => r.status)")
    assert status == 401
