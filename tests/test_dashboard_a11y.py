"""Accessibility of every dashboard page: axe-core (npm's, vendored in tests/vendor/axe-core/) runs in
Debian's Chromium over each page as the role that uses it, and finds no serious or critical
violation (labels, contrast, names of controls, landmarks, ARIA). The pages are listed in PAGES,
one line each: a new page adds its line. A screenshot of each page goes to test-artifacts/
(a11y-<role>-<page>.png). Keyboard use is tested apart: sign in, open a kit and press its
buttons with the keyboard alone, the focus always visible.

The fleet behind the pages is real (store, ingest on a real Mosquitto, the API under uvicorn:
tests/test_dashboard.py's LiveFleet) with the demo kit online and a venue with zones and a
schedule, so the pages draw their data, not their empty states."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from fleet.auth.passwords import hash_password, new_password
from fleet.auth.testing import token_as
from tests.axe import BLOCKING, describe, run_axe
from tests.conftest import wait_until
from tests.test_dashboard import ACKER, KIT, bring_up, live  # noqa: F401 - the fleet fixture
from tests.test_dashboard_updates import ARTIFACTS, chromium  # noqa: F401 - the browser fixture

VENUE = "hall"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}  # crew pages are phone-first

# Every page of the dashboard: (name, role, route, a selector that is there once the page has drawn
# its data, viewport). Roles: ops, crew (kit "demo"), venue (venue "hall"), or None (signed out).
PAGES = [
    ("sign-in", None, "/", '[data-testid="login-form"]', DESKTOP),
    ("overview", "ops", "/", f'[data-testid="kit-{KIT}"]', DESKTOP),
    ("kit", "ops", f"/#/kit/{KIT}", '[data-testid="battery-chart"] canvas', DESKTOP),
    ("overview", "crew", "/", f'[data-testid="kit-{KIT}"]', PHONE),
    ("kit", "crew", f"/#/kit/{KIT}", '[data-testid="battery-chart"] canvas', PHONE),
    ("venues", "ops", "/#/venues", f'[data-testid="venue-{VENUE}"]', DESKTOP),
    ("venue", "venue", f"/#/venue/{VENUE}", '#venue-page h2', DESKTOP),
    ("releases", "ops", "/#/releases", '[data-testid="updates-page"] h2', DESKTOP),
    ("retail", "ops", "/#/retail", '[data-testid="retail-list"] table, [data-testid="retail-list"] p', DESKTOP),
    ("retail-kit", "crew", f"/#/retail/{KIT}", '[data-testid="retail-kit"]', PHONE),
    ("crew-doors", "crew", f"/#/crew/{KIT}/doors", '[data-testid="crew-doors"] p, [data-testid="crew-doubles"]', PHONE),
    ("crew-revoke", "crew", f"/#/crew/{KIT}/revoke", '[data-testid="crew-revoke"] p, [data-testid="revoke-form"]', PHONE),
    ("crew-kitup", "crew", f"/#/crew/{KIT}/kitup", '[data-testid="kitup-history"], [data-testid="kitup-none"]', PHONE),
    ("crew-controls", "crew", f"/#/crew/{KIT}/controls", '[data-testid="crew-controls"] .card', PHONE),
    ("crew-audit", "crew", f"/#/crew/{KIT}/audit", '[data-testid="crew-audit-rows"], [data-testid="crew-audit-none"]', PHONE),
    ("crew-kits", "crew", "/#/crew", '[data-testid="crew-kits"]', PHONE),
    *((f"ops-{p}", "ops", f"/#/ops/{p}", f'[data-testid="ops-{p}"]', DESKTOP)
      for p in ("alerts", "users", "kits", "audit", "dead-letters")),
    ("ops-machines", "ops", "/#/ops/machines", '[data-testid="machines"]', DESKTOP),
    ("ops-notify", "ops", "/#/ops/notify", '[data-testid="notify"]', DESKTOP),
]



def set_up_venue(fleet) -> None:
    """Venue "hall": opening hours, two zones on the demo kit's controller, scenes, a schedule now."""
    def put(path: str, body: dict) -> None:
        r = httpx.put(fleet.base + path, json=body, timeout=5, headers=fleet.auth)
        assert r.status_code == 200, r.text

    v = f"/api/v1/venues/{VENUE}"
    put(v, {"id": VENUE, "name": "The Hall", "tz": "Europe/London", "latitude": 51.5, "longitude": -0.12,
            "hours": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "open": "08:00", "close": "02:00"}]})
    put(f"{v}/zones/stage", {"id": "stage", "name": "Stage", "outputs": [
        {"controller": ACKER, "kind": "pwm", "channel": c} for c in "rgb"]})
    put(f"{v}/zones/exit", {"id": "exit", "name": "Exit", "safety": True, "floor_level": 40,
                            "outputs": [{"controller": ACKER, "kind": "pwm", "channel": "w"}]})
    put(f"{v}/scenes/show", {"id": "show", "levels": {"stage": {"level": 200, "rgb": [255, 40, 200]}}})
    local = datetime.now(timezone.utc).astimezone(ZoneInfo("Europe/London")).replace(tzinfo=None, microsecond=0)
    put(f"{v}/schedules/tonight", {"id": "tonight", "kind": "once", "scene": "show", "priority": 10,
                                   "start_at": (local - timedelta(hours=1)).isoformat(),
                                   "end_at": (local + timedelta(hours=3)).isoformat()})


@pytest.fixture
def world(live, broker):  # noqa: F811
    """The demo kit online with half an hour of battery readings, venue "hall", and a token per role."""
    pub = bring_up(broker.url)
    wait_until(lambda: (k := live.get(f"/api/v1/kits/{KIT}").json())["devices_online"] == 5 and k["battery"],
               what="the demo kit online with a battery reading")
    set_up_venue(live)
    tokens = {"ops": live.token, "crew": token_as(live.app, "a11y-crew", "crew", kits=[KIT]),
              "venue": token_as(live.app, "a11y-venue", "venue", venues=[VENUE])}
    yield tokens
    pub.disconnect()
    pub.loop_stop()


def open_page(chromium, live, token: str | None, viewport: dict):  # noqa: F811
    ctx = chromium.new_context(viewport=viewport)
    if token:
        ctx.add_cookies([{"name": "popkit_token", "value": token, "url": live.base, "httpOnly": True,
                          "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return ctx, page, errors


def test_axe_finds_an_unlabelled_field_and_faint_text_on_a_dashboard_page(live, world, chromium):  # noqa: F811
    """The check below can fail: the same run flags what it is there to catch."""
    ctx, page, _ = open_page(chromium, live, world["ops"], DESKTOP)
    try:
        page.goto(live.base + "/")
        page.wait_for_selector(f'[data-testid="kit-{KIT}"]', timeout=10_000)
        page.evaluate("""() => document.querySelector('main').insertAdjacentHTML('beforeend',
            '<input id="canary-field"><p id="canary-text" style="color:#bbb;background:#fff">faint</p>')""")
        flagged = {(v["id"], n["target"][0]) for v in run_axe(page) if v["impact"] in BLOCKING for n in v["nodes"]}
        assert {("label", "#canary-field"), ("color-contrast", "#canary-text")} <= flagged, flagged
    finally:
        ctx.close()


def test_every_page_has_no_serious_or_critical_accessibility_violation(live, world, chromium):  # noqa: F811
    found: dict[str, list[dict]] = {}
    for name, role, route, ready, viewport in PAGES:
        ctx, page, errors = open_page(chromium, live, world[role] if role else None, viewport)
        try:
            page.goto(live.base + route)
            page.wait_for_selector(ready, state="attached", timeout=10_000)
            if role:
                page.wait_for_selector('[data-testid="live"][data-state="open"]', timeout=5000)
            violations = run_axe(page)
            page.screenshot(path=str(ARTIFACTS / f"a11y-{role or 'anon'}-{name}.png"), full_page=True)
            found[f"{role or 'anon'} {route}"] = violations
            assert not errors, (route, errors)
        finally:
            ctx.close()
    print("\n" + "\n".join(f"{page}: {len(v)} violation(s)\n{describe(v)}" for page, v in found.items()))
    blocking = {page: [v for v in vs if v["impact"] in BLOCKING] for page, vs in found.items()}
    blocking = {page: vs for page, vs in blocking.items() if vs}
    assert not blocking, "serious or critical violations:\n" + "\n".join(
        f"{page}:\n{describe(vs)}" for page, vs in blocking.items())


def focus_ring(page) -> dict:
    """The focused element and how its focus is drawn (outline or box-shadow)."""
    return page.evaluate("""() => {
        const el = document.activeElement, s = getComputedStyle(el);
        return { tag: el.tagName, text: (el.innerText || el.value || el.getAttribute('aria-label') || '').trim(),
                 testid: el.dataset.testid || '', outline: s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) >= 2,
                 shadow: s.boxShadow !== 'none' };
    }""")


def tab_to(page, want, limit: int = 60) -> dict:
    """Press Tab until the focused element matches ``want``; every stop on the way shows its focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        f = focus_ring(page)
        assert f["tag"] == "BODY" or f["outline"] or f["shadow"], f"focus not visible on {f}"
        if want(f):
            return f
    raise AssertionError(f"Tab never reached the element wanted within {limit} stops")


def test_ops_signs_in_opens_a_kit_and_identifies_a_device_with_the_keyboard_alone(live, world, chromium):  # noqa: F811
    password = new_password()
    live.app.state.auth.users.put("a11y-keys", "ops", password_hash=hash_password(password))
    ctx, page, errors = open_page(chromium, live, None, DESKTOP)
    try:
        page.goto(live.base + "/")
        page.wait_for_selector('[data-testid="login-form"]', timeout=5000)
        # The form takes the focus itself: the user types at once.
        assert page.evaluate("document.activeElement.name") == "username"
        page.keyboard.type("a11y-keys")
        page.keyboard.press("Tab")
        page.keyboard.type(password)
        page.keyboard.press("Enter")
        page.wait_for_selector(f'[data-testid="kit-{KIT}"]', timeout=5000)
        tab_to(page, lambda f: f["tag"] == "A" and f["text"] == "Demo listening room")
        page.keyboard.press("Enter")
        page.wait_for_selector('[data-testid="battery-chart"] canvas', timeout=5000)
        # The chart is a canvas: its figures are in its label (bring_up's readings go 89.5 % to 75 %).
        label = page.locator('[data-testid="battery-plot"]').get_attribute("aria-label")
        assert page.locator('[data-testid="battery-plot"]').get_attribute("role") == "img"
        assert "state of charge" in label and "from 89.5 % to 75 %" in label, label
        tab_to(page, lambda f: f["testid"] == f"identify-{ACKER}")
        page.keyboard.press("Enter")
        page.wait_for_selector(f'[data-testid="cmd-{ACKER}"][data-status="pending"]', timeout=5000)
        [cmd] = live.get(f"/api/v1/devices/{ACKER}/commands").json()
        assert cmd["action"] == "identify"
        audit = live.get("/api/v1/audit").json()
        assert audit[0]["what"] == "command identify" and audit[0]["by"] == "a11y-keys"
        # The chart's window buttons say which is pressed.
        tab_to(page, lambda f: f["tag"] == "BUTTON" and f["text"] == "6 h")
        page.keyboard.press("Space")
        page.wait_for_selector('button[data-window][aria-pressed="true"] >> text="6 h"', timeout=5000)
        page.screenshot(path=str(ARTIFACTS / "a11y-keyboard-kit.png"), full_page=True)
        assert not errors, errors
    finally:
        ctx.close()


def test_vendored_libraries_are_served_from_the_fleet_and_revalidate_cheaply(live):  # noqa: F811
    index = live.get("/").text
    css = re.findall(r'href="(/static/vendor/[^"]+)"', index)
    assert css == ["/static/vendor/uPlot.min.css"]
    charts = live.get("/static/charts.js").text
    [lib] = re.findall(r'from "\./(vendor/[^"]+)"', charts)
    first = live.get(f"/static/{lib}")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/javascript")
    assert "export { uPlot as default }" in first.text
    again = httpx.get(f"{live.base}/static/{lib}", headers={"If-None-Match": first.headers["etag"]}, timeout=5)
    assert again.status_code == 304 and again.content == b""
    assert live.get("/static/vendor/README.md").status_code == 404  # only scripts and styles are served
    assert live.get("/static/vendor/..%2F..%2Fapp.py").status_code == 404
    # What vendor/README.md names is what is there, each with its licence.
    readme = (Path(__file__).resolve().parent.parent / "fleet/api/static/vendor/README.md").read_text()
    for name in ("uPlot.esm.js", "uPlot.min.css"):
        assert f"`{name}`" in readme
    assert first.headers["cache-control"] == "no-cache"  # an upgrade shows at once
