"""The crew pages (fleet/api/static/crew.js) on a phone (390x844) in a real headless Chromium, against
a real kit: two doors running the real scanner firmware (MicroPython unix port, from its ROMFS image,
each with its simulated QR module), the kit's agent as the service runs it (``popkit agent run
--simulate``: its hub, ticket list, printer and light), a real Mosquitto and the real fleet on SQLite
behind uvicorn.

What the crew member sees, doing each job as the crew does it:

- the doors' attendance for tonight's event, per door;
- a ticket both doors let in while the kit's hub was down, with both scans, and its alert;
- a ticket revoked on the phone reaching each door's config, then refused at the door (the
  firmware's own verdict, ``revoked``), and that refusal on the page;
- the kit-up history, each problem with its fix;
- a test label and a custom label printed (the agent acks each), a light switched;
- the audit of their kit naming them; ops reaching the same pages at a desk; and another crew's
  member finding no such kit.

Each page fits the phone's width and axe-core finds no serious or critical violation on it.

Screenshots of each page go to test-artifacts/crew-<page>.png.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from fleet.alerts import AlertConfig, evaluate
from fleet.auth.testing import token_as
from kits.tickets import EventKey, issue
from popkit.broker import free_port
from simulators.pwm import PwmReceiver
from simulators.scanner import ScannerSim
from tests.conftest import start_fleet, wait_until
from tests.device.firmware import Device, rom_images  # noqa: F401 - fixture
from tests.device.test_scanner_app import BUDGET, door, write_config
from tests.axe import BLOCKING, describe, run_axe
from tests.test_dashboard_updates import ARTIFACTS, chromium  # noqa: F401 - the browser fixture

KIT = "ck"
EVENT = "CREW-NIGHT"
DOORS = ("ck-door-a", "ck-door-b")
LIGHTS = "ck-lights-1"
L = 257  # linear duty_u16 per level (the controller runs with gamma null here)
# The controller's timeline as the venue's compiler would push it: two scenes, dark by default.
TIMELINE = {"format": 1, "scenes": {"dark": {"levels": {}}, "warm": {"levels": {"r": 90, "w": 40}}}, "default": "dark"}
PHONE = dict(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
MANIFEST = """
id = "ck"
name = "Crew kit"
agent = "ck-agent"

[[devices]]
id = "ck-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:/dev/ttyUSB1"
telemetry_s = 2

[[devices]]
id = "ck-flood"
role = "light"
model = "relay"
bus = "gpio:17"
expect = { safety = true }

[[devices]]
id = "ck-door-a"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "ck-door-b"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "ck-lights-1"
role = "lighting"
model = "esp32-pwm-dmx"
[devices.outputs]
pwm = { r = 25, g = 26, b = 27, w = 14 }
"""


class Kit:
    """The fleet under uvicorn, the two doors, and (once started) the agent."""

    def __init__(self, broker, rom_images, tmp_path):  # noqa: F811
        import uvicorn

        self.tmp = tmp_path
        self.broker = broker
        self.manifest = tmp_path / "ck.toml"
        self.manifest.write_text(MANIFEST)
        self.fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(self.manifest,))
        self.app = self.fleet.api.app
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn serving the fleet")
        self.sims: dict[str, ScannerSim] = {}
        self.devs: dict[str, Device] = {}
        for name in DOORS:
            # Flashed with no event key: the fleet gives it tonight's, as ops do.
            sim = self.sims[name] = ScannerSim()
            cfg = write_config(tmp_path / f"{name}.json", sim, broker.port, tmp_path / f"{name}-flash", keys=[],
                               kit=KIT, device=name)
            dev = self.devs[name] = Device.from_rom(rom_images["scanner"], cfg, budget=BUDGET)
            dev.expect(r"READY", timeout=10)
            sim.wait_connected(1, timeout=10)
        self.agent: subprocess.Popen | None = None
        self.pwm: PwmReceiver | None = None
        self.rom = rom_images

    def start_lights(self) -> None:
        """The lighting controller switched on: the real firmware, its PWM on a simulated strip."""
        self.pwm = PwmReceiver()
        cfg = {"kit": KIT, "device": LIGHTS, "broker": ["127.0.0.1", self.broker.port], "dmx_slots": 0,
               "state_dir": str(self.tmp / "lights-flash"), "pwm": ["127.0.0.1", self.pwm.port], "gamma": None,
               "telemetry_s": 1, "keepalive": 5, "response_ms": 1500, "backoff_ms": 200, "backoff_max_ms": 500}
        (self.tmp / "lights-flash").mkdir()
        path = self.tmp / "lights.json"
        path.write_text(json.dumps(cfg))
        self.devs[LIGHTS] = Device.from_rom(self.rom["lighting"], path, budget=BUDGET)

    def start_agent(self) -> None:
        data = self.tmp / "agent-data"
        env = self.tmp / "agent.env"
        env.write_text(f"POPKIT_MQTT_URL={self.broker.url}\nPOPKIT_AGENT_DATA='{data}'\n")
        self.agent = subprocess.Popen([sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(self.manifest),
                                       "--env", str(env), "--simulate"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: (data / "agent.sock").exists() or self.agent.poll() is not None, 30, what="the agent's socket")
        assert self.agent.poll() is None, self.agent.stderr.read()

    def close(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(20)
        for d in self.devs.values():
            d.kill()
        for s in self.sims.values():
            s.close()
        if self.pwm is not None:
            self.pwm.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.fleet.ingest.stop()
        self.fleet.store.close()


@pytest.fixture
def kit(broker, rom_images, tmp_path):  # noqa: F811
    k = Kit(broker, rom_images, tmp_path)
    yield k
    k.close()


def signed_in(chromium, kit: Kit, token: str, **kwargs):  # noqa: F811
    ctx = chromium.new_context(**kwargs)
    ctx.add_cookies([{"name": "popkit_token", "value": token, "url": kit.base, "httpOnly": True, "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: d.accept())  # the revoke confirmation, as the crew member taps OK
    return page, errors


def fits(page) -> None:
    width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], f"{width[0]}px wide content in a {width[1]}px viewport"


def shot(page, name: str) -> None:
    """The page fits the phone, axe-core finds nothing serious on it as drawn with real data, and its picture."""
    fits(page)
    blocking = [v for v in run_axe(page) if v["impact"] in BLOCKING]
    assert not blocking, f"{name}: serious or critical accessibility violations:\n{describe(blocking)}"
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header stays on top in the whole-page picture
    page.screenshot(path=str(ARTIFACTS / f"crew-{name}.png"), full_page=True)


def test_a_crew_member_runs_the_doors_revokes_a_ticket_the_door_refuses_and_runs_the_kit_from_a_phone(kit, chromium):  # noqa: F811
    fleet = kit.fleet
    key = EventKey.generate(EVENT)
    now = int(time.time())
    t = {n: issue(key, EVENT, n, "GA", now - 600, now + 3600) for n in ("T1", "T2", "T3", "T4", "T5")}
    # Ops give the doors tonight's key (the fleet pushes it in each door's retained config).
    r = fleet.api.put(f"/api/v1/events/{EVENT}/key", json={"key": key.secret.hex(), "not_before": now - 3600,
                                                           "expires": now + 86400})
    assert r.status_code == 200, r.text
    for p in r.json()["pushed"]:
        kit.devs[p["device_id"]].expect(rf"CONFIG {p['version']} ", timeout=10)
    # The venue's lighting reached the kit's controller (still switched off): its timeline, retained.
    timeline = fleet.api.put(f"/api/v1/devices/{LIGHTS}/config", json={"data": TIMELINE})
    assert timeline.status_code == 200, timeline.text

    # Doors open before the kit's Pi is up (no hub): each door decides alone, so T1 gets in twice.
    a, b = kit.sims[DOORS[0]], kit.sims[DOORS[1]]
    assert door(a, t["T1"]) == "green"
    assert door(b, t["T1"]) == "green"
    assert door(a, t["T2"]) == "green"
    assert door(b, t["T3"]) == "green"
    assert door(a, t["T1"]) == "red"  # this door remembers it
    wait_until(lambda: fleet.api.get(f"/api/v1/events/{EVENT}/attendance").status_code == 200
               and fleet.api.get(f"/api/v1/events/{EVENT}/attendance").json()["scans"] == 5, 20,
               what="the doors' five check-ins in the fleet")
    evaluate(fleet.store, cfg=AlertConfig())
    kit.start_agent()  # the Pi comes up: its self-test reports the kit-up verdict
    wait_until(lambda: fleet.api.get(f"/api/v1/kits/{KIT}/readiness").json(), 30, what="the agent's kit-up report")

    page, errors = signed_in(chromium, kit, token_as(kit.app, "crew-ck", "crew", kits=[KIT]), **PHONE)
    try:
        # Doors: attendance per door, and the double entry with both scans and its alert.
        page.goto(f"{kit.base}/#/crew/{KIT}")
        page.wait_for_selector('[data-testid="crew-doubles"][data-count="1"]', timeout=10_000)
        assert page.locator('[data-testid="crew-link"]').is_visible()
        assert page.locator('[data-testid="crew-event"]').input_value() == EVENT
        door_a = page.locator(f'[data-testid="door-{DOORS[0]}"]')
        assert (door_a.get_attribute("data-admitted"), door_a.get_attribute("data-refused")) == ("2", "1")
        assert page.locator(f'[data-testid="door-{DOORS[1]}"]').get_attribute("data-admitted") == "2"
        assert page.locator('[data-testid="crew-admitted"]').inner_text() == "4"
        double = page.locator('[data-testid="double-T1"]')
        scans = double.locator('[data-testid="double-scan"]').all_inner_texts()
        assert len(scans) == 2 and DOORS[0] in scans[0] and DOORS[1] in scans[1], scans
        assert all("hub not asked" in s for s in scans)
        alert = page.locator('[data-testid="crew-double-alert"]')
        assert "1 ticket admitted twice" in alert.inner_text() and "T1" in alert.inner_text()
        shot(page, "doors")

        # Revoke: T5 (a refund) on the phone; each door's config takes it, and the door refuses it.
        page.click('[data-testid="crew-tab-revoke"]')
        form = page.locator('[data-testid="revoke-form"]')
        form.wait_for(timeout=5000)
        submit = page.locator('[data-testid="revoke-submit"]')
        assert submit.bounding_box()["height"] >= 44  # a finger's height
        form.locator('[data-testid="revoke-ticket"]').fill("t5")
        submit.click()
        page.wait_for_selector('[data-testid="revoke-status"][data-state="done"]', timeout=10_000)
        assert "T5 revoked: sent to 2 doors" in page.locator('[data-testid="revoke-status"]').inner_text()
        for name in DOORS:
            page.wait_for_selector(f'[data-testid="revoke-door-{name}"][data-state="on"]', timeout=20_000)
        assert door(a, t["T5"]) == "red"
        kit.devs[DOORS[0]].expect(r"SCAN revoked T5 ", timeout=5)
        page.wait_for_selector('[data-testid="revoke-scan"][data-verdict="revoked"]', timeout=20_000)
        assert DOORS[0] in page.locator('[data-testid="revoke-scan"]').inner_text()
        assert "crew-ck" in page.locator('[data-testid="revoked-T5"]').inner_text()
        shot(page, "revoke")

        # Kit-up history: the agent's self-test, each problem with its fix (the lighting controller is off).
        page.click('[data-testid="crew-tab-kitup"]')
        page.wait_for_selector('[data-testid="kitup-0"]', timeout=5000)
        lights = page.locator('[data-testid="kitup-problem"][data-device="ck-lights-1"]').first
        assert "fix:" in lights.inner_text()
        fix = fleet.api.get(f"/api/v1/kits/{KIT}/readiness").json()[0]
        [problem] = [p for p in fix["problems"] if p["device"] == "ck-lights-1"]
        assert problem["fix"] in lights.inner_text()
        page.click('[data-testid="kitup-run"]')  # the panel's button, from the phone
        page.wait_for_selector('[data-testid="cmd-ck-agent"][data-status="ok"]', timeout=30_000)
        page.wait_for_selector('[data-testid="kitup-1"]', timeout=10_000)  # the new report on top of the first
        shot(page, "kitup")

        # Controls: a test label and a custom label printed, the floodlight switched, a scene run on the
        # lighting controller, now switched on.
        kit.start_lights()
        kit.devs[LIGHTS].expect(rf"CONFIG {timeline.json()['version']} 1", timeout=15)
        page.click('[data-testid="crew-tab-controls"]')
        page.click('[data-testid="print-test-ck-printer"]')
        page.wait_for_selector('[data-testid="cmd-ck-printer"][data-status="ok"]', timeout=20_000)
        assert "queued" in page.locator('[data-testid="cmd-ck-printer"]').inner_text()
        page.fill('[data-testid="label-text-ck-printer"]', "BACKSTAGE\nCrew only")
        page.fill('[data-testid="label-code-ck-printer"]', "CREW-42")
        page.click('[data-testid="label-print-ck-printer"]')
        page.wait_for_selector('[data-testid="cmd-ck-printer"] >> text=print', timeout=5000)
        page.wait_for_selector('[data-testid="cmd-ck-printer"][data-status="ok"]', timeout=20_000)
        page.click('[data-testid="light-off-ck-flood"]')
        page.wait_for_selector('[data-testid="cmd-ck-flood"][data-status="ok"]', timeout=20_000)
        assert page.locator(f'[data-testid="scene-{LIGHTS}"] option').all_inner_texts() == ["dark", "warm"]
        page.select_option(f'[data-testid="scene-{LIGHTS}"]', "warm")
        page.fill(f'[data-testid="scene-fade-{LIGHTS}"]', "0.5")
        page.click(f'[data-testid="scene-run-{LIGHTS}"]')
        page.wait_for_selector(f'[data-testid="cmd-{LIGHTS}"][data-status="ok"]', timeout=20_000)
        wait_until(lambda: kit.pwm.duties() == [90 * L, 0, 0, 40 * L], 5, what=f"the strip warm (have {kit.pwm.duties()})")
        [scene] = fleet.api.get(f"/api/v1/devices/{LIGHTS}/commands").json()
        assert (scene["action"], scene["args"], scene["requested_by"]) == ("scene", {"scene": "warm", "fade_ms": 500}, "crew-ck")
        printed = [c for c in fleet.api.get("/api/v1/devices/ck-printer/commands").json()]
        assert [(c["action"], c["status"], c["requested_by"]) for c in printed] == [
            ("print", "ok", "crew-ck"), ("identify", "ok", "crew-ck")]
        assert printed[0]["args"]["receipt"]["blocks"][0]["text"] == "BACKSTAGE"
        shot(page, "controls")

        # Audit: what this crew member did at their kit.
        page.click('[data-testid="crew-tab-audit"]')
        page.wait_for_selector('[data-testid="crew-audit-rows"]', timeout=5000)
        rows = page.locator('[data-testid="audit-row"]').all_inner_texts()
        assert any("revocations" in r and "crew-ck" in r for r in rows), rows
        assert any("command print" in r and "ck-printer" in r for r in rows), rows
        assert any("command set" in r and "ck-flood" in r for r in rows), rows
        shot(page, "audit")
        assert not errors, errors
    finally:
        page.context.close()

    # Ops, at a desk: the same pages for any kit, from the crew list; the desktop fits too.
    page, errors = signed_in(chromium, kit, token_as(kit.app, "ops-desk", "ops"), viewport={"width": 1280, "height": 900})
    try:
        page.goto(f"{kit.base}/#/crew")
        page.click(f'[data-testid="crew-kit-{KIT}"]')
        page.wait_for_selector('[data-testid="double-T1"]', timeout=10_000)
        fits(page)
        assert not errors, errors
    finally:
        page.context.close()

    # Another crew's member: no such kit, nothing of it shown.
    page, errors = signed_in(chromium, kit, token_as(kit.app, "crew-other", "crew", kits=["other"]), **PHONE)
    try:
        page.goto(f"{kit.base}/#/crew/{KIT}/revoke")
        page.wait_for_selector('[data-testid="crew-error"] >> text=No kit', timeout=5000)
        assert page.locator('[data-testid="revoke-form"]').count() == 0
        assert not errors, errors
    finally:
        page.context.close()
