"""The ops dashboard at ``/``: the live stream behind it (SSE), and the page itself in a real headless
Chromium (Debian's ``chromium``, driven by Playwright): kits and devices show up, a device whose MQTT
connection dies turns offline on screen within seconds of its Last Will, it fits a phone, and a
command's ack shows on the button's line. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fleet.auth.passwords import hash_password, new_password
from fleet.auth.testing import token_as
from fleet.events_bus import MAILBOX_MAX, EventBus
from kits.contract import Ack, BatteryTelemetry, State, decode, encode, topic
from popkit.broker import free_port
from tests.conftest import DEMO_KIT, Collector, publisher, wait_until

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("POPKIT_CHROMIUM", "/usr/bin/chromium")
KIT = "demo"
ROLES = {"demo-agent": "agent", "demo-power": "powerbank", "demo-printer": "printer",
         "demo-scanner-1": "scanner", "demo-lights-1": "lighting"}
DOOMED = "demo-scanner-1"  # the device whose connection the test kills
ACKER = "demo-lights-1"  # the device that answers commands


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- the fleet behind a real HTTP server

class LiveFleet:
    """store + ingest + the API under uvicorn on a free port (what ``popkit fleet serve`` runs)."""

    def __init__(self, mqtt_url: str, db_url: str):
        import uvicorn

        from fleet.api.app import create_app
        from fleet.service import build
        from fleet.settings import FleetSettings

        settings = FleetSettings(mqtt_url=mqtt_url, db_url=db_url, kits=[str(DEMO_KIT)],
                                 client_id=f"fleet-dash-{secrets.token_hex(3)}", batch_wait_ms=5)
        self.store, self.ingest = build(settings)
        self.ingest.start()
        assert self.ingest.connected.wait(10), "fleet did not connect to the broker"
        self.app = create_app(self.store, self.ingest)
        # An ops user with a password, to sign in through the page's form; the token for the rest.
        self.user, self.password = "dash-ops", new_password()
        self.app.state.auth.users.put(self.user, "ops", password_hash=hash_password(self.password))
        self.token = token_as(self.app, self.user)
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn serving the fleet")

    def get(self, path: str):
        import httpx

        return httpx.get(self.base + path, timeout=5, headers=self.auth)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.ingest.stop()
        self.store.close()


@pytest.fixture
def live(broker, tmp_path):
    f = LiveFleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    yield f
    f.close()


def birth(device: str, online: bool = True, ts: int | None = None, reason: str = "birth") -> bytes:
    return encode(State(boot="d00d01", seq=0, ts=ts or now_ms(), online=online, role=ROLES[device],
                        fw="test-1.0", reason=reason))


def bring_up(url: str, skip: tuple[str, ...] = ()) -> object:
    """Retained births for the demo kit's devices and half an hour of power-bank readings."""
    pub = publisher(url)
    for device in ROLES:
        if device not in skip:
            pub.publish(topic(KIT, device, "state"), birth(device), qos=1, retain=True).wait_for_publish(5)
    start = now_ms() - 30 * 60_000
    for seq in range(1, 31):
        msg = BatteryTelemetry(boot="d00d01", seq=seq, ts=start + seq * 60_000, source="sim", v=12.4 + seq / 100,
                               i=-1.5, soc=90.0 - seq / 2)
        pub.publish(topic(KIT, "demo-power", "telemetry"), encode(msg), qos=1)
    return pub


DOOMED_DEVICE = r"""
import sys, time
from plumbing.mqtt import new_client, parse_mqtt_url
from kits.contract import State, encode, topic
url, kit, device = sys.argv[1:4]
t = parse_mqtt_url(url)
c = new_client(device + "-doomed")
ts = int(time.time() * 1000)
state = topic(kit, device, "state")
c.will_set(state, encode(State(boot="dead01", seq=0, ts=ts + 1, online=False, role="scanner", reason="lwt")), qos=1, retain=True)
c.connect(t.host, t.port, keepalive=30, clean_start=True)
c.loop_start()
c.publish(state, encode(State(boot="dead01", seq=0, ts=ts, online=True, role="scanner", fw="scanner-test")), qos=1, retain=True).wait_for_publish(5)
print("up", flush=True)
while True:
    time.sleep(1)
"""


def start_doomed_device(url: str) -> subprocess.Popen:
    """A device in a process of its own, with its Last Will set; SIGKILL drops its TCP connection
    without a DISCONNECT, so the broker publishes the Will (as for a power cut or a crash)."""
    proc = subprocess.Popen([sys.executable, "-c", DOOMED_DEVICE, url, KIT, DOOMED], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "up", proc.stderr.read() if proc.poll() is not None else line
    return proc


class TimedCollector(Collector):
    """A Collector that also notes when each message arrived (wall clock, as the browser's Date.now())."""

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self.arrived = getattr(self, "arrived", []) + [time.time()]


class AckingDevice:
    """A device that answers every command with ``ok`` (what firmware and agent do after running it)."""

    def __init__(self, url: str, device: str):
        self.device = device
        self.seq = 0
        self.pub = publisher(url)
        self.sub = Collector(url, [topic(KIT, device, "cmd")])
        self.sub.client.on_message = self._on_message

    def _on_message(self, _c, _u, msg) -> None:
        cmd = decode("cmd", msg.payload)
        self.seq += 1
        ack = Ack(boot="a11ce1", seq=self.seq, ts=now_ms(), cmd_id=cmd.id, status="ok", detail=f"{cmd.action} done")
        self.pub.publish(topic(KIT, self.device, "ack"), encode(ack), qos=1)

    def close(self) -> None:
        self.sub.close()
        self.pub.disconnect()
        self.pub.loop_stop()


# ---------------------------------------------------------------- the stream

def test_bus_coalesces_for_a_slow_client_and_never_blocks_the_publisher():
    loop = asyncio.new_event_loop()
    try:
        bus = EventBus()
        slow = bus.subscribe(loop)
        t0 = time.perf_counter()
        for n in range(20_000):  # nobody reads: the publisher must not notice
            bus.publish({f"kit{n % 3}"}, {f"dev{n % 7}"})
        assert time.perf_counter() - t0 < 2.0
        change = slow.take()
        assert change.kits == {"kit0", "kit1", "kit2"} and len(change.devices) == 7 and not change.all
        assert slow.take() is None and slow.coalesced == 19_999
        for n in range(MAILBOX_MAX + 1):  # too many to name: collapses into "re-fetch everything"
            bus.publish(set(), {f"d{n}"})
        assert slow.take().all
        slow.close()
        assert bus.subscribers == 0
    finally:
        loop.close()


def read_events(lines, until: str, timeout: float, out: list) -> None:
    """Parse an SSE response's lines into (event, data) pairs until one named ``until`` arrives."""
    name, data = None, []
    deadline = time.monotonic() + timeout
    for line in lines:
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and name:
            out.append((name, json.loads("\n".join(data)) if data else None))
            if name == until:
                return
            name, data = None, []
        if time.monotonic() > deadline:
            return


def test_stream_tells_every_client_which_kit_and_device_changed_and_forgets_them_on_disconnect(live, broker):
    import httpx

    clients = [httpx.Client(base_url=live.base, timeout=10, headers=live.auth) for _ in range(3)]
    streams = [c.stream("GET", "/api/v1/stream") for c in clients]
    responses = [s.__enter__() for s in streams]
    lines = [r.iter_lines() for r in responses]
    try:
        for r, ls in zip(responses, lines):
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            got: list = []
            read_events(ls, "hello", 5, got)
            assert got[-1][0] == "hello"
        wait_until(lambda: live.app.state.bus.subscribers == 3, what="three subscribers")
        pub = publisher(broker.url)
        pub.publish(topic(KIT, DOOMED, "state"), birth(DOOMED), qos=1, retain=True).wait_for_publish(5)
        for ls in lines:
            got = []
            read_events(ls, "change", 5, got)
            assert got and got[-1] == ("change", {"kits": [KIT], "devices": [DOOMED], "all": False})
        pub.disconnect()
    finally:
        for s in streams:
            s.__exit__(None, None, None)
        for c in clients:
            c.close()
    wait_until(lambda: live.app.state.bus.subscribers == 0, timeout=5, what="closed streams unsubscribed")


def test_a_quiet_stream_is_pinged(live, monkeypatch):
    import httpx

    from fleet.api.routes import stream

    monkeypatch.setattr(stream, "PING_S", 0.3)
    with httpx.stream("GET", live.base + "/api/v1/stream", timeout=5, headers=live.auth) as r:
        lines = r.iter_lines()
        read_events(lines, "hello", 5, [])
        t0 = time.monotonic()
        assert next(line for line in lines if line) == ": ping"
        assert 0.2 < time.monotonic() - t0 < 2


def test_page_and_its_assets_are_served_without_a_cdn(live):
    page = live.get("/")
    assert page.status_code == 200 and "PopKit fleet" in page.text and 'name="viewport"' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from outside the fleet
    js = live.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "EventSource" in js.text and "https://" not in js.text
    assert live.get("/static/app.css").headers["content-type"].startswith("text/css")
    assert live.get("/static/..%2Fapp.py").status_code == 404
    assert live.get("/static/nope.js").status_code == 404


# ---------------------------------------------------------------- in a real browser

class SignedInBrowser:
    """A browser whose pages carry the fleet's sign-in cookie (as after the form; one test uses the form)."""

    def __init__(self, browser, live: LiveFleet):
        self.raw, self.live = browser, live

    def new_context(self, **kwargs):
        ctx = self.raw.new_context(**kwargs)
        ctx.add_cookies([{"name": "popkit_token", "value": self.live.token, "url": self.live.base, "httpOnly": True,
                          "sameSite": "Strict"}])
        return ctx

    def new_page(self, **kwargs):
        return self.new_context(**kwargs).new_page()


@pytest.fixture
def browser(live):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (./dev test does)")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(f"{CHROMIUM} not found: the dashboard tests need Debian's chromium (apt-get install chromium; "
                    "./dev test installs it), or set POPKIT_CHROMIUM")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield SignedInBrowser(b, live)
        b.close()


def test_signing_in_through_the_form_shows_the_fleet_and_signing_out_shows_the_form_again(live, browser):
    """No cookie: the page asks to sign in; a wrong password says so; the right one shows the kits;
    the token is in an HttpOnly cookie (no script sees it, nothing in localStorage); signing out ends it."""
    page = browser.raw.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live.base + "/")
    form = page.locator('[data-testid="login-form"]')
    form.wait_for(state="visible", timeout=5000)
    assert page.locator('[data-testid="overview"]').is_hidden()
    form.locator('input[name="username"]').fill(live.user)
    form.locator('input[name="password"]').fill("not-the-password")
    form.locator('button[type="submit"]').click()
    page.wait_for_selector('[data-testid="login-status"][data-error="true"]', timeout=5000)
    assert "incorrect" in page.locator('[data-testid="login-status"]').inner_text()
    form.locator('input[name="password"]').fill(live.password)
    form.locator('button[type="submit"]').click()
    page.wait_for_selector(f'[data-testid="kit-{KIT}"]', timeout=5000)
    assert live.user in page.locator('[data-testid="user-name"]').inner_text()
    [cookie] = [c for c in page.context.cookies() if c["name"] == "popkit_token"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    assert page.evaluate("document.cookie") == "" and page.evaluate("localStorage.length") == 0
    page.click('[data-testid="logout"]')
    form.wait_for(state="visible", timeout=5000)
    assert not [c for c in page.context.cookies() if c["name"] == "popkit_token"]
    assert not errors, errors


def dev_sel(device: str, online: bool | None = None, scope: str = "") -> str:
    s = f'{scope} [data-testid="device-{device}"]'.strip()
    return s if online is None else s + f'[data-online="{str(online).lower()}"]'


def test_a_killed_device_turns_offline_on_screen_within_seconds_of_its_last_will(live, broker, browser):
    pub = bring_up(broker.url, skip=(DOOMED,))
    doomed = start_doomed_device(broker.url)
    wills = TimedCollector(broker.url, [topic(KIT, DOOMED, "state")])
    try:
        wait_until(lambda: (k := live.get(f"/api/v1/kits/{KIT}").json())["devices_online"] == 5 and k["battery"],
                   what="the demo kit online with a battery reading")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live.base + "/")

        # The overview: the kit, online, every device online, the battery.
        kit = page.locator(f'[data-testid="kit-{KIT}"]')
        kit.wait_for(timeout=5000)
        page.wait_for_selector('[data-testid="live"][data-state="open"]', timeout=5000)
        assert kit.get_attribute("data-state") == "online"
        for device in ROLES:
            assert page.locator(dev_sel(device, True, "#kits")).count() == 1, device
        assert "%" in kit.locator('[data-testid="battery"]').inner_text()
        batteries = live.get(f"/api/v1/kits/{KIT}").json().get("batteries") or []
        if any(b.get("hours_left") for b in batteries):  # the fleet forecasts: the page shows it
            assert " left" in kit.locator('[data-testid="forecast"]').inner_text()

        # Search (done by the fleet) narrows the list; the kit page (hash route) has devices, the battery chart.
        page.fill('[data-testid="search"]', "no-such-kit")
        kit.wait_for(state="detached", timeout=5000)
        assert "No kit matches" in page.locator("#kits").inner_text()
        page.fill('[data-testid="search"]', "scanner")
        kit.wait_for(timeout=5000)
        page.click(f'[data-testid="kit-{KIT}"] h2 a')
        page.wait_for_selector(dev_sel(DOOMED, True, "#kit-page"), timeout=5000)
        page.wait_for_selector('[data-testid="battery-chart"] [role="img"] canvas', timeout=5000)
        assert page.locator(f'#kit-page [data-testid="kit-{KIT}"]').get_attribute("data-state") == "online"

        # Record, in the page, when the device's row turns offline (the DOM change itself).
        page.evaluate("""(sel) => new Promise(ok => {
            window.__offlineAt = null;
            const check = () => { if (!window.__offlineAt && document.querySelector(sel)) window.__offlineAt = Date.now(); };
            new MutationObserver(check).observe(document.body, {subtree: true, childList: true, attributes: true});
            ok();
        })""", dev_sel(DOOMED, False, "#kit-page"))
        n_before = len(wills.messages)
        killed_at = time.time()
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(5)
        page.wait_for_selector(dev_sel(DOOMED, False, "#kit-page"), timeout=5000)
        on_screen_at = page.evaluate("window.__offlineAt") / 1000
        [will_at] = wait_until(lambda: [at for (_t, p, _r), at in list(zip(wills.messages, wills.arrived))[n_before:]
                                         if b'"lwt"' in p], timeout=2, what="the Last Will at a subscriber")
        lwt_to_screen_ms = (on_screen_at - will_at) * 1000
        kill_to_screen_ms = (on_screen_at - killed_at) * 1000
        print(f"\nlwt_to_screen_ms={lwt_to_screen_ms:.0f} kill_to_screen_ms={kill_to_screen_ms:.0f}")
        assert kill_to_screen_ms < 5000
        assert page.locator(f'#kit-page [data-testid="kit-{KIT}"]').get_attribute("data-state") == "degraded"
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # Back on the overview, the kit shows degraded and the device offline too.
        page.click('[data-testid="back"]')
        page.fill('[data-testid="search"]', "")
        page.wait_for_selector(f'[data-testid="kit-{KIT}"][data-state="degraded"]', timeout=2000)
        assert page.locator(dev_sel(DOOMED, False, "#kits")).count() == 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)
        assert not errors, errors
    finally:
        if doomed.poll() is None:
            doomed.kill()
        wills.close()
        pub.disconnect()
        pub.loop_stop()


def test_the_dashboard_fits_a_phone(live, broker, browser):
    pub = bring_up(broker.url)
    try:
        wait_until(lambda: live.get(f"/api/v1/kits/{KIT}").json()["devices_online"] == 5, what="the kit online")
        ctx = browser.new_context(viewport={"width": 375, "height": 812}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
        page = ctx.new_page()
        for path, ready in (("/", f'[data-testid="kit-{KIT}"]'),
                            (f"/#/kit/{KIT}", '[data-testid="battery-chart"] canvas')):
            page.goto(live.base + path)
            page.wait_for_selector(ready, timeout=5000)
            width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert width[0] <= width[1], f"{path}: {width[0]}px wide content in a {width[1]}px viewport"
        # Single column: the kit card and the chart are as wide as the screen allows.
        box = page.locator('[data-testid="battery-chart"]').bounding_box()
        assert box["width"] > 300 and box["x"] + box["width"] <= 375
        page.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
        ctx.close()
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_identify_shows_the_commands_status_from_the_devices_ack(live, broker, browser):
    pub = bring_up(broker.url)
    device = AckingDevice(broker.url, ACKER)
    try:
        wait_until(lambda: live.get(f"/api/v1/kits/{KIT}").json()["devices_online"] == 5, what="the kit online")
        page = browser.new_page()
        page.goto(f"{live.base}/#/kit/{KIT}")
        page.click(f'[data-testid="identify-{ACKER}"]')
        status = page.locator(f'[data-testid="cmd-{ACKER}"]')
        page.wait_for_selector(f'[data-testid="cmd-{ACKER}"][data-status="ok"]', timeout=5000)
        assert "identify" in status.inner_text() and "ok" in status.inner_text().lower()
        [cmd] = live.get(f"/api/v1/devices/{ACKER}/commands").json()
        assert cmd["status"] == "ok" and cmd["detail"] == "identify done"
        # The printer's button prints its self-test label (its identify); nobody answers here: pending.
        assert page.locator('[data-testid="identify-demo-printer"]').inner_text() == "print test label"
        page.click('[data-testid="identify-demo-printer"]')
        page.wait_for_selector('[data-testid="cmd-demo-printer"][data-status="pending"]', timeout=5000)

        # Reboot asks first; the printer (driven by the agent) has none to offer.
        assert page.locator('[data-testid="reboot-demo-printer"]').count() == 0
        page.once("dialog", lambda d: d.dismiss())
        page.click(f'[data-testid="reboot-{ACKER}"]')
        time.sleep(0.3)
        assert [c["action"] for c in live.get(f"/api/v1/devices/{ACKER}/commands").json()] == ["identify"]
        page.once("dialog", lambda d: d.accept())
        page.click(f'[data-testid="reboot-{ACKER}"]')
        page.wait_for_selector(f'[data-testid="cmd-{ACKER}"][data-status="ok"]', timeout=5000)
        assert "reboot" in status.inner_text()
        audit = live.get("/api/v1/audit").json()
        assert audit[0]["what"] == "command reboot" and audit[0]["by"] == live.user and audit[0]["target"] == ACKER
    finally:
        device.close()
        pub.disconnect()
        pub.loop_stop()


def test_a_scan_at_the_door_shows_in_the_kits_recent_check_ins_live(live, broker, browser, tmp_path):
    from agent.link import FleetLink
    from kits.contract import Event

    pub = bring_up(broker.url)
    door = FleetLink(KIT, "demo-scanner-1", "scanner", broker.url, tmp_path / "door.db").start()
    try:
        wait_until(lambda: live.get(f"/api/v1/kits/{KIT}").json()["devices_online"] == 5, what="the kit online")
        page = browser.new_page()
        page.goto(f"{live.base}/#/kit/{KIT}")
        page.wait_for_selector('[data-testid="checkins"]', timeout=5000)
        page.wait_for_selector('[data-testid="live"][data-state="open"]', timeout=5000)
        door.emit("demo-scanner-1", "event", Event, kind="checkin",
                  data={"event": "DASH-1", "ticket": "WALKIN7", "tier": "GA", "verdict": "admitted"})
        row = page.locator('[data-testid="checkin"][data-verdict="admitted"]')
        row.first.wait_for(timeout=5000)
        assert "WALKIN7" in row.first.inner_text() and "DASH-1" in row.first.inner_text()
    finally:
        door.stop()
        pub.disconnect()
        pub.loop_stop()


def test_an_alert_is_acknowledged_then_resolved_from_the_kit_page(live, broker, browser):
    from fleet.alerts import AlertConfig, evaluate
    from kits.contract import PrinterTelemetry

    pub = bring_up(broker.url)
    try:
        wait_until(lambda: live.get(f"/api/v1/kits/{KIT}").json()["devices_online"] == 5, what="the kit online")
        pub.publish(topic(KIT, "demo-printer", "telemetry"),
                    encode(PrinterTelemetry(boot="d00d01", seq=1, ts=now_ms(), online=True, paper="out")), qos=1)
        wait_until(lambda: any(d["id"] == "demo-printer" and d["health"]["status"] == "degraded"
                               for d in live.get(f"/api/v1/kits/{KIT}").json()["devices"]), what="paper out at the fleet")
        evaluate(live.store, now_ms(), AlertConfig())
        [alert] = [a for a in live.get("/api/v1/alerts?state=open").json()["items"] if a["rule"] == "paper_out"]
        page = browser.new_page()
        page.goto(f"{live.base}/#/kit/{KIT}")
        row = page.locator(f'[data-testid="alert-{alert["id"]}"]')
        row.wait_for(timeout=5000)
        assert row.get_attribute("data-state") == "open"
        row.locator('[data-alert-action="acknowledge"]').click()
        page.wait_for_selector(f'[data-testid="alert-{alert["id"]}"][data-state="acknowledged"]', timeout=5000)
        assert live.get(f"/api/v1/alerts/{alert['id']}").json()["acknowledged_by"] == live.user
        row.locator('[data-alert-action="resolve"]').click()
        page.wait_for_selector(f'[data-testid="alert-{alert["id"]}"]', state="detached", timeout=5000)
        assert live.get(f"/api/v1/alerts/{alert['id']}").json()["state"] == "resolved"
    finally:
        pub.disconnect()
        pub.loop_stop()


def test_a_venue_page_shows_each_zones_day_and_an_override_from_it_reaches_the_controllers(live, browser):
    """The venue page: the plan of every zone, an override applied from its form (pushed to the
    controller as a new timeline), the override listed, the controller's desired vs applied."""
    from datetime import datetime, timedelta, timezone
    from zoneinfo import ZoneInfo

    import httpx

    def put(path: str, body: dict) -> None:
        r = httpx.put(live.base + path, json=body, timeout=5, headers=live.auth)
        assert r.status_code == 200, r.text

    v = "/api/v1/venues/hall"
    put(v, {"id": "hall", "name": "The Hall", "tz": "Europe/London", "latitude": 51.5, "longitude": -0.12,
            "hours": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "open": "08:00", "close": "02:00"}]})
    put(f"{v}/zones/stage", {"id": "stage", "name": "Stage", "outputs": [
        {"controller": ACKER, "kind": "pwm", "channel": c} for c in "rgb"]})
    put(f"{v}/zones/exit", {"id": "exit", "name": "Exit", "safety": True, "floor_level": 40,
                            "outputs": [{"controller": ACKER, "kind": "pwm", "channel": "w"}]})
    put(f"{v}/scenes/show", {"id": "show", "levels": {"stage": {"level": 200, "rgb": [255, 40, 200]}}})
    put(f"{v}/scenes/bright", {"id": "bright", "levels": {"stage": {"level": 255}, "exit": {"level": 255}}})
    local = datetime.now(timezone.utc).astimezone(ZoneInfo("Europe/London")).replace(tzinfo=None, microsecond=0)
    put(f"{v}/schedules/tonight", {"id": "tonight", "kind": "once", "scene": "show", "priority": 10,
                                   "start_at": (local - timedelta(hours=1)).isoformat(),
                                   "end_at": (local + timedelta(hours=3)).isoformat()})

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live.base + "/")
    page.click('[data-testid="venues-link"]')
    page.click('[data-testid="venue-hall"] a')
    page.wait_for_selector('[data-testid="plan"] [data-testid="zone-stage"] rect', timeout=5000)
    assert page.locator('[data-testid="zone-exit"] rect[data-layer="floor"]').count() >= 1  # open: the floor
    assert page.locator(f'[data-testid="controller-{ACKER}"]').get_attribute("data-in-sync") == "false"  # nobody applies

    before = live.get(f"/api/v1/devices/{ACKER}/config").json()["version"]
    page.select_option('[data-testid="override-form"] select[name="scene"]', "bright")
    page.click('[data-testid="override-form"] button[type="submit"]')
    page.wait_for_selector('[data-testid="override-status"][data-ok="true"]', timeout=5000)
    page.wait_for_selector('[data-testid^="override-o-"]', timeout=5000)
    assert live.get(f"{v}/preview").json()["zones"]["stage"]["layer"] == "override"
    assert live.get(f"/api/v1/devices/{ACKER}/config").json()["version"] == before + 1
    page.wait_for_selector('[data-testid="zone-stage"] rect[data-layer="override"]', timeout=5000)
    page.click('button[data-span="168"]')
    page.wait_for_selector('button[data-span="168"][aria-pressed="true"]', timeout=5000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-venue.png"), full_page=True)
    page.click('[data-end-override]')
    page.wait_for_selector('[data-testid^="override-o-"]', state="detached", timeout=5000)
    assert live.get(f"{v}/preview").json()["zones"]["stage"]["layer"] == "schedule"
    assert not errors, errors


def test_a_door_with_no_time_shows_its_clock_and_why_it_rebooted_on_the_kit_page(live, broker, browser):
    """A scanner that came back from a watchdog reset with no time yet (year 2000): the kit page says
    so on its row, and once the kit's Pi gives it time, says that instead."""
    pub = bring_up(broker.url, skip=(DOOMED,))
    try:
        def door(clock: str) -> None:
            s = State(boot="d00d02", seq=0, ts=946_684_800_000, online=True, role="scanner", fw="test-1.0",
                      clock=clock, reset_cause="watchdog")
            pub.publish(topic(KIT, DOOMED, "state"), encode(s), qos=1, retain=True).wait_for_publish(5)

        door("unset")
        wait_until(lambda: live.get(f"/api/v1/devices/{DOOMED}").json()["clock"] == "unset", what="the door's clock")
        page = browser.new_page()
        page.goto(f"{live.base}/#/kit/{KIT}")
        row = page.locator(dev_sel(DOOMED, True, "#kit-page"))
        row.wait_for(timeout=5000)
        wait_until(lambda: "clock unset" in row.inner_text(), 5, what="the door's row saying its clock is unset")
        assert "last reset: watchdog" in row.inner_text()
        door("kit")
        wait_until(lambda: "clock kit" in row.inner_text(), 10, what="the door's row saying it has the kit's time")
    finally:
        pub.disconnect()
        pub.loop_stop()
