"""Event keys and revocations at the fleet (fleet/tickets/), as ops and crews use them: a key with its
window goes into every scanner's retained config; a window that is over is refused by the API and by
`popkit tickets key`; a revocation for an unknown event is refused naming it; a kit's own revocation,
arriving as its agent's event, joins the fleet's in the union with who and where."""

from __future__ import annotations

import json
import threading
import time

import pytest

from fleet.tickets.model import ConfigConflict, KeySpec, scanner_data
from kits.contract import decode
from kits.tickets import EventKey
from tests.conftest import publisher, wait_until

SCANNER = "demo-scanner-1"
NOW = 1_752_300_000


def key_body(expires: int, not_before: int = 0, **extra) -> dict:
    return {"key": "ab" * 32, "not_before": not_before, "expires": expires, **extra}


# ---------------------------------------------------------------- the config a scanner gets (pure)

def test_scanner_data_holds_the_kits_live_keys_and_adds_revocations_to_what_is_there():
    keys = [KeySpec("B-EV", "bb" * 32, 0, NOW + 60), KeySpec("A-EV", "aa" * 32, 0, NOW + 60),
            KeySpec("OLD", "cc" * 32, 0, NOW), KeySpec("ELSEWHERE", "dd" * 32, 0, NOW + 60, frozenset({"other"}))]
    old = {"beep": False, "revoked": {"A-EV": ["T1"], "LEGACY": ["Z9"]}}
    got = scanner_data(old, "demo", keys, {"A-EV": ["T2", "T1"], "B-EV": ["T3"]}, NOW)
    assert got == {"beep": False,
                   "revoked": {"A-EV": ["T1", "T2"], "LEGACY": ["Z9"], "B-EV": ["T3"]},
                   "keys": [{"event": "A-EV", "key": "aa" * 32, "not_before": 0, "expires": NOW + 60},
                            {"event": "B-EV", "key": "bb" * 32, "not_before": 0, "expires": NOW + 60}]}
    assert old == {"beep": False, "revoked": {"A-EV": ["T1"], "LEGACY": ["Z9"]}}  # not changed in place
    with pytest.raises(ConfigConflict):
        scanner_data({"revoked": ["T1"]}, "demo", [], {"A-EV": ["T2"]}, NOW)


# ---------------------------------------------------------------- through the API

def test_a_key_goes_to_every_scanner_and_an_expired_window_is_refused_naming_the_event(fleet, collect):
    now = int(time.time())
    seen = collect(f"popkit/v1/demo/{SCANNER}/config")
    r = fleet.api.put("/api/v1/events/FEST25/key", json=key_body(now - 5, now - 3600))
    assert r.status_code == 422 and "FEST25" in r.json()["detail"] and "expired" in r.json()["detail"]
    r = fleet.api.put("/api/v1/events/FEST25/key", json=key_body(now + 10, now + 20))
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    assert fleet.store.config.desired(SCANNER)["version"] is None  # nothing stored, nothing pushed

    r = fleet.api.put("/api/v1/events/FEST25/key", json=key_body(now + 3600, now - 60))
    assert r.status_code == 200, r.text
    assert r.json()["pushed"] == [{"device_id": SCANNER, "version": 1}]
    assert "ab" * 32 not in json.dumps(r.json())  # the key is never shown back
    wait_until(lambda: seen.on("/config"), what="the scanner's retained config")
    cfg = decode("config", seen.on("/config")[-1])
    assert cfg.data == {"keys": [{"event": "FEST25", "key": "ab" * 32, "not_before": now - 60, "expires": now + 3600}]}
    # The same key again changes no scanner: no new version.
    assert fleet.api.put("/api/v1/events/FEST25/key", json=key_body(now + 3600, now - 60)).json()["pushed"] == []
    # Another kit's key does not reach this kit's scanner.
    r = fleet.api.put("/api/v1/events/OTHER-1/key", json=key_body(now + 3600, kits=["other"]))
    assert r.status_code == 409 and "no scanner" in r.json()["detail"]


def test_a_revocation_for_an_unknown_event_is_404_naming_it(fleet):
    r = fleet.api.post("/api/v1/events/NOPE-1/revocations", json={"tickets": ["T1"]})
    assert r.status_code == 404 and "NOPE-1" in r.json()["detail"]
    assert fleet.store.config.desired(SCANNER)["version"] is None


def test_a_kits_revocation_event_joins_the_fleets_with_who_and_where(fleet):
    now = int(time.time())
    assert fleet.api.put("/api/v1/events/FEST25/key", json=key_body(now + 3600)).status_code == 200
    assert fleet.api.post("/api/v1/events/FEST25/revocations", json={"tickets": ["T1"]}).status_code == 200
    pub = publisher(fleet.settings.mqtt_url)
    try:
        body = {"boot": "0badcafe", "seq": 1, "ts": now * 1000 - 60_000, "kind": "revocation",
                "data": {"event": "FEST25", "tickets": ["T2", "T1"], "by": "crew-anna"}}
        # A door claiming to revoke is not heeded: only a kit's agent revokes.
        door = {**body, "data": {"event": "FEST25", "tickets": ["T9"], "by": "a-door"}}
        pub.publish(f"popkit/v1/demo/{SCANNER}/event", json.dumps(door), qos=1).wait_for_publish(5)
        pub.publish("popkit/v1/demo/demo-agent/event", json.dumps(body), qos=1).wait_for_publish(5)
        wait_until(lambda: fleet.store.config.desired(SCANNER)["data"]["revoked"]["FEST25"] == ["T1", "T2"],
                   what="the kit's revocation pushed to the scanner")
    finally:
        pub.loop_stop()
    got = {r["ticket"]: r for r in fleet.api.get("/api/v1/events/FEST25/revocations").json()}
    assert got["T2"]["revoked_by"] == "crew-anna" and got["T2"]["revoked_at"] == "kit demo/demo-agent"
    assert got["T2"]["revoked_ms"] == now * 1000 - 60_000
    assert got["T1"]["revoked_at"] == "fleet"  # revoked at the fleet first: that record stays
    assert "T9" not in got


# ---------------------------------------------------------------- popkit tickets key

def test_cli_tickets_key_refuses_a_window_that_is_over_before_sending(tmp_path, capsys, monkeypatch):
    from popkit.cli import main

    key_file = tmp_path / "FEST25.key"
    EventKey.generate("FEST25").save(key_file)
    monkeypatch.setenv("POPKIT_TOKEN", "not-used")
    assert main(["tickets", "key", "--event", "fest25", "--key-file", str(key_file), "--expires",
                 "2020-01-01T00:00Z", "--fleet", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--expires 2020-01-01T00:00Z is already past" in err and "cannot reach" not in err
    assert main(["tickets", "key", "--event", "OTHER", "--key-file", str(key_file), "--expires",
                 "2099-01-01T00:00Z", "--fleet", "http://127.0.0.1:9"]) == 2
    assert "holds the key for event FEST25, not OTHER" in capsys.readouterr().err


def test_cli_tickets_key_pushes_through_the_api(fleet, capsys, monkeypatch, tmp_path):
    import socket

    import uvicorn

    from fleet.api.app import create_app
    from fleet.auth.testing import token_as
    from popkit.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(fleet.store, fleet.ingest)
    monkeypatch.setenv("POPKIT_TOKEN", token_as(app, "ops-at-home", "ops"))
    key = EventKey.generate("FEST25")
    key.save(tmp_path / "FEST25.key")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    try:
        wait_until(lambda: server.started, what="uvicorn up")
        assert main(["tickets", "key", "--event", "FEST25", "--key-file", str(tmp_path / "FEST25.key"),
                     "--expires", "2099-01-01T00:00Z", "--fleet", f"http://127.0.0.1:{port}"]) == 0
        assert f"{SCANNER}: config version 1" in capsys.readouterr().out
        [held] = fleet.store.config.desired(SCANNER)["data"]["keys"]
        assert held["event"] == "FEST25" and held["key"] == key.secret.hex()
    finally:
        server.should_exit = True


def test_a_revocation_a_scanner_could_not_take_is_413_and_stores_nothing(fleet):
    known = fleet.api.put("/api/v1/events/FEST25/key", json=key_body(int(time.time()) + 3600))
    assert known.status_code == 200, known.text
    many = [f"T{i:07d}" for i in range(400)]  # ~12 bytes each in the config: past the 4 KB a scanner takes
    r = fleet.api.post("/api/v1/events/FEST25/revocations", json={"tickets": many})
    assert r.status_code == 413 and SCANNER in r.json()["detail"] and "4096" in r.json()["detail"], r.text
    assert fleet.api.get("/api/v1/events/FEST25/revocations").json() == []
    assert "revoked" not in fleet.store.config.desired(SCANNER)["data"]
    assert fleet.api.post("/api/v1/events/FEST25/revocations", json={"tickets": many[:50]}).status_code == 200


def test_a_scanners_config_never_shows_its_keys_and_a_get_change_put_keeps_them(fleet):
    """An event's key forges that event's tickets anywhere: the API shows a scanner's config with its keys
    hidden, and the usual GET, change, PUT (a scanner's mode for the till) keeps the key the door holds."""
    r = fleet.api.put("/api/v1/events/FEST25/key", json=key_body(int(time.time()) + 3600))
    assert r.status_code == 200, r.text
    secret = fleet.store.config.desired(SCANNER)["data"]["keys"][0]["key"]
    shown = fleet.api.get(f"/api/v1/devices/{SCANNER}/config").json()
    assert shown["data"]["keys"][0]["key"] == "(hidden)" and secret not in json.dumps(shown)

    put = fleet.api.put(f"/api/v1/devices/{SCANNER}/config", json={"data": {**shown["data"], "mode": "till"}})
    assert put.status_code == 200, put.text
    assert secret not in put.text and put.json()["data"]["keys"][0]["key"] == "(hidden)"
    held = fleet.store.config.desired(SCANNER)["data"]
    assert held["mode"] == "till" and held["keys"][0]["key"] == secret

    # a hidden key for an event the door holds no key of has nothing to keep: refused, nothing stored
    bad = {**shown["data"], "keys": [{**shown["data"]["keys"][0], "event": "OTHER1"}]}
    r = fleet.api.put(f"/api/v1/devices/{SCANNER}/config", json={"data": bad})
    assert r.status_code == 422 and "data.keys[0]" in r.json()["detail"] and "OTHER1" in r.json()["detail"], r.text
    assert fleet.store.config.desired(SCANNER)["data"] == held
