"""Venue lighting end to end: a venue, its zones, scenes and schedules through the fleet's API,
compiled and pushed as the lighting controller's timeline, and the real firmware (unix port, 64 KB
heap) showing it on its outputs; an override through the API reaches the outputs and expires back
to the schedule; the safety floor holds; conflicts are refused naming both schedules."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from tests.conftest import wait_until
from tests.device.firmware import rom_images  # noqa: F401 - fixture
from tests.device.test_lighting_app import L, controller, outputs, role_config  # noqa: F401 - fixture

LIGHTS = "demo-lights-1"
V = "/api/v1/venues/hall"
UTC = timezone.utc


def ok(r, status: int = 200):
    assert r.status_code == status, r.text
    return r.json()


@pytest.fixture
def venue(fleet):
    """A venue open round the clock now; zones: a stage (RGB strip) and the exit (white, safety floor 40)."""
    api = fleet.api
    now = datetime.now(UTC)
    ok(api.put(V, json={"id": "hall", "name": "The Hall", "tz": "Europe/London", "latitude": 51.5, "longitude": -0.12,
                        "hours": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "open": "00:00",
                                   "close": "00:00"}]}))
    ok(api.put(f"{V}/zones/stage", json={"id": "stage", "name": "Stage", "outputs": [
        {"controller": LIGHTS, "kind": "pwm", "channel": c} for c in "rgb"]}))
    ok(api.put(f"{V}/zones/exit", json={"id": "exit", "name": "Exit", "safety": True, "floor_level": 40,
                                        "outputs": [{"controller": LIGHTS, "kind": "pwm", "channel": "w"}]}))
    ok(api.put(f"{V}/scenes/show", json={"id": "show", "levels": {"stage": {"level": 200, "rgb": [255, 0, 255]},
                                                                  "exit": {"level": 0}}}))
    ok(api.put(f"{V}/scenes/bright", json={"id": "bright", "levels": {"stage": {"level": 255}, "exit": {"level": 255}}}))
    pushed = ok(api.put(f"{V}/schedules/tonight", json={"id": "tonight", "kind": "once", "scene": "show", "priority": 10}
                        | _local_span(now - timedelta(minutes=30), now + timedelta(hours=3))))
    return fleet, pushed


def _local_span(a: datetime, b: datetime, tz: str = "Europe/London") -> dict:
    from zoneinfo import ZoneInfo

    z = ZoneInfo(tz)
    return {"start_at": a.astimezone(z).replace(tzinfo=None, microsecond=0).isoformat(),
            "end_at": b.astimezone(z).replace(tzinfo=None, microsecond=0).isoformat()}


def test_the_venues_schedule_reaches_the_controller_and_an_override_its_outputs(
        venue, broker, rom_images, outputs, tmp_path):  # noqa: F811
    fleet, pushed = venue
    api = fleet.api
    [push] = pushed["pushed"]
    assert push["device_id"] == LIGHTS and push["version"] >= 1 and push["horizon_h"] == 48 and push["bytes"] <= 4096
    desired = ok(api.get(f"/api/v1/devices/{LIGHTS}/config"))
    timeline = desired["data"]
    assert timeline["format"] == 1 and timeline["floor"]["levels"] == {"w": 40}
    assert [w[2] for w in timeline["windows"]] == ["show"]

    pwm, _dmx = outputs
    dev = controller(rom_images, role_config(tmp_path, broker, outputs))
    try:
        # show: stage magenta at 200 (r and b 200, g 0), exit 0 raised to the floor 40 (open)
        want = [200 * L, 0, 200 * L, 40 * L]
        wait_until(lambda: pwm.duties() == want, 10, what=f"the scheduled scene (have {pwm.duties()})")
        # Online comes from the device's birth and the applied version from its config report: two
        # messages ingest may store in either order, so wait for both rather than read one instant.
        ctl = wait_until(lambda: (c := ok(api.get(f"{V}/controllers"))[0])["in_sync"] and c["online"] and c, 10,
                         what="the controller online and reporting the pushed version")
        assert ctl["desired_version"] == ctl["applied_version"] == push["version"] and ctl["online"]

        # A scene override from the API: on the outputs at once, the floor still under it.
        t0 = time.monotonic()
        o = ok(api.post(f"{V}/overrides", json={"scene": "bright", "minutes": 0.05, "by": "venue-test"}), 201)
        wait_until(lambda: pwm.duties() == [255 * L] * 4, 5, interval=0.002, what="the override on the outputs")
        print(f"\nvenue override -> outputs {(time.monotonic() - t0) * 1000:.0f} ms (API, compile, push, apply)")
        assert ok(api.get(f"{V}/preview"))["zones"]["stage"]["layer"] == "override"
        # ... and it expires back to the schedule on the controller's own clock (3 s)
        wait_until(lambda: pwm.duties() == want, 10, what="back to the schedule after the override expired")
        assert o["override"]["id"].startswith("o-")
        assert ok(api.get(f"{V}/preview"))["zones"]["stage"]["layer"] == "schedule"

        # A zone override (the exit dark) cannot beat the floor while open.
        ok(api.post(f"{V}/overrides", json={"zone": "exit", "level": {"level": 0}, "minutes": 10}), 201)
        assert ok(api.get(f"{V}/preview"))["zones"]["exit"] == {"level": 40, "rgb": None, "scene": "show+" +
                                                                ok(api.get(V))["overrides"][-1]["id"], "layer": "floor"}
        time.sleep(0.5)
        assert pwm.duties()[3] == 40 * L
    finally:
        dev.kill()


def test_conflicts_are_refused_naming_both_and_bad_references_are_clear(venue):
    fleet, _ = venue
    api = fleet.api
    now = datetime.now(UTC)
    r = api.put(f"{V}/schedules/clash", json={"id": "clash", "kind": "once", "scene": "bright", "priority": 10}
                | _local_span(now + timedelta(hours=1), now + timedelta(hours=4)))
    assert r.status_code == 409 and "tonight" in r.text and "clash" in r.text, r.text
    assert "clash" not in [s["id"] for s in ok(api.get(V))["schedules"]], "a refused schedule is not stored"
    # A higher priority may overlap: it wins there.
    ok(api.put(f"{V}/schedules/encore", json={"id": "encore", "kind": "once", "scene": "bright", "priority": 20}
               | _local_span(now + timedelta(hours=1), now + timedelta(hours=2))))
    later = int((now + timedelta(minutes=90)).timestamp() * 1000)
    assert ok(api.get(f"{V}/preview", params={"at": later}))["zones"]["stage"]["scene"] == "bright"

    r = api.delete(f"{V}/scenes/show")
    assert r.status_code == 409 and "show" in r.text  # a schedule still uses it
    r = api.put(f"{V}/zones/far", json={"id": "far", "name": "Far", "outputs": [
        {"controller": "no-such-controller", "kind": "pwm", "channel": "r"}]})
    assert r.status_code == 422 and "no-such-controller" in r.text
    r = api.put(f"{V}/zones/bad", json={"id": "bad", "name": "Bad", "outputs": [
        {"controller": LIGHTS, "kind": "pwm", "channel": "x"}]})
    assert r.status_code == 422 and "channel" in r.text
    r = api.put(f"{V}/scenes/other", json={"id": "different", "levels": {}})
    assert r.status_code == 422 and "different" in r.text
    assert api.get("/api/v1/venues/nowhere/preview").status_code == 404
    assert api.post(f"{V}/overrides", json={"scene": "show"}).status_code == 422  # no end


def test_the_plan_shows_each_zones_day_and_the_list_its_venues(venue):
    fleet, _ = venue
    api = fleet.api
    now = int(time.time() * 1000)
    plan = ok(api.get(f"{V}/plan", params={"start": now - 3600_000, "hours": 6}))
    stage = next(z for z in plan["zones"] if z["id"] == "stage")
    assert [s["scene"] for s in stage["segments"]] == [None, "show", None]
    assert stage["segments"][1]["level"] == 200 and stage["segments"][0]["layer"] == "off"
    exit_ = next(z for z in plan["zones"] if z["id"] == "exit")
    assert {s["level"] for s in exit_["segments"]} == {40} and {s["layer"] for s in exit_["segments"]} == {"floor"}
    listed = ok(api.get("/api/v1/venues"))["items"]
    assert listed == [{"id": "hall", "name": "The Hall", "tz": "Europe/London", "zones": 2, "schedules": 1,
                       "overrides": 0, "controllers": [LIGHTS]}]
    assert json.loads(json.dumps(plan))  # plain JSON all through


def test_timelines_are_pushed_again_before_their_horizon_runs_out(venue):
    fleet, pushed = venue
    lit = fleet.api.app.state.venue_lighting
    now = int(time.time() * 1000)
    first = ok(fleet.api.get(f"{V}/controllers"))[0]
    assert first["horizon_end_ms"] == pytest.approx(now + 48 * 3600_000, abs=60_000)
    assert lit.due(now) == [] and lit.due(now + 23 * 3600_000) == []
    assert lit.due(now + 25 * 3600_000) == ["hall"]
    assert lit.push_due(now + 25 * 3600_000) == 1
    again = ok(fleet.api.get(f"{V}/controllers"))[0]
    assert again["desired_version"] == first["desired_version"] + 1
    assert again["horizon_end_ms"] == pytest.approx(now + 73 * 3600_000, abs=60_000)
    assert lit.due(now + 25 * 3600_000) == []
