"""The till page's API (agent/till/web.py) through httpx against the real app: the real Till on
SQLite, its receipts through the kit's print queue to the in-memory ESC/POS printer, and the crew's
kit logins made as ``popkit till login add`` makes them.

What a crew member sees: nothing without signing in; a wrong passphrase is refused, counted, and
after a few the name is held back; selling by tap and by code, paying, the receipt printed, a
refund and a void as new records; stock and pending uploads; and every bad request answered with
a message that says what was wrong, counted, with nothing of the till changed by it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import types
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from agent.printing import PrintQueue
from agent.settings import AgentSettings
from agent.till import web_auth
from agent.till.logins import Logins, logins_path
from agent.till.service import Till
from agent.till.web import DEFAULT_PORT, create_app, serve_till, till_address
from kits.retail.catalog import parse_catalog_csv
from popkit.cli import main as popkit
from simulators.printer import PrinterModel, SimulatedPrinter
from tests.conftest import wait_until

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO / "kits" / "examples" / "catalog.csv"  # kit night-market, event NM26, EUR
KIT = "night-market"
TEE = "TEE-BLK-M"  # 25.00, 20 % tax, 12 carried
STICKERS = "0400000000015"  # 4.00, 7.5 % tax, 100 carried


@dataclass
class TillKit:
    client: TestClient
    till: Till
    logins: Logins
    printer: PrinterModel
    app: object
    passphrase: str

    def sign_in(self, name: str = "sam", passphrase: str | None = None) -> httpx.Response:
        return self.client.post("/till/api/session", json={"name": name, "passphrase": passphrase or self.passphrase})

    def counts(self) -> dict:
        return dict(self.app.state.counts)


@pytest.fixture
def kit(tmp_path):
    model = PrinterModel()
    queue = PrintQueue(tmp_path / "print.db", lambda: SimulatedPrinter(model, device_id="nm-printer"),
                       min_backoff_s=0.01, max_backoff_s=0.05).start()
    till = Till(tmp_path / "till.db", kit=KIT, kit_name="Night market", printer=queue).start()
    products, errors = parse_catalog_csv(CATALOG.read_text(encoding="utf-8"))
    assert not errors
    till.load_catalog(products, "fleet", 1)
    logins = Logins(logins_path(tmp_path))
    passphrase = logins.add("sam")
    app = create_app(till, logins, fail_delay_s=0.01)
    with TestClient(app) as client:
        yield TillKit(client, till, logins, model, app, passphrase)
    queue.stop()
    till.close()


@pytest.fixture
def signed_in(kit):
    assert kit.sign_in().status_code == 200
    return kit


def detail(resp: httpx.Response) -> str:
    d = resp.json()["detail"]
    return d if isinstance(d, str) else d["message"]


def sample_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)


# ---------------------------------------------------------------- signing in

def test_every_api_route_but_sign_in_refuses_a_caller_without_a_session(kit):
    paths = kit.app.openapi()["paths"]
    tried = 0
    for path, ops in paths.items():
        for method in ops:
            if path == "/till/api/session" and method in ("post", "delete"):
                continue  # signing in; signing out clears the cookie of an expired session too
            resp = kit.client.request(method.upper(), sample_path(path), json={})
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text)
            assert "sign in first" in detail(resp)
            tried += 1
    assert tried >= 12 and kit.counts()["unauthenticated"] == tried
    assert kit.till.cart()["lines"] == []


def test_sign_in_sets_an_httponly_strict_session_cookie_and_sign_out_ends_the_session(kit):
    resp = kit.sign_in()
    assert resp.status_code == 200 and resp.json()["name"] == "sam"
    cookie = resp.headers["set-cookie"]
    assert cookie.startswith(f"{web_auth.COOKIE}=")
    for part in ("HttpOnly", "SameSite=strict", "Path=/till", f"Max-Age={web_auth.SESSION_S}"):
        assert part.lower() in cookie.lower(), (part, cookie)
    token = kit.client.cookies.get(web_auth.COOKIE)
    assert kit.client.get("/till/api/session").json()["name"] == "sam"

    assert kit.client.delete("/till/api/session").status_code == 204
    kit.client.cookies.set(web_auth.COOKIE, token, path="/till")  # the old token, kept by a thief
    assert kit.client.get("/till/api/cart").status_code == 401


def test_sign_in_with_a_wrong_passphrase_is_refused_counted_and_then_held_back(kit):
    for _ in range(web_auth.FREE_FAILURES):
        resp = kit.sign_in(passphrase="not-the-passphrase")
        assert resp.status_code == 401 and detail(resp) == "wrong login name or passphrase"
        assert web_auth.COOKIE not in kit.client.cookies
    held = kit.sign_in()  # the right passphrase, too late: the name is held for a while
    assert held.status_code == 429 and "too many wrong passphrases for 'sam'" in detail(held)
    assert int(held.headers["Retry-After"]) > 0
    assert kit.counts()["signin_failed"] == web_auth.FREE_FAILURES and kit.counts()["signin_throttled"] == 1
    # An unknown name is refused with the same words (names are not revealed), and another
    # crew member on the same phone is not held up by sam's mistakes.
    assert detail(kit.sign_in("nobody")) == "wrong login name or passphrase"
    alex = kit.logins.add("alex")
    assert kit.sign_in("alex", alex).status_code == 200


def test_sign_in_trying_name_after_name_from_one_phone_is_held_back(kit):
    tries = web_auth.FREE_FAILURES * web_auth.ADDRESS_FACTOR
    for i in range(tries):  # never more than 1 wrong try per name: only the phone's count grows
        assert kit.sign_in(f"guess{i}", "not-the-passphrase").status_code == 401
    held = kit.sign_in()
    assert held.status_code == 429 and "too many wrong passphrases from this phone: try again in" in detail(held)
    assert kit.counts()["signin_failed"] == tries


def test_removing_a_login_signs_its_phones_out_at_their_next_request(signed_in):
    assert signed_in.client.get("/till/api/cart").status_code == 200
    Logins(signed_in.logins.path).remove("sam")  # as `popkit till login remove sam` does, beside the agent
    resp = signed_in.client.get("/till/api/cart")
    assert resp.status_code == 401


def test_login_cli_prints_the_passphrase_once_and_keeps_only_its_hash(tmp_path, capsys, kit):
    assert popkit(["till", "login", "add", "jo", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    [passphrase] = re.findall(r"^\s+([a-z0-9]{4}(?:-[a-z0-9]{4}){4})$", out, re.M)
    path = logins_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and passphrase not in path.read_text()
    assert set(json.loads(path.read_text())["logins"]["jo"]) == {"hash", "created_ms"}
    assert Logins(path).check("jo", passphrase) and not Logins(path).check("jo", passphrase.upper())

    assert popkit(["till", "login", "add", "jo", "--data", str(tmp_path)]) == 2
    assert "exists; --reset" in capsys.readouterr().err
    assert popkit(["till", "login", "add", "Jo Smith", "--data", str(tmp_path)]) == 2
    assert "lowercase letters" in capsys.readouterr().err
    assert popkit(["till", "login", "list", "--data", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith("jo\t") and passphrase not in listed
    assert popkit(["till", "login", "remove", "jo", "--data", str(tmp_path)]) == 0
    assert not Logins(path).check("jo", passphrase)
    assert popkit(["till", "login", "remove", "jo", "--data", str(tmp_path)]) == 2
    assert "no till login 'jo'" in capsys.readouterr().err


# ---------------------------------------------------------------- selling

def test_sell_by_tap_and_by_code_then_pay_cash_prints_the_receipt_and_takes_stock(signed_in):
    c = signed_in.client
    added = c.post("/till/api/cart/lines", json={"code": " tee-blk-m\r\n"})  # typed, or a wedge scanner's text
    assert added.status_code == 200 and added.json()["added"] == {"sku": TEE, "qty": 1}
    c.post("/till/api/cart/lines", json={"sku": STICKERS, "qty": 2})  # tapped on the grid
    c.post("/till/api/cart/lines", json={"sku": TEE})
    cart = c.put(f"/till/api/cart/lines/{STICKERS}", json={"qty": 3}).json()
    assert [(x["sku"], x["qty"], x["gross_text"]) for x in cart["lines"]] == [(TEE, 2, "50.00"), (STICKERS, 3, "12.00")]
    assert (cart["gross"], cart["gross_text"], cart["currency"]) == (6200, "62.00", "EUR")
    assert cart["tax"] == 833 + 84 and cart["tax_text"] == "9.17"  # 50.00 at 20 %, 12.00 at 7.5 %, tax included

    paid = c.post("/till/api/pay", json={"payment": "cash"})
    assert paid.status_code == 200, paid.text
    order = paid.json()["order"]
    assert paid.json()["cart"]["lines"] == []
    assert (order["payment"], order["by"], order["gross_text"], order["n"]) == ("cash", "sam", "62.00", 1)
    assert order["receipt"]["state"] in ("queued", "printing", "done")
    wait_until(lambda: c.get(f"/till/api/orders/{order['id']}").json()["receipt"]["state"] == "done",
               what="the receipt printed")
    roll = signed_in.printer.roll
    assert "62.00" in roll.text and roll.codes("qr") == [order["id"]]

    stock = {s["sku"]: s for s in c.get("/till/api/stock").json()["stock"]}
    assert (stock[TEE]["sold"], stock[TEE]["left"]) == (2, 10) and stock[STICKERS]["left"] == 97
    assert c.get("/till/api/pending").json()["orders"] == 1  # no uplink in this test: it waits on the kit
    [listed] = c.get("/till/api/orders").json()["orders"]
    assert listed["id"] == order["id"] and listed["gross_text"] == "62.00"


def test_refund_one_then_void_another_order_are_new_records_and_restock(signed_in):
    c = signed_in.client
    c.post("/till/api/cart/lines", json={"sku": TEE, "qty": 2})
    first = c.post("/till/api/pay", json={"payment": "card_terminal"}).json()["order"]
    back = c.post(f"/till/api/orders/{first['id']}/refunds", json={"lines": [{"sku": TEE, "qty": 1}],
                                                                   "reason": "wrong size"})
    assert back.status_code == 200, back.text
    refund = back.json()["refund"]
    assert (refund["kind"], refund["gross_text"], refund["order"], refund["by"]) == ("refund", "25.00", first["id"], "sam")
    assert back.json()["order"]["refunded_text"] == "25.00" and back.json()["order"]["gross"] == 5000  # never edited

    too_much = c.post(f"/till/api/orders/{first['id']}/refunds", json={"lines": [{"sku": TEE, "qty": 2}]})
    assert too_much.status_code == 409 and "at most 1" in detail(too_much)
    no_void = c.post(f"/till/api/orders/{first['id']}/void", json={})
    assert no_void.status_code == 409 and "refunded already" in detail(no_void)

    c.post("/till/api/cart/lines", json={"sku": STICKERS})
    second = c.post("/till/api/pay", json={"payment": "other"}).json()["order"]
    void = c.post(f"/till/api/orders/{second['id']}/void", json={"reason": "rang up by mistake"})
    assert void.status_code == 200 and void.json()["refund"]["kind"] == "void" and void.json()["order"]["voided"]

    stock = {s["sku"]: s for s in c.get("/till/api/stock").json()["stock"]}
    assert (stock[TEE]["sold"], stock[TEE]["refunded"], stock[TEE]["left"]) == (2, 1, 11)
    assert stock[STICKERS]["left"] == 100
    wait_until(lambda: signed_in.printer.roll.cuts == 4, what="two receipts and two refund slips printed")


def test_selling_past_zero_stock_is_allowed_and_flagged(signed_in):
    c = signed_in.client
    c.post("/till/api/cart/lines", json={"sku": "TEE-BLK-S", "qty": 9})  # 8 carried
    order = c.post("/till/api/pay", json={"payment": "cash"}).json()["order"]
    assert order["oversold"] == ["TEE-BLK-S"]
    [row] = [s for s in c.get("/till/api/stock").json()["stock"] if s["sku"] == "TEE-BLK-S"]
    assert (row["left"], row["oversold"]) == (-1, 1)


# ---------------------------------------------------------------- bad input

BAD_REQUESTS = [
    ("post", "/till/api/cart/lines", {}, 422, "give either code (typed or scanned) or sku (tapped)"),
    ("post", "/till/api/cart/lines", {"code": "A", "sku": "B"}, 422, "not both or neither"),
    ("post", "/till/api/cart/lines", {"sku": TEE, "qty": 0}, 422, "qty: Input should be greater than or equal to 1"),
    ("post", "/till/api/cart/lines", {"sku": TEE, "qtty": 2}, 422, "qtty: Extra inputs are not permitted"),
    ("post", "/till/api/cart/lines", {"code": "NOPE-123"}, 404, "no product with code 'NOPE-123' in this till's catalog"),
    ("post", "/till/api/cart/lines", {"code": "tée"}, 422, "'tée' is not a product code"),
    ("post", "/till/api/cart/lines?station=Main!", {"sku": TEE}, 422, "station: String should match pattern"),
    ("put", f"/till/api/cart/lines/{TEE}", {"qty": -1}, 422, "qty: Input should be greater than or equal to 0"),
    ("put", "/till/api/cart/lines/NOPE-123", {"qty": 1}, 404, "NOPE-123 is not in the catalog"),
    ("post", "/till/api/pay", {"payment": "bitcoin"}, 422, "payment: Input should be 'cash', 'card_terminal' or 'other'"),
    ("post", "/till/api/pay", {"payment": "cash"}, 409, "the cart is empty"),
    ("get", "/till/api/orders/00000000-0000-4000-8000-000000000000", None, 404, "no order"),
    ("post", "/till/api/orders/00000000-0000-4000-8000-000000000000/void", {}, 404, "no order"),
    ("get", "/till/api/orders?limit=5000", None, 422, "limit: Input should be less than or equal to 200"),
    ("put", "/till/api/catalog", {"csv": "sku,name\nX,Y\n"}, 422, "nothing loaded"),
]


def test_bad_requests_say_what_was_wrong_are_counted_and_change_nothing(signed_in):
    c = signed_in.client
    c.post("/till/api/cart/lines", json={"sku": STICKERS})
    before = c.get("/till/api/cart").json()
    for method, path, body, status, words in BAD_REQUESTS:
        if path == "/till/api/pay" and status == 409:
            c.delete("/till/api/cart")
        resp = c.request(method.upper(), path, **({"json": body} if body is not None else {}))
        assert resp.status_code == status, (method, path, body, resp.status_code, resp.text)
        assert words in detail(resp), (path, body, detail(resp))
        if path == "/till/api/pay" and status == 409:
            c.post("/till/api/cart/lines", json={"sku": STICKERS})
    assert c.get("/till/api/cart").json() == before  # nothing a refusal touched changed the order
    assert len(signed_in.till.catalog()) == 6 and c.get("/till/api/orders").json()["orders"] == []
    counts = signed_in.counts()
    assert counts["bad_request"] == 8 and counts["add_unknown_sku"] == 1 and counts["add_bad_code"] == 1
    assert counts["not_in_catalog"] == 1 and counts["EmptyCart"] == 1 and counts["unknown_order"] == 2
    assert counts["catalog_refused"] == 1
    assert c.get("/till/api/counts").json() == counts


def test_upload_catalog_csv_is_all_or_nothing_with_each_line_named(signed_in):
    c = signed_in.client
    bad = CATALOG.read_text(encoding="utf-8").replace("18.5,", "18.505,").replace(",12,20,20,", ",12,20,-3,")
    resp = c.put("/till/api/catalog", json={"csv": bad})
    assert resp.status_code == 422
    problems = resp.json()["detail"]["problems"]
    assert any("line 5, price" in p and "more than two decimals" in p for p in problems), problems
    assert any("line 6, stock" in p for p in problems), problems
    assert {p["sku"]: p["price"] for p in c.get("/till/api/catalog").json()["products"]}[TEE] == 2500

    cheaper = CATALOG.read_text(encoding="utf-8").replace("TEE-BLK-M,Night-market tee,25.00", f"{TEE},Night-market tee,22.00")
    assert c.put("/till/api/catalog", json={"csv": cheaper}).json() == {"products": 6}
    tee = {p["sku"]: p for p in c.get("/till/api/catalog").json()["products"]}[TEE]
    assert (tee["price"], tee["price_text"], tee["variant"]) == (2200, "22.00", "black / M")


# ---------------------------------------------------------------- served by the agent

def test_till_address_comes_from_till_listen_else_the_kit_network_else_no_page():
    s = types.SimpleNamespace
    assert till_address(s(till_listen="10.42.0.1:8091", update_listen="")) == ("10.42.0.1", 8091)
    assert till_address(s(till_listen="", update_listen="10.42.0.1")) == ("10.42.0.1", DEFAULT_PORT)
    assert till_address(s(till_listen="", update_listen="")) is None
    assert till_address(AgentSettings(till_listen="[::1]")) == ("::1", DEFAULT_PORT)
    for bad in ("::1", "10.42.0.1:http", "10.42.0.1 8090"):  # refused at start, naming the setting
        with pytest.raises(ValueError, match="till_listen"):
            AgentSettings(till_listen=bad)


def test_serve_till_serves_the_page_on_its_address_and_stops_when_cancelled(kit, tmp_path):
    settings = types.SimpleNamespace(till_listen="127.0.0.1:0", update_listen="", agent_data=tmp_path)
    bound: list[tuple[str, int]] = []

    async def run() -> None:
        task = asyncio.create_task(serve_till(kit.till, settings, started=lambda h, p: bound.append((h, p))))
        while not bound:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        host, port = bound[0]
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            page = await client.get("/till/")
            assert page.status_code == 200 and 'name="viewport"' in page.text and "app.js" in page.text
            assert (await client.get("/till/static/app.js")).status_code == 200
            assert (await client.get("/till/api/cart")).status_code == 401
            # the logins file of this data folder is the one the page checks
            passphrase = Logins(logins_path(tmp_path)).add("kim")
            signed = await client.post("/till/api/session", json={"name": "kim", "passphrase": passphrase})
            assert signed.status_code == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(OSError):
            socket.create_connection((host, port), timeout=2).close()

    asyncio.run(run())
    assert os.path.exists(logins_path(tmp_path))


def test_serve_till_waits_for_its_address_and_listens_once_the_port_is_free(kit, tmp_path, monkeypatch):
    """The kit's address may come up after the agent, or the port be held a moment: the page tries
    again instead of ending the agent's loop (uvicorn would exit the process on a failed bind)."""
    from agent.till import web

    monkeypatch.setattr(web, "RETRY_S", 0.05)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    settings = types.SimpleNamespace(till_listen=f"127.0.0.1:{port}", update_listen="", agent_data=tmp_path)
    bound: list[tuple[str, int]] = []

    async def run() -> None:
        task = asyncio.create_task(serve_till(kit.till, settings, started=lambda h, p: bound.append((h, p))))
        for _ in range(5):  # several tries while the port is held
            await asyncio.sleep(0.05)
        assert not bound and not task.done()
        holder.close()
        while not bound:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/till/")).status_code == 200
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(run())
    assert bound == [("127.0.0.1", port)]


def test_sign_in_with_an_unreadable_logins_file_says_so_and_signs_nobody_in(kit):
    kit.logins.path.write_text("{not json", encoding="utf-8")
    resp = kit.sign_in()
    assert resp.status_code == 503 and "till logins cannot be read" in detail(resp)
    assert web_auth.COOKIE not in kit.client.cookies and kit.counts()["logins_unreadable"] == 1


def test_the_agent_serves_the_till_page_and_stops_on_sigterm(broker, tmp_path):
    """``popkit agent run`` on a kit with a printer: the page on POPKIT_TILL_LISTEN, a sale through
    it with its receipt printed on the simulated printer, and SIGTERM stops the agent, page and all."""
    import signal
    import subprocess
    import sys

    from popkit.broker import free_port

    port = free_port()
    data = tmp_path / "data"
    passphrase = Logins(logins_path(data)).add("sam")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPKIT_")}
    env.update(POPKIT_TILL_LISTEN=f"127.0.0.1:{port}", POPKIT_MQTT_URL=broker.url)
    log = open(tmp_path / "agent.log", "wb")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("popkit")), "agent", "run", "--kit",
                             str(REPO / "kits" / "examples" / "night-market.toml"), "--simulate", "--data", str(data)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}/till/api"

        def page_up() -> bool:
            try:
                return httpx.get(f"{base}/session", timeout=2).status_code == 401
            except httpx.TransportError:
                assert proc.poll() is None, (tmp_path / "agent.log").read_text()
                return False

        wait_until(page_up, timeout=30, what="the agent's till page")
        with httpx.Client(base_url=base, timeout=10) as c:
            assert c.post("/session", json={"name": "sam", "passphrase": passphrase}).status_code == 200
            assert c.put("/catalog", json={"csv": CATALOG.read_text(encoding="utf-8")}).json() == {"products": 6}
            assert c.post("/cart/lines", json={"code": TEE}).status_code == 200
            order = c.post("/pay", json={"payment": "cash"}).json()["order"]
            wait_until(lambda: c.get(f"/orders/{order['id']}").json()["receipt"]["state"] == "done", timeout=20,
                       what="the receipt printed on the kit's simulated printer")
            [tee] = [s for s in c.get("/stock").json()["stock"] if s["sku"] == TEE]
            assert (tee["carried"], tee["sold"], tee["left"]) == (12, 1, 11)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{base}/session", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
