"""Who may use the fleet API, and what each sees: every request signed in, roles (ops, crew, venue),
and every id a client sends checked against what the user may see (404 when it is not theirs).

The route tables below are checked against the app's own routes, so a new route without a row here,
or a new id route without a cross-scope test, fails the suite.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet.alerts import Firing
from fleet.api.app import PUBLIC, create_app
from fleet.auth import tokens
from fleet.auth.deps import COOKIE, api_routes, route_roles
from fleet.auth.passwords import hash_password
from fleet.auth.secret import InsecureSecret, signing_key
from fleet.auth.testing import client_as, ops_client, token_as
from fleet.settings import FleetSettings
from fleet.db import now_ms
from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import Event, encode
from kits.manifest import load_manifest, parse_manifest
from tests.conftest import DEMO_KIT, REPO, known_event, wait_until
from tests.test_retail_orders import order_data

OTHER_KIT = """
id = "other"
name = "Another crew's kit"
agent = "other-agent"

[[devices]]
id = "other-scanner"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "other-lights"
role = "lighting"
model = "esp32-pwm-dmx"
"""
PASSWORD = "correct horse battery staple"


def checkin(device: str, event: str, seq: int) -> LedgerMessage:
    msg = Event(boot="b0070001", seq=seq, ts=1_000_000 + seq, kind="checkin",
                data={"event": event, "ticket": f"T{seq}", "verdict": "admitted"})
    return LedgerMessage(device, "event", msg, encode(msg).decode())


def sale(device: str, data: dict, seq: int) -> LedgerMessage:
    msg = Event(boot="b0070001", seq=seq, ts=data["ts"], kind="order", data=data)
    return LedgerMessage(device, "event", msg, encode(msg).decode())


def venue_docs(lit, venue_id: str, controller: str) -> str:
    """A venue with a zone on ``controller``, a scene, a schedule and an override; the override's id."""
    t = now_ms()
    lit.docs.put(venue_id, "venue", venue_id, {"id": venue_id, "name": venue_id.title(), "tz": "Europe/London",
                                               "latitude": 51.5, "longitude": -0.12}, t)
    lit.docs.put(venue_id, "zone", "z", {"id": "z", "name": "Zone", "outputs": [
        {"controller": controller, "kind": "pwm", "channel": "r"}]}, t)
    lit.docs.put(venue_id, "scene", "s", {"id": "s", "levels": {"z": {"level": 100}}}, t)
    lit.docs.put(venue_id, "schedule", "sch", {"id": "sch", "kind": "once", "scene": "s", "priority": 1,
                                               "start_at": "2030-01-01T18:00:00", "end_at": "2030-01-01T23:00:00"}, t)
    override = f"o-{venue_id}"
    lit.docs.put(venue_id, "override", override, {"id": override, "scene": "s", "fade_ms": 0,
                                                  "expires": "2099-01-01T00:00:00+00:00"}, t,
                 expires_ms=4_070_908_800_000)
    return override


class World:
    """Two crews' kits (demo: crew A's, other: crew B's), two venues (hall: venue A's, arena: B's),
    an alert and an event on each kit, and a user of each role."""

    def __init__(self, tmp_path: Path):
        self.store = Store.open(f"sqlite:///{tmp_path / 'auth.db'}")
        self.store.registry.register_kit(load_manifest(DEMO_KIT))
        self.store.registry.register_kit(parse_manifest(OTHER_KIT))
        mine, theirs = order_data([("MUG-WHT", 1)], kit="demo"), order_data([("MUG-WHT", 1)], kit="other")
        self.order = {"demo": mine["id"], "other": theirs["id"]}
        self.store.ledger.write_batch(Batch(ledger=[checkin("demo-scanner-1", "MINE-1", 1),
                                             checkin("other-scanner", "THEIRS-1", 2),
                                             sale("demo-agent", mine, 3), sale("other-agent", theirs, 4)]))
        t = now_ms()
        self.store.alerts.sync([Firing("demo-printer", "demo", "paper_out", "warning", "paper out"),
                                Firing("other-scanner", "other", "scanner_errors", "warning", "errors")], set(), t)
        alerts = {a["kit_id"]: a["id"] for a in self.store.alerts.list()}
        self.alert = {"demo": alerts["demo"], "other": alerts["other"]}
        self.app = create_app(self.store)
        lit = self.app.state.venue_lighting
        self.override = {"hall": venue_docs(lit, "hall", "demo-lights-1"), "arena": venue_docs(lit, "arena", "other-lights")}
        self.ops = ops_client(self.app, "ops-olga")
        self.crew = client_as(self.app, "crew-a", "crew", kits=["demo"])
        self.venue = client_as(self.app, "venue-a", "venue", venues=["hall"])
        self.anon = TestClient(self.app)  # signed in as no one

    def ids(self, mine: bool) -> dict[str, str]:
        """Path parameters naming crew A's / venue A's objects (mine) or crew B's / venue B's."""
        kit, venue = ("demo", "hall") if mine else ("other", "arena")
        return dict(kit_id=kit, device_id="demo-scanner-1" if mine else "other-scanner",
                    alert_id=str(self.alert[kit]), event_id="MINE-1" if mine else "THEIRS-1", venue_id=venue,
                    zone_id="z", scene_id="s", schedule_id="sch", override_id=self.override[venue],
                    name="crew-a" if mine else "ops-olga", release_id="scanner-9.9.9", rollout_id="1",
                    sku="TEE-BLK-M", order_id=self.order[kit], token_id="1",
                    target_id="1")


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.close()


def method_paths(app) -> list[tuple[str, str]]:
    return sorted((m, r.path) for r in api_routes(app.routes) for m in r.methods)


def fill(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], path)


# ---------------------------------------------------------------- the route tables

# Every route with an id in its path, and whose objects it names: crew (kits and what is in them),
# venue (venues and their parts) or user (ops only: no cross-scope case, 403 for the others).
ID_ROUTES = {
    ("GET", "/api/v1/alerts/{alert_id}"): "crew",
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge"): "crew",
    ("POST", "/api/v1/alerts/{alert_id}/resolve"): "crew",
    ("GET", "/api/v1/devices/{device_id}"): "crew",
    ("POST", "/api/v1/devices/{device_id}/commands"): "crew",
    ("GET", "/api/v1/devices/{device_id}/commands"): "crew",
    ("GET", "/api/v1/devices/{device_id}/config"): "crew",
    ("PUT", "/api/v1/devices/{device_id}/config"): "crew",
    ("GET", "/api/v1/devices/{device_id}/telemetry"): "crew",
    ("GET", "/api/v1/events/{event_id}/attendance"): "crew",
    ("POST", "/api/v1/events/{event_id}/revocations"): "crew",
    ("GET", "/api/v1/events/{event_id}/revocations"): "crew",
    ("PUT", "/api/v1/events/{event_id}/key"): "crew",
    ("GET", "/api/v1/kits/{kit_id}"): "crew",
    ("PUT", "/api/v1/kits/{kit_id}"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/checkins"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/readiness"): "crew",
    ("GET", "/api/v1/users/{name}"): "user",
    ("PUT", "/api/v1/users/{name}"): "user",
    ("DELETE", "/api/v1/users/{name}"): "user",
    ("POST", "/api/v1/users/{name}/password"): "user",
    ("PUT", "/api/v1/venues/{venue_id}"): "venue",
    ("GET", "/api/v1/venues/{venue_id}"): "venue",
    ("DELETE", "/api/v1/venues/{venue_id}"): "venue",
    ("GET", "/api/v1/venues/{venue_id}/controllers"): "venue",
    ("POST", "/api/v1/venues/{venue_id}/overrides"): "venue",
    ("DELETE", "/api/v1/venues/{venue_id}/overrides/{override_id}"): "venue",
    ("GET", "/api/v1/venues/{venue_id}/plan"): "venue",
    ("GET", "/api/v1/venues/{venue_id}/preview"): "venue",
    ("PUT", "/api/v1/venues/{venue_id}/scenes/{scene_id}"): "venue",
    ("DELETE", "/api/v1/venues/{venue_id}/scenes/{scene_id}"): "venue",
    ("PUT", "/api/v1/venues/{venue_id}/schedules/{schedule_id}"): "venue",
    ("DELETE", "/api/v1/venues/{venue_id}/schedules/{schedule_id}"): "venue",
    ("PUT", "/api/v1/venues/{venue_id}/zones/{zone_id}"): "venue",
    ("DELETE", "/api/v1/venues/{venue_id}/zones/{zone_id}"): "venue",
    # The venue page's draft, publish, undo, outputs and live scene preview.
    ("POST", "/api/v1/venues/{venue_id}/draft"): "venue",
    ("POST", "/api/v1/venues/{venue_id}/publish"): "venue",
    ("POST", "/api/v1/venues/{venue_id}/undo"): "venue",
    ("GET", "/api/v1/venues/{venue_id}/outputs"): "venue",
    ("POST", "/api/v1/venues/{venue_id}/scene-preview"): "venue",
    ("GET", "/api/v1/kits/{kit_id}/updates"): "crew",
    ("POST", "/api/v1/kits/{kit_id}/updates/hold"): "crew",
    ("DELETE", "/api/v1/kits/{kit_id}/updates/hold"): "crew",
    # A kit's catalog (fleet/retail/): its crew and ops.
    ("GET", "/api/v1/kits/{kit_id}/catalog"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/catalog.csv"): "crew",
    ("POST", "/api/v1/kits/{kit_id}/catalog"): "crew",
    ("PUT", "/api/v1/kits/{kit_id}/catalog/{sku}/price"): "crew",
    # The kits' orders (fleet/retail/): their crew and ops.
    ("GET", "/api/v1/kits/{kit_id}/orders"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/orders.csv"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/orders/{order_id}"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/orders-pending"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/sales"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/sales.csv"): "crew",
    ("GET", "/api/v1/kits/{kit_id}/stock"): "crew",
    ("POST", "/api/v1/kits/{kit_id}/labels"): "crew",  # labels printed by the kit's agent
    # Releases and rollouts (fleet/updates/): ops only, as the users routes.
    ("GET", "/api/v1/releases/{release_id}"): "user",
    ("POST", "/api/v1/releases/{release_id}/retire"): "user",
    ("GET", "/api/v1/rollouts/{rollout_id}"): "user",
    ("POST", "/api/v1/rollouts/{rollout_id}/pause"): "user",
    ("POST", "/api/v1/rollouts/{rollout_id}/resume"): "user",
    ("POST", "/api/v1/rollouts/{rollout_id}/abort"): "user",
    # Machine tokens (fleet/machines/): ops only, as the users routes.
    ("POST", "/api/v1/machine-tokens/{token_id}/revoke"): "user",
    # Notification targets (fleet/notify/): ops only, as the users routes.
    ("GET", "/api/v1/notify/targets/{target_id}"): "user",
    ("PUT", "/api/v1/notify/targets/{target_id}"): "user",
    ("DELETE", "/api/v1/notify/targets/{target_id}"): "user",
    ("POST", "/api/v1/notify/targets/{target_id}/test"): "user",
}
# A body that passes validation, so what answers is the scope check and not a 422.
BODIES = {
    ("POST", "/api/v1/devices/{device_id}/commands"): {"action": "identify"},
    ("PUT", "/api/v1/devices/{device_id}/config"): {"data": {}},
    ("POST", "/api/v1/events/{event_id}/revocations"): {"tickets": ["T1"]},
    ("PUT", "/api/v1/events/{event_id}/key"): {"key": "00" * 32, "not_before": 0, "expires": 4_000_000_000},
    ("PUT", "/api/v1/venues/{venue_id}/scenes/{scene_id}"): {"id": "s", "levels": {"z": {"level": 10}}},
    ("POST", "/api/v1/venues/{venue_id}/overrides"): {"scene": "s", "minutes": 5},
    ("POST", "/api/v1/venues/{venue_id}/draft"): {"venue": {"id": "x", "name": "X", "tz": "UTC", "latitude": 0,
                                                          "longitude": 0}},
    ("POST", "/api/v1/venues/{venue_id}/publish"): {"venue": {"id": "x", "name": "X", "tz": "UTC", "latitude": 0,
                                                            "longitude": 0}},
    ("POST", "/api/v1/venues/{venue_id}/scene-preview"): {"levels": None},
}


def test_every_id_route_is_in_the_table(world):
    """A new route (or method) with an id in its path fails here until it has a row (and so a cross-scope test)."""
    with_ids = {(m, r.path) for r in api_routes(world.app.routes) if r.param_convertors and r.path not in PUBLIC
                for m in r.methods}
    assert with_ids == set(ID_ROUTES)


def test_the_app_refuses_a_route_that_is_not_guarded(tmp_path):
    from fastapi import APIRouter

    from fleet.api.routes import kits

    store = Store.open(f"sqlite:///{tmp_path / 'x.db'}")
    sneaky = APIRouter()
    sneaky.get("/api/v1/kits/{kit_id}/secrets")(lambda kit_id: {"kit": kit_id})
    kits.router.routes.extend(sneaky.routes)  # as if someone added it to the kits module without the guard
    try:
        with pytest.raises(RuntimeError, match="secrets"):
            create_app(store)
    finally:
        del kits.router.routes[-1]
        store.close()


# ---------------------------------------------------------------- signed in, or 401

def test_no_token_is_401_on_every_route_but_the_public_ones(world):
    routes = method_paths(world.app)
    assert len(routes) > 40
    for method, path in routes:
        r = world.anon.request(method, fill(path, world.ids(mine=True)), json={})
        if path in PUBLIC:
            assert r.status_code != 401, (method, path)
        else:
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"


def test_public_routes_show_no_data(world):
    health = world.anon.get("/healthz").json()
    assert health == {"status": "ok", "broker_connected": True}  # the counts only for ops
    assert world.ops.get("/healthz").json()["devices"] == 8
    assert world.anon.get("/").status_code == 200 and world.anon.get("/static/app.js").status_code == 200
    schema = world.anon.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"]["tokenUrl"] == \
        "/api/v1/auth/token"
    kit_get = schema["paths"]["/api/v1/kits/{kit_id}"]["get"]
    assert {"401", "403", "404"} <= set(kit_get["responses"]) and kit_get["security"]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_bad_expired_tampered_and_foreign_tokens_are_401(world):
    good = token_as(world.app, "ops-olga")
    key = world.app.state.auth.key
    head, body, sig = good.split(".")
    tampered = f"{head}.{body}.{sig[:-2]}{'AA' if sig[-2:] != 'AA' else 'BB'}"
    expired = tokens.issue(key, "ops-olga", 0, ttl_s=60, now=time.time() - 3600)
    foreign = tokens.issue(b"another service's key, 32+ chars long..", "ops-olga", 0, ttl_s=600)
    unknown = tokens.issue(key, "no-such-user", 0, ttl_s=600)
    for token in ("garbage", tampered, expired, foreign, unknown, good + "x"):
        r = world.anon.get("/api/v1/kits", headers=bearer(token))
        assert r.status_code == 401 and "sign in again" in r.json()["detail"], token
    assert world.anon.get("/api/v1/kits", headers=bearer(good)).status_code == 200


def test_a_disabled_user_a_new_password_and_a_deleted_user_end_old_tokens(world):
    users = world.app.state.auth.users
    token = token_as(world.app, "crew-b", "crew", kits=["other"])
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 200
    users.set_disabled("crew-b")
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 401
    token = token_as(world.app, "crew-b", "crew", kits=["other"])
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 401  # still disabled
    assert world.ops.put("/api/v1/users/crew-b", json={"role": "crew", "kits": ["other"]}).status_code == 200
    token = token_as(world.app, "crew-b", "crew", kits=["other"])
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 200
    assert world.ops.put("/api/v1/users/crew-b", json={"role": "crew", "kits": ["other"],
                                                        "password": PASSWORD}).status_code == 200
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 401
    token = token_as(world.app, "crew-b", "crew", kits=["other"])
    assert world.ops.delete("/api/v1/users/crew-b").status_code == 204
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 401


def test_logout_everywhere_ends_every_token(world):
    token = token_as(world.app, "crew-b", "crew", kits=["other"])
    assert world.anon.post("/api/v1/auth/logout?everywhere=true", headers=bearer(token)).status_code == 204
    assert world.anon.get("/api/v1/kits", headers=bearer(token)).status_code == 401


# ---------------------------------------------------------------- roles: 403

@pytest.mark.parametrize("who, method, path", [
    ("venue", "GET", "/api/v1/kits"),
    ("venue", "GET", "/api/v1/kits/demo"),
    ("venue", "GET", "/api/v1/devices/demo-lights-1"),
    ("venue", "GET", "/api/v1/alerts"),
    ("venue", "GET", "/api/v1/events/MINE-1/attendance"),
    ("venue", "GET", "/metrics"),
    ("venue", "DELETE", "/api/v1/venues/hall"),
    ("crew", "GET", "/api/v1/venues"),
    ("crew", "GET", "/api/v1/venues/hall"),
    ("crew", "PUT", "/api/v1/kits/demo"),
    ("crew", "GET", "/api/v1/dead-letters"),
    ("crew", "GET", "/metrics"),
    ("crew", "GET", "/api/v1/users"),
    ("crew", "PUT", "/api/v1/users/crew-a"),
    ("venue", "GET", "/api/v1/users/venue-a"),
])
def test_a_role_that_may_never_use_a_route_gets_403(world, who, method, path):
    r = getattr(world, who).request(method, path, json={})
    assert r.status_code == 403 and "not for" in r.json()["detail"], r.text


# ---------------------------------------------------------------- scope: 404 for another crew's or venue's ids

def scope_cases():
    for (method, path), owner in ID_ROUTES.items():
        if owner != "user":
            yield pytest.param(method, path, owner, id=f"{method} {path}")


@pytest.mark.parametrize("method, path, owner", list(scope_cases()))
def test_another_crews_or_venues_id_is_404_and_ones_own_is_not(world, method, path, owner):
    [route] = [r for r in api_routes(world.app.routes) if r.path == path and method in r.methods]
    client = world.crew if owner == "crew" else world.venue
    body = BODIES.get((method, path), {})
    theirs = client.request(method, fill(path, world.ids(mine=False)), json=body)
    mine = client.request(method, fill(path, world.ids(mine=True)), json=body)
    if owner not in route_roles(route):  # ops only (registering a kit, deleting a venue): 403 for any id
        assert theirs.status_code == mine.status_code == 403, (theirs.text, mine.text)
        return
    assert theirs.status_code == 404, (theirs.status_code, theirs.text)
    # Worded as for an object that does not exist: nothing says it is someone else's.
    assert "not yours" not in theirs.text and "forbidden" not in theirs.text.lower()
    assert mine.status_code not in (401, 403, 404), (mine.status_code, mine.text)


def test_lists_show_only_what_is_the_users(world):
    assert [k["id"] for k in world.ops.get("/api/v1/kits").json()["items"]] == ["demo", "other"]
    page = world.crew.get("/api/v1/kits").json()
    assert [k["id"] for k in page["items"]] == ["demo"] and page["total"] == 1
    assert {a["kit_id"] for a in world.crew.get("/api/v1/alerts").json()["items"]} == {"demo"}
    assert world.crew.get("/api/v1/alerts", params={"kit": "other"}).json()["items"] == []
    assert len(world.ops.get("/api/v1/alerts").json()["items"]) == 2
    assert [v["id"] for v in world.venue.get("/api/v1/venues").json()["items"]] == ["hall"]
    assert [v["id"] for v in world.ops.get("/api/v1/venues").json()["items"]] == ["arena", "hall"]
    att = world.crew.get("/api/v1/events/MINE-1/attendance").json()
    assert set(att["by_scanner"]) == {"demo-scanner-1"}


def test_a_crew_revocation_reaches_only_its_own_kits_scanners(fleet, collect):
    fleet.store.registry.register_kit(parse_manifest(OTHER_KIT))
    seen = collect("popkit/v1/+/+/config")
    crew = client_as(fleet.api.app, "crew-a", "crew", kits=["demo"])
    known_event(fleet.api, "NEW-EVENT")
    r = crew.post("/api/v1/events/NEW-EVENT/revocations", json={"tickets": ["T9"]})
    assert r.status_code == 200, r.text
    assert [p["device_id"] for p in r.json()["pushed"]] == ["demo-scanner-1"]
    wait_until(lambda: seen.messages, what="the pushed config")
    assert [t for t, _p, _r in seen.messages] == ["popkit/v1/demo/demo-scanner-1/config"]
    assert fleet.store.config.desired("other-scanner")["version"] is None
    # An event only crew B's kit holds is not crew A's to revoke at.
    assert fleet.api.post("/api/v1/events/NEW-EVENT/revocations", json={"tickets": ["T9"]}).status_code == 200
    crew_b = client_as(fleet.api.app, "crew-b", "crew", kits=["other"])
    assert crew_b.post("/api/v1/events/NEW-EVENT/revocations", json={"tickets": ["T1"]}).status_code == 200


def test_a_venue_user_cannot_wire_another_venues_controller_into_a_zone(world):
    own = world.venue.put("/api/v1/venues/hall/zones/z2", json={"id": "z2", "name": "Bar", "outputs": [
        {"controller": "other-lights", "kind": "pwm", "channel": "g"}]})
    assert own.status_code == 422 and "not a registered lighting controller" in own.text
    assert world.ops.put("/api/v1/venues/hall/zones/z2", json={"id": "z2", "name": "Bar", "outputs": [
        {"controller": "other-lights", "kind": "pwm", "channel": "g"}]}).status_code != 422


# ---------------------------------------------------------------- signing in

def add_user(world, name: str, role: str = "ops", **scope) -> None:
    world.app.state.auth.users.put(name, role, password_hash=hash_password(PASSWORD), **scope)


def test_signing_in_with_the_form_gives_a_token_and_an_httponly_cookie(world):
    add_user(world, "crew-c", "crew", kits=["demo"])
    r = world.anon.post("/api/v1/auth/token", data={"username": "crew-c", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 12 * 3600
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={body['access_token']};")
    for attr in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert attr.lower() in cookie.lower(), cookie
    me = world.anon.get("/api/v1/auth/me", headers=bearer(body["access_token"])).json()
    assert me == {"name": "crew-c", "role": "crew", "kits": ["demo"], "venues": []}


def test_a_failed_sign_in_says_nothing_about_the_user_and_is_counted(world):
    add_user(world, "crew-c", "crew", kits=["demo"])
    add_user(world, "crew-off", "crew", kits=["demo"])
    world.app.state.auth.users.set_disabled("crew-off")
    answers = [world.anon.post("/api/v1/auth/token", data={"username": u, "password": p})
               for u, p in (("crew-c", "wrong password"), ("no-such-user", PASSWORD), ("crew-off", PASSWORD))]
    assert {(r.status_code, r.json()["detail"]) for r in answers} == {(401, "incorrect user name or password")}
    metrics = world.ops.get("/metrics").text
    assert 'popkit_api_logins_total{outcome="failed"} 3' in metrics


def test_repeated_failures_for_a_name_are_slowed_down(world):
    add_user(world, "crew-c", "crew", kits=["demo"])
    codes = [world.anon.post("/api/v1/auth/token", data={"username": "crew-c", "password": "guess"}).status_code
             for _ in range(7)]
    assert codes[:6] == [401] * 6 and codes[6] == 429
    r = world.anon.post("/api/v1/auth/token", data={"username": "crew-c", "password": PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1  # even the right password waits
    assert world.anon.post("/api/v1/auth/token", data={"username": "ops-x", "password": "guess"}).status_code == 401


def test_the_cookie_works_for_reads_and_for_changes_only_from_this_site(world):
    add_user(world, "ops-c")
    assert world.anon.post("/api/v1/auth/token", data={"username": "ops-c", "password": PASSWORD}).status_code == 200
    assert COOKIE in world.anon.cookies  # the TestClient keeps it, as a browser does
    assert world.anon.get("/api/v1/kits").status_code == 200
    body = {"role": "crew", "kits": ["demo"]}
    refused = [world.anon.put("/api/v1/users/crew-z", json=body, headers=h)
               for h in ({}, {"Origin": "https://evil.example"}, {"Referer": "https://evil.example/page"},
                         {"Origin": "null"})]
    assert [r.status_code for r in refused] == [403] * 4 and "cross-site" in refused[0].text
    assert world.anon.put("/api/v1/users/crew-z", json=body, headers={"Origin": "http://testserver"}).status_code == 200
    assert world.anon.put("/api/v1/users/crew-z", json=body,
                          headers={"Referer": "http://testserver/#/kit/demo"}).status_code == 200
    assert world.anon.post("/api/v1/auth/logout", headers={"Origin": "http://testserver"}).status_code == 204
    assert world.anon.get("/api/v1/kits").status_code == 401
    # A bearer token is no cookie a browser sends by itself: no Origin needed.
    assert world.ops.put("/api/v1/users/crew-y", json=body).status_code == 200


def test_passwords_are_argon2id_and_never_leave_the_database(world):
    r = world.ops.put("/api/v1/users/venue-b", json={"role": "venue", "venues": ["arena"], "password": PASSWORD})
    assert r.status_code == 200 and r.json()["has_password"] is True
    stored = world.app.state.auth.users.get("venue-b").password_hash
    assert stored.startswith("$argon2id$v=19$") and PASSWORD not in stored
    for text in (r.text, world.ops.get("/api/v1/users/venue-b").text, world.ops.get("/api/v1/users").text):
        assert "argon2" not in text and PASSWORD not in text
    short = world.ops.put("/api/v1/users/venue-b", json={"role": "venue", "venues": ["arena"], "password": "short-pw"})
    assert short.status_code == 422 and "short-pw" not in short.text


def test_user_records_refuse_what_does_not_fit(world):
    assert world.ops.put("/api/v1/users/auto", json={"role": "ops"}).status_code == 422
    assert world.ops.put("/api/v1/users/x", json={"role": "venue", "kits": ["demo"]}).status_code == 422
    assert world.ops.put("/api/v1/users/Bad%20Name", json={"role": "ops"}).status_code == 422
    assert world.ops.put("/api/v1/users/ops-olga", json={"role": "crew", "kits": ["demo"]}).status_code == 409
    assert world.ops.delete("/api/v1/users/ops-olga").status_code == 409
    assert world.ops.get("/api/v1/users/nobody").status_code == 404


# ---------------------------------------------------------------- registering a kit from its manifest

def test_ops_register_a_kit_from_its_manifest(world):
    text = OTHER_KIT.replace('id = "other"', 'id = "third"').replace("other-", "third-")
    r = world.ops.put("/api/v1/kits/third", content=text, headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert {d["id"] for d in r.json()["devices"]} == {"third-agent", "third-scanner", "third-lights"}
    again = world.ops.put("/api/v1/kits/third", json={"manifest": text.replace("Another crew's kit", "Renamed")})
    assert again.status_code == 200 and again.json()["name"] == "Renamed"
    assert world.ops.put("/api/v1/kits/fourth", content=text, headers={"Content-Type": "text/plain"}).status_code == 409
    bad = world.ops.put("/api/v1/kits/third", content="id = 'third'\nname = 3", headers={"Content-Type": "text/plain"})
    assert bad.status_code == 422 and "name" in bad.json()["detail"]
    assert world.ops.put("/api/v1/kits/third", json={"nope": 1}).status_code == 422
    assert world.crew.put("/api/v1/kits/demo", content=text, headers={"Content-Type": "text/plain"}).status_code == 403


# ---------------------------------------------------------------- the signing key

GOOD_KEY = "kJ8v2QmZ4xRt7Wn1Lp9sHd3Fy6Bc0Ga5"


@pytest.mark.parametrize("key", ["", "short-but-random-Xy7", "changeme", "changeme" * 5, "my-super-secret-key-" * 3,
                                 "password1234567890password1234567890", "example-key-for-the-docs-0123456789",
                                 "a" * 40, "ab" * 20, "0123456789" * 4])
def test_a_missing_or_placeholder_key_is_refused_without_showing_it(key):
    with pytest.raises(InsecureSecret) as refused:
        signing_key(FleetSettings(secret_key=key or None))
    msg = str(refused.value)
    assert "refusing to start" in msg and "POPKIT_SECRET_KEY" in msg
    assert not key or key not in msg


def test_a_good_key_a_key_file_and_the_demo(tmp_path):
    assert signing_key(FleetSettings(secret_key=GOOD_KEY)) == GOOD_KEY.encode()
    f = tmp_path / "key"
    f.write_text(GOOD_KEY + "\n")
    assert signing_key(FleetSettings(secret_key=None, secret_key_file=str(f))) == GOOD_KEY.encode()
    with pytest.raises(InsecureSecret, match="cannot read"):
        signing_key(FleetSettings(secret_key=None, secret_key_file=str(tmp_path / "missing")))
    with pytest.raises(InsecureSecret, match="both"):
        signing_key(FleetSettings(secret_key=GOOD_KEY, secret_key_file=str(f)))
    demo = {signing_key(FleetSettings(secret_key=None, demo=True)) for _ in range(2)}
    assert len(demo) == 2 and all(len(k) >= 32 for k in demo)  # random, per process


def serve_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPKIT_")}
    return dict(env, **extra)


@pytest.mark.parametrize("env, says", [({}, "no signing key is set"),
                                       ({"POPKIT_SECRET_KEY": "changeme-please-0000000000000000"}, "placeholder")])
def test_popkit_fleet_serve_refuses_to_start(tmp_path, env, says):
    r = subprocess.run([sys.executable, "-m", "popkit.cli", "fleet", "serve", "--db", f"sqlite:///{tmp_path / 'f.db'}",
                        "--http", "127.0.0.1:1"], env=serve_env(**env), cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert "refusing to start" in r.stderr and says in r.stderr
    for value in env.values():
        assert value not in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- no secrets in logs

def test_no_password_token_or_key_in_the_log(world, caplog):
    caplog.set_level(logging.DEBUG)
    add_user(world, "ops-c")
    r = world.anon.post("/api/v1/auth/token", data={"username": "ops-c", "password": PASSWORD})
    token = r.json()["access_token"]
    world.anon.post("/api/v1/auth/token", data={"username": "ops-c", "password": PASSWORD + "x"})
    world.anon.post("/api/v1/auth/token", data={"username": PASSWORD, "password": "ops-c"})  # fields swapped
    world.anon.get("/api/v1/kits", headers=bearer(token))
    world.anon.get("/api/v1/kits", headers=bearer(token + "x"))
    world.ops.put("/api/v1/users/crew-q", json={"role": "crew", "kits": ["demo"], "password": PASSWORD})
    logged = caplog.text
    assert "failed login for 'ops-c'" in logged  # the log does say what happened
    key = os.environ["POPKIT_SECRET_KEY"]
    for secret in (PASSWORD, token, token.split(".")[2], key):
        assert secret not in logged
    assert "SecretStr('**********')" in repr(FleetSettings())  # nor in a settings dump


def test_no_password_token_or_key_on_the_fleet_process_stderr(tmp_path, broker):
    import httpx

    from popkit.broker import free_port

    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    key = "Zq3" + os.urandom(24).hex()
    env = serve_env(POPKIT_SECRET_KEY=key)
    add = subprocess.run([sys.executable, "-m", "popkit.cli", "-v", "fleet", "user", "add", "ops-p", "--role", "ops",
                          "--password-stdin", "--db", db], input=PASSWORD + "\n", env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert add.returncode == 0 and PASSWORD not in add.stdout + add.stderr, add.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "-v", "fleet", "serve", "--db", db, "--mqtt",
                             broker.url, "--http", f"127.0.0.1:{port}"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), timeout=30, what="the fleet serving")
        r = httpx.post(f"{base}/api/v1/auth/token", data={"username": "ops-p", "password": PASSWORD})
        token = r.json()["access_token"]
        httpx.post(f"{base}/api/v1/auth/token", data={"username": "ops-p", "password": "wrong " + PASSWORD})
        assert httpx.get(f"{base}/api/v1/kits", headers=bearer(token)).status_code == 200
        assert httpx.put(f"{base}/api/v1/users/crew-p", headers=bearer(token),
                         json={"role": "crew", "kits": ["k"], "password": PASSWORD + "2"}).status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "failed login for 'ops-p'" in err  # it logs (at -v, debug detail too) ...
    for secret in (PASSWORD, token, key):
        assert secret not in out + err  # ... never a secret


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code in (200, 503)
    except httpx.HTTPError:
        return False


# ---------------------------------------------------------------- the audit log

def test_the_audit_log_records_the_signed_in_user_and_shows_each_their_own(fleet):
    app = fleet.api.app
    ops, crew = fleet.api, client_as(app, "crew-a", "crew", kits=["demo"])
    venue = client_as(app, "venue-a", "venue", venues=["hall"])
    v = "/api/v1/venues/hall"
    assert ops.put(v, json={"id": "hall", "name": "Hall", "tz": "Europe/London", "latitude": 51.5,
                            "longitude": -0.12}).status_code == 200
    assert ops.put(f"{v}/zones/stage", json={"id": "stage", "name": "Stage", "outputs": [
        {"controller": "demo-lights-1", "kind": "pwm", "channel": "r"}]}).status_code == 200
    r = venue.put(f"{v}/scenes/show", json={"id": "show", "levels": {"stage": {"level": 90}}})
    assert r.status_code == 200, r.text
    cmd = crew.post("/api/v1/devices/demo-lights-1/commands", json={"action": "identify", "by": "someone-else"})
    assert cmd.status_code == 202 and cmd.json()["requested_by"] == "crew-a"
    assert venue.put(f"{v}/scenes/nope", json={"id": "other", "levels": {}}).status_code == 422  # refused: not logged

    log = ops.get("/api/v1/audit").json()
    assert [(e["by"], e["what"]) for e in log[:2]] == [("crew-a", "command identify"),
                                                       ("venue-a", "PUT /api/v1/venues/{venue_id}/scenes/{scene_id}")]
    assert log[1]["target"] == f"{v}/scenes/show" and log[1]["result"] == "200"
    assert {e["by"] for e in log} == {"ops-test", "venue-a", "crew-a"}  # "someone-else" is nowhere
    assert all("{" in e["what"] or e["what"].startswith("command") for e in log)
    assert [e["what"] for e in crew.get("/api/v1/audit").json()] == ["command identify"]
    seen_by_venue = {(e["by"], e["target"]) for e in venue.get("/api/v1/audit").json()}
    assert seen_by_venue == {("ops-test", v), ("ops-test", f"{v}/zones/stage"), ("venue-a", f"{v}/scenes/show")}
    assert fleet.store.registry.device_ref("demo-lights-1")  # the command's device is crew A's kit's
    assert client_as(app, "crew-b", "crew", kits=["other"]).get("/api/v1/audit").json() == []


# ---------------------------------------------------------------- the docs list every route

def docs_table() -> dict[tuple[str, str], tuple[str, ...]]:
    text = (REPO / "docs" / "security.md").read_text()
    section = text.split("## API: routes and roles", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\|\s*`?(GET|PUT|POST|DELETE|PATCH)`?\s*\|\s*`([^`]+)`\s*\|\s*([^|]+)\|", line)
        if m:
            roles = tuple(sorted(r.strip() for r in m.group(3).split(",")))
            rows[(m.group(1), m.group(2))] = roles
    return rows


def test_docs_security_lists_every_route_with_its_roles(world):
    documented = docs_table()
    actual = {}
    for route in api_routes(world.app.routes):
        roles = route_roles(route)
        for method in route.methods:
            actual[(method, route.path)] = tuple(sorted(roles)) if roles else ("public",)
    assert documented == actual
