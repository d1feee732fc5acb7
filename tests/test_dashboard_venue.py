"""A venue builds and runs its lighting week in the dashboard (fleet/api/static/venues.js and its
venue-*.js modules), in a real headless Chromium, against a real fleet (store, ingest on a real
Mosquitto, the API under uvicorn) and the real lighting firmware (unix port, ESP32-sized heap) on
simulated PWM and DMX outputs:

- the venue user, starting from an empty venue ops made for them, sets its time zone, location and
  opening hours, maps zones to the controller's outputs (a safety zone with its floor), makes scenes
  and shows one live on the real outputs, drags a week of windows onto the planner, meets the
  compiler's conflict inline, resolves it, resizes a window, adds a sunset window by keyboard,
  publishes with the diff per controller, and sees the controller report the scheduled scene;
  undoes and redoes the publish; overrides a zone (a refused expiry shows the API's own message);
  previews another time;
- the API under it: draft, publish, undo, outputs, and who may change a venue's controllers.

Screenshots of each step go to test-artifacts/venue-<step>.png."""

from __future__ import annotations

import secrets
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from fleet.auth.testing import client_as, token_as
from popkit.broker import free_port
from tests.conftest import DEMO_KIT, wait_until
from tests.device.firmware import rom_images  # noqa: F401 - fixture
from tests.device.test_lighting_app import L, controller, outputs, role_config  # noqa: F401 - fixtures
from tests.test_dashboard_updates import ARTIFACTS, chromium  # noqa: F401 - the browser fixture

LIGHTS = "demo-lights-1"
V = "/api/v1/venues/hall"
TZ = "Europe/London"
UTC = timezone.utc
EMPTY_HALL = {"id": "hall", "name": "The Hall", "tz": "UTC", "latitude": 0, "longitude": 0, "controllers": [LIGHTS]}


def ok(r, status: int = 200):
    assert r.status_code == status, r.text
    return r.json()


class VenueFleet:
    """The fleet as ``popkit fleet serve`` runs it, with the demo kit (its lighting controller
    ``demo-lights-1``), served over HTTP for the browser; ops and a venue user of ``hall``."""

    def __init__(self, mqtt_url: str, tmp: Path):
        import uvicorn

        from fleet.api.app import create_app
        from fleet.service import build
        from fleet.settings import FleetSettings

        settings = FleetSettings(mqtt_url=mqtt_url, db_url=f"sqlite:///{tmp / 'fleet.db'}", kits=[str(DEMO_KIT)],
                                 client_id=f"fleet-dash-venue-{secrets.token_hex(3)}", batch_wait_ms=5)
        self.store, self.ingest = build(settings)
        self.ingest.start()
        assert self.ingest.connected.wait(10), "fleet did not connect to the broker"
        self.app = create_app(self.store, self.ingest)
        self.venue_token = token_as(self.app, "venue-a", "venue", venues=["hall"])
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, what="uvicorn serving the fleet")
        self.api = httpx.Client(base_url=self.base, timeout=10, headers={
            "Authorization": f"Bearer {token_as(self.app, 'dash-ops', 'ops')}"})

    def close(self) -> None:
        self.api.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.ingest.stop()
        self.store.close()


@pytest.fixture
def venue_fleet(broker, tmp_path):
    f = VenueFleet(broker.url, tmp_path)
    yield f
    f.close()


def shot(page, step: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"venue-{step}.png"), full_page=True)


def drag(page, track, y0: float, y1: float) -> None:
    """Press at y0 (px from the top of a day's track), move to y1, release: as a hand on a mouse."""
    track.scroll_into_view_if_needed()
    box = track.bounding_box()
    x = box["x"] + box["width"] / 2
    page.mouse.move(x, box["y"] + y0)
    page.mouse.down()
    page.mouse.move(x, box["y"] + (y0 + y1) / 2, steps=4)
    page.mouse.move(x, box["y"] + y1, steps=4)
    page.mouse.up()


def save(form) -> None:
    form.locator("button[type=submit]").click()


def test_a_venue_user_builds_a_week_resolves_a_conflict_publishes_and_the_controller_shows_the_scene(
        venue_fleet, broker, chromium, rom_images, outputs, tmp_path):  # noqa: F811
    fleet = venue_fleet
    ok(fleet.api.put(V, json=EMPTY_HALL))  # ops: an empty venue, given its controller
    pwm, _dmx = outputs
    dev = controller(rom_images, role_config(tmp_path, broker, outputs))
    ctx = chromium.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_cookies([{"name": "popkit_token", "value": fleet.venue_token, "url": fleet.base, "httpOnly": True,
                      "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(fleet.base + "/#/venue/hall")
        page.wait_for_selector('[data-testid="planner"]', timeout=10_000)
        assert page.locator('[data-testid="venue-controllers"]').inner_text() == LIGHTS  # read-only for a venue user
        assert page.locator('[data-testid="venue-form"] [name="controllers"]').count() == 0
        shot(page, "1-empty")

        # The venue: its zone, where it is, open round the clock (so the floor holds now).
        vf = page.locator('[data-testid="venue-form"]')
        vf.locator('[name="tz"]').fill(TZ)
        vf.locator('[name="latitude"]').fill("51.5")
        vf.locator('[name="longitude"]').fill("-0.12")
        vf.get_by_role("button", name="add opening hours").click()
        vf.locator('[name="h0-open"]').fill("00:00")
        vf.locator('[name="h0-close"]').fill("00:00")
        save(vf)
        page.wait_for_selector('[data-testid="draft-state"]:has-text("draft")')

        # Zones: the stage on the strip's r, g, b; the exit on its white, a safety zone with floor 40.
        zf = page.locator('[data-testid="zone-form"]')
        zf.locator('[name="id"]').fill("stage")
        zf.locator('[name="name"]').fill("Stage")
        for c in "rgb":
            zf.locator(f'[name="out:{LIGHTS}:{c}"]').check()
        save(zf)
        page.wait_for_selector('[data-testid="zone-item-stage"]')
        page.locator('[data-testid="zone-form"]').get_by_role("button", name="new zone").click()
        zf = page.locator('[data-testid="zone-form"]')
        assert zf.locator(f'[name="out:{LIGHTS}:r"]').is_disabled()  # the stage has it
        zf.locator('[name="id"]').fill("exit")
        zf.locator('[name="name"]').fill("Exit")
        zf.locator('[name="safety"]').check()
        zf.locator('[name="floor"]').fill("40")
        zf.locator(f'[name="out:{LIGHTS}:w"]').check()
        save(zf)
        page.wait_for_selector('[data-testid="zone-item-exit"]')
        shot(page, "2-zones")

        # Scenes: "show" magenta on the stage, shown live on the real outputs first; "house" dim.
        sf = page.locator('[data-testid="scene-form"]')
        sf.locator('[name="id"]').fill("show")
        sf.locator('[name="lv:stage"]').fill("200")
        sf.locator('[name="tint:stage"]').check()
        sf.locator('[name="rgb:stage"]').fill("#ff00ff")
        sf.locator('[data-testid="scene-preview"]').click()
        page.wait_for_selector('[data-testid="scene-preview-status"][data-ok="true"]')
        wait_until(lambda: pwm.duties()[:3] == [200 * L, 0, 200 * L], 10,
                   what=f"the previewed scene on the strip (have {pwm.duties()})")
        save(sf)
        page.wait_for_selector('[data-testid="scene-item-show"]')
        page.locator('[data-testid="scene-form"]').get_by_role("button", name="new scene").click()
        sf = page.locator('[data-testid="scene-form"]')
        sf.locator('[name="id"]').fill("house")
        sf.locator('[name="lv:stage"]').fill("80")
        save(sf)
        page.wait_for_selector('[data-testid="scene-item-house"]')
        shot(page, "3-scenes")

        # The week: drag a window over now on today's column (venue time), "show" at priority 10.
        now = datetime.now(ZoneInfo(TZ))
        day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][now.weekday()]
        track = page.locator(f'[data-testid="day-{day}"] [data-vw-track]')
        s, e = max(0, now.hour - 1), min(24, now.hour + 2)
        drag(page, track, s * 20 + 2, e * 20 + 2)
        first = f"{day}-{s:02d}00"
        page.wait_for_selector(f'[data-testid^="window-{first}-"]')
        form = page.locator('[data-testid="schedule-form"]')
        assert form.locator('[name="id"]').input_value() == first
        form.locator('[name="scene"]').select_option("show")
        form.locator('[name="priority"]').fill("10")
        save(form)
        page.wait_for_selector(f'[data-testid^="window-{first}-"]:has-text("p10")')

        # A second window on the same day, overlapping it, also priority 10: the compiler's refusal inline.
        if e <= 23:
            drag(page, track, e * 20 + 15 + 2, e * 20 - 10 + 2)  # upwards, from below the first
            a, b = e * 60 - 30, e * 60 + 45
        else:
            drag(page, track, s * 20 - 15 + 2, s * 20 + 10 + 2)  # downwards, from above it
            a, b = s * 60 - 45, s * 60 + 30
        second = f"{day}-{a // 60:02d}{a % 60:02d}"
        page.wait_for_selector(f'[data-testid^="window-{second}-"]')
        form = page.locator('[data-testid="schedule-form"]')
        assert form.locator('[name="id"]').input_value() == second
        assert (form.locator('[name="start"]').input_value(), form.locator('[name="end"]').input_value()) == \
            (f"{a // 60:02d}:{a % 60:02d}", f"{b // 60 % 24:02d}:{b % 60:02d}")
        form.locator('[name="scene"]').select_option("house")
        form.locator('[name="priority"]').fill("10")
        save(form)
        problem = page.wait_for_selector('[data-testid="draft-problem"]')
        text = problem.inner_text()
        assert first in text and second in text and "overlap at priority 10" in text and TZ in text, text
        assert page.locator(f'[data-testid^="window-{second}-"].conflict').count() >= 1
        assert page.locator('[data-testid="publish"]').is_disabled()
        shot(page, "4-conflict")

        # Resolved: the second one at a lower priority (the first wins where they overlap).
        page.locator(f'[data-testid^="window-{second}-"]').first.click()
        form = page.locator('[data-testid="schedule-form"]')
        form.locator('[name="priority"]').fill("5")
        save(form)
        page.wait_for_selector('[data-testid="draft-problem"]', state="detached")
        # ... and dragged 30 min longer by its lower edge.
        handle = page.locator(f'[data-testid^="window-{second}-"] .vw-resize').last
        hb, tb = handle.bounding_box(), track.bounding_box()
        end_y = hb["y"] + hb["height"] / 2 - tb["y"]
        if b + 30 <= 1440:
            drag(page, track, end_y, (b + 30) / 60 * 20 + 2)
            page.wait_for_selector(f'[data-testid="schedule-form"] [name="end"][value="{(b + 30) // 60 % 24:02d}:{(b + 30) % 60:02d}"]')

        # A sunset window for Fridays and Saturdays, made with the form alone (the keyboard way).
        page.locator('[data-testid="schedule-form"]').get_by_role("button", name="new schedule").click()
        form = page.locator('[data-testid="schedule-form"]')
        form.locator('[name="id"]').fill("dusk")
        form.locator('[name="kind"]').select_option("sun")
        form.locator('[name="scene"]').select_option("house")
        form.locator('[name="priority"]').fill("1")
        for d in ("mon", "tue", "wed", "thu", "sun"):
            form.locator(f'[name="d-{d}"]').uncheck()
        form.locator('[name="sun_start"]').select_option("sunset")
        form.locator('[name="sun_offset"]').fill("-30")
        form.locator('[name="sun_end"]').fill("23:00")
        save(form)
        page.wait_for_selector('[data-testid^="window-dusk-"]')
        assert page.locator('[data-testid="draft-problem"]').count() == 0

        # Publish, with what changes on which controller.
        diff = page.locator(f'[data-testid="diff-{LIGHTS}"]')
        diff.wait_for()
        assert "+ " in diff.inner_text() and "show (priority 10)" in diff.inner_text()
        shot(page, "5-diff")
        page.locator('[data-testid="publish"]').click()
        page.wait_for_selector('[data-testid="publish-status"][data-ok="true"]')
        assert "pushed to 1 controller" in page.locator('[data-testid="publish-status"]').inner_text()
        stored = ok(fleet.api.get(V))
        assert {s["id"] for s in stored["schedules"]} == {first, second, "dusk"}
        assert ok(fleet.api.get(f"{V}/preview"))["zones"]["stage"]["scene"] == "show"

        # The controller (the real firmware) runs it: "show" now, magenta at 200, the exit at its floor.
        want = [200 * L, 0, 200 * L, 40 * L]
        wait_until(lambda: pwm.duties() == want, 15, what=f"the scheduled scene on the outputs (have {pwm.duties()})")
        page.wait_for_selector(f'[data-testid="controller-{LIGHTS}"][data-scene="show"][data-in-sync="true"]',
                               timeout=40_000)
        shot(page, "6-published")

        # Undo puts back the empty venue; undo again redoes the week.
        page.locator('[data-testid="undo"]').click()
        page.wait_for_selector('[data-testid="publish-status"]:has-text("undone")')
        page.wait_for_selector('[data-testid^="window-"]', state="detached")
        assert ok(fleet.api.get(V))["schedules"] == []
        page.locator('[data-testid="undo"]').click()
        page.wait_for_selector(f'[data-testid^="window-{first}-"]')
        assert {s["id"] for s in ok(fleet.api.get(V))["schedules"]} == {first, second, "dusk"}
        wait_until(lambda: pwm.duties() == want, 15, what=f"the week back on the outputs (have {pwm.duties()})")

        # A zone override: an expiry in the past is refused with the API's own words, then one for 15 min.
        of = page.locator('[data-testid="zone-override-form"]')
        of.locator('[name="zone"]').select_option("exit")
        of.locator('[name="minutes"]').select_option("")
        of.locator('[name="until"]').fill((datetime.now() - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
        save(of)
        status = page.wait_for_selector('[data-testid="zone-override-status"][data-ok="false"]')
        assert "already past" in status.inner_text() and "[object Object]" not in status.inner_text()
        of = page.locator('[data-testid="zone-override-form"]')
        of.locator('[name="zone"]').select_option("exit")
        of.locator('[name="level"]').fill("255")
        of.locator('[name="minutes"]').select_option("15")
        save(of)
        page.wait_for_selector('[data-testid^="override-o-"]')
        wait_until(lambda: pwm.duties()[3] == 255 * L, 10, what=f"the exit overridden to full (have {pwm.duties()})")

        # What shows tomorrow at 03:00 (your clock): the stage off, the exit at its floor.
        pf = page.locator('[data-testid="preview-form"]')
        pf.locator('[name="at"]').fill((datetime.now() + timedelta(days=1)).strftime("%Y-%m-%dT03:00"))
        save(pf)
        page.wait_for_selector('[data-testid="preview-exit"]')
        shot(page, "7-override-and-preview")

        # The controllers table's headers stay on one line each.
        heights = page.eval_on_selector_all('[data-testid="controllers"] th', "ths => ths.map(t => t.offsetHeight)")
        assert max(heights) < 40, heights
        # A desktop page, yet on a phone nothing runs off the side (the planner scrolls in its own box).
        page.set_viewport_size({"width": 390, "height": 844})
        width = page.evaluate("document.documentElement.scrollWidth")
        shot(page, "8-phone")
        wide = page.evaluate("""[...document.querySelectorAll('#venue-page *')].filter(e => e.getBoundingClientRect().right > 390
            && !e.closest('.vw-grid')).slice(0, 5).map(e => e.tagName + '.' + e.className + ' ' + (e.name || e.dataset.testid || ''))""")
        assert width <= 390, (width, wide)
        assert not errors, errors
    finally:
        ctx.close()
        dev.kill()


def test_ops_create_a_venue_with_its_controller_and_its_outputs_are_there_to_pick(venue_fleet, chromium):  # noqa: F811
    fleet = venue_fleet
    ctx = chromium.new_context(viewport={"width": 1280, "height": 900})
    ctx.add_cookies([{"name": "popkit_token", "value": token_as(fleet.app, "dash-ops", "ops"), "url": fleet.base,
                      "httpOnly": True, "sameSite": "Strict"}])
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(fleet.base + "/#/venues")
        f = page.locator('[data-testid="venue-create"]')
        f.locator('[name="id"]').fill("arena")
        f.locator('[name="name"]').fill("The Arena")
        f.locator('[name="tz"]').fill(TZ)
        f.locator('[name="controllers"]').fill(f"{LIGHTS}, no-such-lights")
        save(f)
        status = page.wait_for_selector('[data-testid="venue-create-status"]:has-text("refused")')
        assert "no-such-lights" in status.inner_text() and "[object Object]" not in status.inner_text()
        f.locator('[name="controllers"]').fill(LIGHTS)
        save(f)
        page.wait_for_selector(f'[data-testid="zone-form"] [data-controller="{LIGHTS}"]')
        assert page.locator('[data-testid="venue-form"] [name="controllers"]').input_value() == LIGHTS  # ops may change it
        shot(page, "ops-create")
        assert ok(fleet.api.get("/api/v1/venues/arena"))["venue"]["controllers"] == [LIGHTS]
        assert not errors, errors
    finally:
        ctx.close()


# ---------------------------------------------------------------- the API under the page

def venue_set(**more) -> dict:
    return {"venue": {**EMPTY_HALL, "tz": TZ, "hours": [{"days": ["mon"], "open": "18:00", "close": "23:00"}]},
            "zones": [{"id": "stage", "name": "Stage", "outputs": [{"controller": LIGHTS, "kind": "pwm", "channel": "r"}]}],
            "scenes": [{"id": "show", "levels": {"stage": {"level": 200}}}], "schedules": [], **more}


def weekly(sid: str, start: str, end: str, priority: int = 10) -> dict:
    return {"id": sid, "kind": "weekly", "scene": "show", "priority": priority, "days": ["fri"], "start": start, "end": end}


def test_a_draft_names_a_conflict_in_local_time_and_publish_refuses_it_storing_nothing(fleet):
    api = fleet.api
    ok(api.put(V, json=EMPTY_HALL))
    body = venue_set(schedules=[weekly("early", "18:00", "21:00"), weekly("late", "20:00", "23:00")])
    d = ok(api.post(f"{V}/draft", json=body, params={"week": "2026-07-06"}))
    assert d["conflict"] == ["early", "late"] and d["diff"] == []
    assert "2026-07-10 20:00 to 2026-07-10 21:00 Europe/London local time (BST to BST)" in d["problem"], d["problem"]
    # Both windows are drawn, in local time, so the planner can show the conflict.
    assert [(w["schedule"], w["start_local"], w["end_local"]) for w in d["windows"]] == [
        ("early", "2026-07-10T18:00", "2026-07-10T21:00"), ("late", "2026-07-10T20:00", "2026-07-10T23:00")]
    r = api.post(f"{V}/publish", json=body)
    assert r.status_code == 409 and "early" in r.text and "late" in r.text
    assert ok(api.get(V))["zones"] == [], "a refused publish stores nothing"


def test_publish_shows_the_diff_per_controller_and_undo_swaps_back_and_forth(fleet):
    api = fleet.api
    assert api.post(f"{V}/undo").status_code == 404  # no venue
    ok(api.put(V, json=EMPTY_HALL))
    tomorrow = datetime.now(ZoneInfo(TZ)) + timedelta(days=1)  # inside the 48 h a controller is given
    body = venue_set(schedules=[{**weekly("next", "18:00", "21:00"), "days": [f"{tomorrow:%a}".lower()]}])
    d = ok(api.post(f"{V}/draft", json=body))
    [c] = d["diff"]
    assert c["device_id"] == LIGHTS and c["changed"] and not c["new"] and c["windows_removed"] == []
    [w] = c["windows_added"]
    assert w["text"] == f"{tomorrow:%a %d %b} 18:00–21:00 show (priority 10)", w
    p = ok(api.post(f"{V}/publish", json=body))
    assert [x["device_id"] for x in p["pushed"]] == [LIGHTS] and p["pushed"][0]["version"] >= 1
    version = p["pushed"][0]["version"]
    assert ok(api.post(f"{V}/draft", json=body))["diff"][0]["changed"] is False  # nothing left to publish

    u = ok(api.post(f"{V}/undo"))
    assert ok(api.get(V))["zones"] == [] and ok(api.get(V))["venue"]["tz"] == "UTC"
    assert u["diff"][0]["windows_removed"] and not u["diff"][0]["windows_added"]
    ok(api.post(f"{V}/undo"))  # redo
    got = ok(api.get(V))
    assert [s["id"] for s in got["schedules"]] == ["next"] and got["venue"]["tz"] == TZ
    assert ok(api.get(f"/api/v1/devices/{LIGHTS}/config"))["version"] > version


def test_single_writes_can_be_undone_and_a_fresh_venue_has_nothing_to_undo(fleet):
    api = fleet.api
    ok(api.put(V, json=EMPTY_HALL))
    r = api.post(f"{V}/undo")
    assert r.status_code == 409 and "nothing to undo" in r.text
    ok(api.put(f"{V}/zones/stage", json=venue_set()["zones"][0]))
    ok(api.post(f"{V}/undo"))
    assert ok(api.get(V))["zones"] == []


def test_only_ops_give_a_venue_its_controllers_and_a_venue_user_picks_outputs_from_them(fleet):
    api = fleet.api
    ok(api.put(V, json=EMPTY_HALL))
    user = client_as(api.app, "venue-a", "venue", venues=["hall"])
    r = user.put(V, json={**EMPTY_HALL, "controllers": [LIGHTS, "demo-scanner-1"]})
    assert r.status_code == 403 and "only ops" in r.text
    r = user.post(f"{V}/publish", json=venue_set(venue={**EMPTY_HALL, "controllers": []}))
    assert r.status_code == 403
    ok(user.post(f"{V}/publish", json=venue_set()))  # its own controller: fine
    outs = ok(user.get(f"{V}/outputs"))
    assert [(o["device_id"], o["role"], o["dmx"]) for o in outs] == [(LIGHTS, "lighting", True)]
    assert outs[0]["used"] == [{"zone": "stage", "kind": "pwm", "channel": "r", "slot": None, "count": 1}]
    r = api.put(V, json={**EMPTY_HALL, "controllers": ["nothing-like-it"]})
    assert r.status_code == 422 and "nothing-like-it" in r.text


def test_a_scene_preview_sends_each_controller_its_levels_and_back_puts_the_timelines_scene(fleet):
    api = fleet.api
    ok(api.put(V, json=EMPTY_HALL))
    ok(api.post(f"{V}/publish", json=venue_set()))
    [sent] = ok(api.post(f"{V}/scene-preview", json={"levels": {"stage": {"level": 90}}, "fade_ms": 500}))
    assert sent["device_id"] == LIGHTS and sent["action"] == "scene"
    [cmd] = [c for c in ok(api.get(f"/api/v1/devices/{LIGHTS}/commands")) if c["id"] == sent["command_id"]]
    assert cmd["args"] == {"levels": {"r": 90}, "fade_ms": 500}
    [back] = ok(api.post(f"{V}/scene-preview", json={"levels": None}))
    [cmd] = [c for c in ok(api.get(f"/api/v1/devices/{LIGHTS}/commands")) if c["id"] == back["command_id"]]
    assert cmd["args"] == {"levels": {}}  # no window now (Mondays 18-23 in the draft aside): off
