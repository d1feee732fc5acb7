"""The dashboard's field-update views (fleet/api/static/updates.js) in a real headless Chromium, against
a real fleet (store, ingest on a real Mosquitto, the API under uvicorn) holding a real signed release
uploaded through the API:

- ops: the release listed; a bad rollout form answered with the API's reason as text; a rollout started
  from the form; its groups and devices with why each waiting one waits, moved on by the planner and by
  the devices' own state reports (MQTT, ingest); paused with a reason, resumed, aborted after a confirm;
  the release retired.
- crew, on a phone: their kit's update state per device, live; a hold with its reason and who, then
  lifted; no ops control anywhere, and the releases page refused.

Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from fleet.auth.testing import token_as
from kits.contract import State, UpdateReport, encode, topic
from kits.release import new_private_key, public_key_of, write_bundle
from popkit.broker import free_port
from tests.axe import assert_no_serious_violation
from tests.conftest import publisher, wait_until
from tests.test_updates_api import kit_toml, upload_body

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("POPKIT_CHROMIUM", "/usr/bin/chromium")
RELEASE = "scanner-0.4.0"
PAGE_WAIT_MS = 10_000  # the page redraws on the stream's news, and polls every 4 s for the worker's


def now_ms() -> int:
    return int(time.time() * 1000)


class UpdatesFleet:
    """The fleet as ``popkit fleet serve`` runs it (without its rollout worker: the test steps the
    rollouts itself), with the release public key, and two kits: alpha (4 scanners, free) and beta
    (2 scanners, in its show)."""

    def __init__(self, mqtt_url: str, tmp: Path):
        import uvicorn

        from fleet.api.app import create_app
        from fleet.service import build
        from fleet.settings import FleetSettings

        self.pem = new_private_key()
        (tmp / "release.pub").write_text(public_key_of(self.pem).hex() + "\n")
        now = datetime.now(timezone.utc).replace(microsecond=0)
        self.show_ends = now + timedelta(hours=2)
        (tmp / "alpha.toml").write_text(kit_toml("alpha", 4))
        (tmp / "beta.toml").write_text(kit_toml("beta", 2, (now - timedelta(hours=1), self.show_ends)))
        settings = FleetSettings(mqtt_url=mqtt_url, db_url=f"sqlite:///{tmp / 'fleet.db'}",
                                 kits=[str(tmp / "alpha.toml"), str(tmp / "beta.toml")],
                                 client_id=f"fleet-dash-upd-{secrets.token_hex(3)}", batch_wait_ms=5,
                                 release_pubkey=str(tmp / "release.pub"), release_dir=str(tmp / "releases"))
        self.store, self.ingest = build(settings)
        self.ingest.start()
        assert self.ingest.connected.wait(10), "fleet did not connect to the broker"
        self.app = create_app(self.store, self.ingest)
        self.ops_token = token_as(self.app, "dash-ops", "ops")
        self.crew_token = token_as(self.app, "crew-a", "crew", kits=["alpha"])
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn serving the fleet")
        self.api = httpx.Client(base_url=self.base, timeout=10, headers={"Authorization": f"Bearer {self.ops_token}"})
        folder = write_bundle(tmp / "build", "scanner", "0.4.0", 6,
                              {"app_main.mpy": b"M\x06 app 0.4.0", "scanner.mpy": b"M\x06 scanner"}, self.pem,
                              created_ms=now_ms())
        r = self.api.post("/api/v1/releases", json=upload_body(folder))
        assert r.status_code == 201, r.text
        self.release = r.json()

    def step(self) -> list[str]:
        """One step of the rollouts (what the fleet's worker does every few seconds): the devices offered."""
        return sorted(o["device"] for o in self.app.state.updates.step())

    def close(self) -> None:
        self.api.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.ingest.stop()
        self.store.close()


@pytest.fixture
def fleet(broker, tmp_path):
    f = UpdatesFleet(broker.url, tmp_path)
    yield f
    f.close()


@pytest.fixture
def chromium():
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
        yield b
        b.close()


def signed_in(chromium, fleet: UpdatesFleet, token: str, **kwargs):
    """A page whose requests carry the fleet's sign-in cookie for ``token`` (as after the form), and the
    script errors it raised."""
    ctx = chromium.new_context(**kwargs)
    ctx.add_cookies([{"name": "popkit_token", "value": token, "url": fleet.base, "httpOnly": True, "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def report(pub, kit: str, device: str, state: str, why: str | None = None) -> None:
    """The device's retained state carrying its update news, as the firmware publishes it."""
    s = State(boot="0ab0ab01", seq=0, ts=now_ms(), online=True, role="scanner", fw="scanner-0.3.0", clock="synced",
              update=UpdateReport(state=state, why=why, fw=RELEASE))
    pub.publish(topic(kit, device, "state"), encode(s), qos=1, retain=True).wait_for_publish(5)


def row(device: str, state: str) -> str:
    return f'[data-testid="update-{device}"][data-state="{state}"]'


def test_ops_starts_a_rollout_from_the_form_watches_it_move_and_pauses_resumes_and_aborts_it(fleet, broker, chromium):
    pub = publisher(broker.url)
    page, errors = signed_in(chromium, fleet, fleet.ops_token, viewport={"width": 1280, "height": 900})
    try:
        page.goto(fleet.base + "/")
        page.click('[data-testid="releases-link"]')
        rel = page.locator(f'[data-testid="release-{RELEASE}"]')
        rel.wait_for(timeout=5000)
        text = rel.inner_text()
        assert fleet.release["key_id"] in text and "scanner" in text and "0.4.0" in text and "dash-ops" in text
        assert rel.get_attribute("data-retired") == "false"

        # A bad form: the API's 422 (a list of errors) and 409 (a sentence) are shown as text.
        form = page.locator('[data-testid="rollout-form"]')
        status = page.locator('[data-testid="rollout-form-status"]')
        form.locator('[name="error_threshold"]').fill("5")
        form.locator('button[type="submit"]').click()
        page.wait_for_selector('[data-testid="rollout-form-status"][data-ok="false"]', timeout=5000)
        said = status.inner_text()
        assert "422" in said and "error_threshold: Input should be less than or equal to 1" in said, said
        assert "[object Object]" not in said
        form.locator('[name="error_threshold"]').fill("0.5")
        form.locator('[name="kits"]').fill("nowhere")
        form.locator('button[type="submit"]').click()
        wait_until(lambda: "no scanner device matches the target" in status.inner_text(), 5, what="the 409's reason")
        assert fleet.api.get("/api/v1/rollouts").json() == []  # nothing was made

        # The rollout from the form: both kits, a canary then the rest.
        form.locator('[name="kits"]').fill("alpha, beta")
        form.locator('[name="groups"]').fill("1, 100%")
        form.locator('[name="rate_per_min"]').fill("100")
        form.locator('button[type="submit"]').click()
        head = page.locator('[data-testid="rollout"][data-state="running"]')
        head.wait_for(timeout=5000)
        [made] = fleet.api.get("/api/v1/rollouts").json()
        rid = made["id"]
        assert page.url.endswith(f"#/rollouts/{rid}")
        assert (made["release"], made["kits"], made["groups"], made["error_threshold"], made["rate_per_min"],
                made["created_by"]) == (RELEASE, ["alpha", "beta"], ["1", "100%"], 0.5, 100, "dash-ops")
        assert page.locator('[data-testid^="group-"]').count() == 2
        assert page.locator('[data-testid^="update-"]').count() == 6

        # Why each waits, as of now: the canary is next, the others wait for it.
        def reason(device: str) -> str:
            return page.locator(f'[data-testid="update-{device}"] [data-testid="reason"]').inner_text()

        assert reason("alpha-scanner-0") == "offered at the rollout's next step"
        assert reason("alpha-scanner-1") == reason("beta-scanner-0") == "group 2 waits for group 1: 0/1 committed (needs 1)"

        # The planner offers the canary (the page polls); the canary's own state moves it (ingest, the stream).
        assert fleet.step() == ["alpha-scanner-0"]
        page.wait_for_selector(row("alpha-scanner-0", "offered"), timeout=PAGE_WAIT_MS)
        report(pub, "alpha", "alpha-scanner-0", "trial")
        page.wait_for_selector(row("alpha-scanner-0", "trial"), timeout=PAGE_WAIT_MS)
        report(pub, "alpha", "alpha-scanner-0", "committed", "healthy for 60 s")
        page.wait_for_selector(row("alpha-scanner-0", "committed"), timeout=PAGE_WAIT_MS)
        page.wait_for_selector('[data-testid="group-1"][data-complete="true"]', timeout=PAGE_WAIT_MS)
        assert fleet.step() == ["alpha-scanner-1", "alpha-scanner-2", "alpha-scanner-3"]  # beta: in its show
        in_show = f"in show until {fleet.show_ends.strftime('%H:%M')} UTC"
        wait_until(lambda: reason("beta-scanner-0") == in_show, PAGE_WAIT_MS / 1000, what="beta's devices waiting for its show")
        report(pub, "alpha", "alpha-scanner-1", "failed", "hash mismatch: scanner.mpy")
        page.wait_for_selector(row("alpha-scanner-1", "failed"), timeout=PAGE_WAIT_MS)
        assert reason("alpha-scanner-1") == "hash mismatch: scanner.mpy"
        page.wait_for_selector(row("alpha-scanner-2", "offered"), timeout=PAGE_WAIT_MS)
        g2 = page.locator('[data-testid="group-2"]').inner_text()
        assert "(canary)" not in g2 and "100%" in g2
        assert page.locator('[data-testid="group-2"] [data-testid="progress-bar"]').get_attribute("aria-label") == (
            "0 of 5 committed, 1 failed or rolled back, 2 in flight")
        page.screenshot(path=str(ARTIFACTS / "dashboard-rollout.png"), full_page=True)
        # the rollout's page as drawn with real groups and devices (test_dashboard_a11y's list has no rollout)
        assert_no_serious_violation(page)

        # Pause with a reason, resume; abort asks first (dismissed: nothing happens), then is final.
        page.fill('[data-testid="pause-reason-input"]', "checking the canary")
        page.click('[data-testid="pause"]')
        page.wait_for_selector('[data-testid="rollout"][data-state="paused"]', timeout=5000)
        assert page.locator('[data-testid="pause-reason"]').inner_text() == "Paused: by dash-ops: checking the canary"
        assert page.locator('[data-testid="pause"]').is_hidden() and page.locator('[data-testid="resume"]').is_visible()
        page.click('[data-testid="resume"]')
        page.wait_for_selector('[data-testid="rollout"][data-state="running"]', timeout=5000)
        page.once("dialog", lambda d: d.dismiss())
        page.click('[data-testid="abort"]')
        time.sleep(0.3)
        assert fleet.api.get(f"/api/v1/rollouts/{rid}").json()["state"] == "running"
        page.once("dialog", lambda d: d.accept())
        page.click('[data-testid="abort"]')
        page.wait_for_selector('[data-testid="rollout"][data-state="aborted"]', timeout=5000)
        assert page.locator('[data-testid="rollout-controls"]').is_hidden()  # nothing left to control
        assert [e["what"] for e in fleet.api.get("/api/v1/audit").json()][:4] == [
            "POST /api/v1/rollouts/{rollout_id}/abort", "POST /api/v1/rollouts/{rollout_id}/resume",
            "POST /api/v1/rollouts/{rollout_id}/pause", "POST /api/v1/rollouts"]

        # Back on the list: the rollout aborted; the release, no longer in a rollout, retired.
        page.click('a[href="#/releases"]')
        page.wait_for_selector(f'[data-testid="rollout-{rid}"][data-state="aborted"]', timeout=5000)
        page.once("dialog", lambda d: d.accept())
        page.click(f'[data-testid="retire-{RELEASE}"]')
        page.wait_for_selector(f'[data-testid="release-{RELEASE}"][data-retired="true"]', timeout=5000)
        assert fleet.api.get(f"/api/v1/releases/{RELEASE}").json()["retired_ms"]
        assert page.locator('[data-testid="rollout-form"] select[name="release"] option').all_inner_texts() == [
            "no release to roll out"]
        page.screenshot(path=str(ARTIFACTS / "dashboard-releases.png"), full_page=True)

        # A kit's page says why none of its devices would be offered now (its show), and links ops to the rollout.
        page.goto(f"{fleet.base}/#/kit/beta")
        page.wait_for_selector('[data-testid="kit-update-beta-scanner-0"]', timeout=5000)
        assert page.locator('[data-testid="kit-waits"]').inner_text() == f"No update now: {in_show}"
        assert page.locator(f'[data-testid="kit-update-beta-scanner-0"] a[href="#/rollouts/{rid}"]').count() == 1
        assert not errors, errors
    finally:
        page.context.close()
        pub.disconnect()
        pub.loop_stop()


def test_a_crew_sees_its_kits_update_state_on_a_phone_and_holds_and_lifts_updates(fleet, broker, chromium):
    r = fleet.api.post("/api/v1/rollouts", json={"release": RELEASE, "kits": ["alpha"], "groups": ["100%"],
                                                 "rate_per_min": 100})
    assert r.status_code == 201, r.text
    assert fleet.step() == [f"alpha-scanner-{n}" for n in range(4)]
    pub = publisher(broker.url)
    page, errors = signed_in(chromium, fleet, fleet.crew_token, viewport={"width": 375, "height": 812},
                             device_scale_factor=2, is_mobile=True, has_touch=True)
    try:
        page.goto(f"{fleet.base}/#/kit/alpha")
        section = page.locator('[data-testid="kit-updates"]')
        page.wait_for_selector('[data-testid="kit-update-alpha-scanner-0"][data-state="offered"]', timeout=5000)
        assert page.locator('[data-testid^="kit-update-alpha-"]').count() == 4
        assert RELEASE in section.inner_text()
        # Phone-first: right under the kit's card, above its devices, chart and check-ins.
        devices = page.locator('#kit-page .grid').bounding_box()
        assert section.bounding_box()["y"] < devices["y"]
        assert page.locator('[data-testid="kit-hold"]').get_attribute("data-held") == "false"
        # Live: a device's state report shows without a reload.
        report(pub, "alpha", "alpha-scanner-2", "downloading")
        page.wait_for_selector('[data-testid="kit-update-alpha-scanner-2"][data-state="downloading"]',
                               timeout=PAGE_WAIT_MS)

        # No ops control for a crew: no link to releases, no rollout buttons.
        assert page.locator('[data-testid="releases-link"]').is_hidden()
        for testid in ("rollout-form", "pause", "resume", "abort", f"retire-{RELEASE}"):
            assert page.locator(f'[data-testid="{testid}"]').count() == 0, testid
        assert page.locator('#kit-updates a[href^="#/rollouts/"]').count() == 0  # rollouts are ops' pages

        # Hold, with a reason: who and why are shown, and the fleet has it.
        page.fill('[data-testid="hold-reason"]', "soundcheck until 18:00")
        hold = page.locator('[data-testid="hold"]')
        box = hold.bounding_box()
        assert box["width"] > 300 and box["height"] >= 44  # phone-first: full width, a finger's height
        hold.click()
        page.wait_for_selector('[data-testid="kit-hold"][data-held="true"]', timeout=5000)
        held = page.locator('[data-testid="kit-hold"]').inner_text()
        assert "crew-a" in held and "soundcheck until 18:00" in held
        got = fleet.api.get("/api/v1/kits/alpha/updates").json()
        assert got["hold"]["by"] == "crew-a" and got["hold"]["reason"] == "soundcheck until 18:00"
        assert hold.is_hidden() and page.locator('[data-testid="lift"]').is_visible()
        width = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{width[0]}px wide content in a {width[1]}px viewport"
        page.screenshot(path=str(ARTIFACTS / "dashboard-kit-hold-phone.png"), full_page=True)

        page.click('[data-testid="lift"]')
        page.wait_for_selector('[data-testid="kit-hold"][data-held="false"]', timeout=5000)
        assert fleet.api.get("/api/v1/kits/alpha/updates").json()["hold"] is None
        assert [e["by"] for e in fleet.api.get("/api/v1/audit").json()][:2] == ["crew-a", "crew-a"]

        # Another crew's kit: no kit, no update section.
        page.goto(f"{fleet.base}/#/kit/beta")
        page.wait_for_selector('#kit-page >> text=No kit', timeout=5000)
        assert section.is_hidden()

        # The releases page is for ops: refused, with no form.
        page.goto(f"{fleet.base}/#/releases")
        page.wait_for_selector('[data-testid="updates-forbidden"]', timeout=5000)
        assert page.locator('[data-testid="rollout-form"]').count() == 0
        assert not errors, errors
    finally:
        page.context.close()
        pub.disconnect()
        pub.loop_stop()
