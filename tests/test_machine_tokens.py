"""Machine tokens (fleet/machines/): ops make, list and revoke them through the API; the fleet keeps
only their sha256; each scope (metrics, read, kit:<id>) reaches what it says and nothing else, never
a change; every create and revoke is in the audit log."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from fleet.api.app import create_app
from fleet.auth.testing import client_as, ops_client
from fleet.db import now_ms
from fleet.machines import model
from fleet.machines.tables import machine_tokens
from fleet.store import Store
from kits.manifest import load_manifest, parse_manifest
from tests.conftest import DEMO_KIT
from tests.test_api_auth import OTHER_KIT


@pytest.fixture
def app(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'machines.db'}")
    store.registry.register_kit(load_manifest(DEMO_KIT))
    store.registry.register_kit(parse_manifest(OTHER_KIT))
    yield create_app(store)
    store.close()


def make(ops, name: str, scope: str, **extra) -> dict:
    r = ops.post("/api/v1/machine-tokens", json={"name": name, "scope": scope, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def machine(app, token: str) -> TestClient:
    client = TestClient(app)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


def test_a_token_is_shown_once_and_stored_as_its_sha256_only(app):
    ops = ops_client(app, "ops-olga")
    made = make(ops, "prometheus", "metrics")
    token = made["token"]
    assert token.startswith("pkm_") and len(token) >= 40 and made["prefix"] == token[:10]
    assert made["created_by"] == "ops-olga" and made["active"] and made["expires_ms"] is None
    listed = ops.get("/api/v1/machine-tokens").json()
    assert [t["name"] for t in listed] == ["prometheus"] and "token" not in listed[0]
    assert token not in ops.get("/api/v1/machine-tokens").text
    with app.state.store.engine.connect() as conn:
        [row] = conn.execute(select(machine_tokens)).mappings().all()
    assert row["token_sha256"] == model.digest(token)
    assert not any(token in str(v) for v in row.values()), "the token itself must not be stored"


def test_a_metrics_token_scrapes_metrics_and_nothing_else(app):
    ops = ops_client(app)
    scraper = machine(app, make(ops, "prometheus", "metrics")["token"])
    r = scraper.get("/metrics")
    assert r.status_code == 200 and "popkit_devices_online" in r.text
    for path in ("/api/v1/kits", "/api/v1/kits/demo", "/api/v1/users", "/api/v1/machine-tokens", "/api/v1/audit"):
        r = scraper.get(path)
        assert r.status_code == 403 and "metrics only" in r.json()["detail"], (path, r.text)
    assert scraper.put("/api/v1/kits/demo", json={}).status_code == 403


def test_a_read_token_reads_everything_but_changes_nothing(app):
    ops = ops_client(app)
    reader = machine(app, make(ops, "exporter", "read")["token"])
    assert {k["id"] for k in reader.get("/api/v1/kits").json()["items"]} == {"demo", "other"}
    assert reader.get("/metrics").status_code == 200
    assert reader.get("/api/v1/kits/other").status_code == 200
    r = reader.post("/api/v1/events/MINE-1/revocations", json={"tickets": ["T1"]})
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    r = reader.post("/api/v1/machine-tokens", json={"name": "mine-now", "scope": "read"})
    assert r.status_code == 403
    for hidden in ("/api/v1/machine-tokens", "/api/v1/notify/targets"):  # other machines; webhook URLs (secrets)
        r = reader.get(hidden)
        assert r.status_code == 403 and "not for machine tokens" in r.json()["detail"], (hidden, r.text)
    assert reader.get("/api/v1/auth/me").json()["name"] == "machine:exporter"


def test_a_kit_token_sees_its_kit_only(app):
    ops = ops_client(app)
    kit_reader = machine(app, make(ops, "demo-board", "kit:demo")["token"])
    assert [k["id"] for k in kit_reader.get("/api/v1/kits").json()["items"]] == ["demo"]
    assert kit_reader.get("/api/v1/kits/demo").status_code == 200
    assert kit_reader.get("/api/v1/kits/other").status_code == 404  # as for a kit that does not exist
    assert kit_reader.get("/metrics").status_code == 403  # the fleet's metrics are not one kit's
    assert kit_reader.put("/api/v1/devices/demo-lights-1/config", json={"data": {}}).status_code == 403


def test_a_revoked_or_expired_token_is_refused_and_stays_listed(app):
    ops = ops_client(app, "ops-olga")
    made = make(ops, "prometheus", "metrics")
    scraper = machine(app, made["token"])
    assert scraper.get("/metrics").status_code == 200
    r = ops.post(f"/api/v1/machine-tokens/{made['id']}/revoke")
    assert r.status_code == 200 and r.json()["revoked_by"] == "ops-olga" and not r.json()["active"]
    revoked_ms = r.json()["revoked_ms"]
    r = scraper.get("/metrics")
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    again = ops_client(app, "ops-other").post(f"/api/v1/machine-tokens/{made['id']}/revoke").json()
    assert (again["revoked_by"], again["revoked_ms"]) == ("ops-olga", revoked_ms)
    [listed] = ops.get("/api/v1/machine-tokens").json()
    assert listed["revoked_by"] == "ops-olga" and listed["last_used_ms"] is not None
    # The name is free again once its token is revoked.
    make(ops, "prometheus", "metrics")
    old, _token = app.state.store.machines.create("old", "metrics", "ops-olga", expires_ms=now_ms() - 1)
    assert machine(app, _token).get("/metrics").status_code == 401
    assert ops.post("/api/v1/machine-tokens/999/revoke").status_code == 404


def test_an_unknown_machine_token_is_401(app):
    r = machine(app, model.new_token()).get("/metrics")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("body, status, says", [
    ({"name": "p", "scope": "admin"}, 422, "scope"),
    ({"name": "p", "scope": "kit:nowhere"}, 422, "no kit 'nowhere'"),
    ({"name": "Bad Name", "scope": "read"}, 422, "name"),
    ({"name": "p", "scope": "read", "expires_in_days": 0}, 422, "expires_in_days"),
    ({"name": "p", "scope": "read", "token": "pkm_mine"}, 422, "token"),
])
def test_bad_requests_say_what_is_wrong(app, body, status, says):
    r = ops_client(app).post("/api/v1/machine-tokens", json=body)
    assert r.status_code == status and says in r.text, r.text


def test_a_second_active_token_of_one_name_is_409_and_only_ops_manage_tokens(app):
    ops = ops_client(app)
    make(ops, "prometheus", "metrics")
    r = ops.post("/api/v1/machine-tokens", json={"name": "prometheus", "scope": "read"})
    assert r.status_code == 409 and "prometheus" in r.json()["detail"]
    crew = client_as(app, "crew-a", "crew", kits=["demo"])
    assert crew.get("/api/v1/machine-tokens").status_code == 403
    assert crew.post("/api/v1/machine-tokens", json={"name": "x", "scope": "kit:demo"}).status_code == 403


def test_every_create_and_revoke_is_in_the_audit_log_naming_the_token(app):
    ops = ops_client(app, "ops-olga")
    assert ops.post("/api/v1/machine-tokens", json={"name": "p", "scope": "admin"}).status_code == 422
    made = make(ops, "prometheus", "metrics", expires_in_days=30)
    assert made["expires_ms"] > now_ms() + 29 * 86_400_000
    ops.post(f"/api/v1/machine-tokens/{made['id']}/revoke")
    log = ops.get("/api/v1/audit", params={"action": "machine-tokens"}).json()
    assert [(e["by"], e["what"], e["target"]) for e in log] == [
        ("ops-olga", "POST /api/v1/machine-tokens/{token_id}/revoke", f"/api/v1/machine-tokens/{made['id']}/revoke"),
        ("ops-olga", "POST /api/v1/machine-tokens", f"/api/v1/machine-tokens/{made['id']}"),
    ]
