"""Pushing to devices: commands (QoS 1, never retained) settled by acks, desired config (retained,
versioned), door revocations merged into every scanner's config, and the API's refusals."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from fleet.commands import PayloadTooLarge
from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import MAX_CONFIG_PAYLOAD, Ack, Command, Config, State, decode, encode
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT, Collector, known_event, publisher, wait_until

SCANNER = "demo-scanner-1"
LIGHTS = "demo-lights-1"
BASE = "popkit/v1/demo"


class QosCollector(Collector):
    """A Collector that also records the QoS each message was delivered with."""

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))
            self.qos = getattr(self, "qos", []) + [msg.qos]


def ack(device: str, cmd_id: str, seq: int, status: str = "ok", detail: str | None = None) -> bytes:
    return encode(Ack(boot="ab12cd", seq=seq, ts=1_795_280_030_500 + seq, cmd_id=cmd_id, status=status, detail=detail))


def commands(fleet, device: str = SCANNER) -> dict[str, dict]:
    r = fleet.api.get(f"/api/v1/devices/{device}/commands")
    assert r.status_code == 200, r.text
    return {c["id"]: c for c in r.json()}


# ---------------------------------------------------------------- commands

def test_command_reaches_the_device_with_qos1_not_retained(fleet, broker):
    sub = QosCollector(broker.url, [f"{BASE}/{SCANNER}/cmd"])
    try:
        r = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify", "args": {"seconds": 5}})
        assert r.status_code == 202, r.text
        out = r.json()
        assert out["status"] == "pending" and out["action"] == "identify" and out["args"] == {"seconds": 5}
        assert out["expires"] - out["ts"] == 60_000  # default ttl
        wait_until(lambda: sub.on(f"{SCANNER}/cmd"), what="the command at the device")
        [(t, payload, retained)] = sub.messages
        cmd = decode("cmd", payload)
        assert isinstance(cmd, Command) and cmd.id == out["id"] and cmd.expires == out["expires"]
        assert t == f"{BASE}/{SCANNER}/cmd" and retained is False and sub.qos == [1]
    finally:
        sub.close()
    # Never retained: a subscriber arriving now gets nothing (a retained one would arrive with its SUBACK).
    late = Collector(broker.url, [f"{BASE}/{SCANNER}/cmd"])
    try:
        marker = publisher(broker.url)
        marker.publish(f"{BASE}/{SCANNER}/cmd", b"marker", qos=1).wait_for_publish(5)
        wait_until(lambda: late.on("cmd"), what="the marker")
        assert late.on("cmd") == [b"marker"]
        marker.loop_stop()
    finally:
        late.close()


def test_ack_from_the_device_settles_its_command_and_no_other(fleet, broker):
    cmd_id = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify"}).json()["id"]
    other = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "reboot", "ttl_s": 600}).json()["id"]
    pub = publisher(broker.url)
    try:
        # Another device answering for this command settles nothing.
        pub.publish(f"{BASE}/{LIGHTS}/ack", ack(LIGHTS, cmd_id, 1, "error", "not mine"), qos=1)
        fleet.wait_ingested(1)
        assert commands(fleet)[cmd_id]["status"] == "pending"
        pub.publish(f"{BASE}/{SCANNER}/ack", ack(SCANNER, cmd_id, 1, "ok"), qos=1)
        pub.publish(f"{BASE}/{SCANNER}/ack", ack(SCANNER, other, 2, "rejected", "unknown action"), qos=1)
        got = wait_until(lambda: (c := commands(fleet))[other]["status"] != "pending" and c, what="both acks applied")
        assert got[cmd_id]["status"] == "ok" and got[cmd_id]["acked_ms"] == 1_795_280_030_501
        assert (got[other]["status"], got[other]["detail"]) == ("rejected", "unknown action")
        # A second answer to a settled command changes nothing: the first one wins.
        pub.publish(f"{BASE}/{SCANNER}/ack", ack(SCANNER, cmd_id, 3, "error", "late"), qos=1)
        fleet.wait_ingested(4)
        assert commands(fleet)[cmd_id]["status"] == "ok"
    finally:
        pub.loop_stop()
    newest = fleet.api.get(f"/api/v1/devices/{SCANNER}/commands", params={"limit": 1}).json()
    assert [c["id"] for c in newest] == [other]


def test_unanswered_command_shows_expired_after_its_expiry(fleet):
    out = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify", "ttl_s": 5}).json()
    assert fleet.store.commands.for_device(SCANNER, now=out["expires"])[0]["status"] == "pending"
    late = fleet.store.commands.for_device(SCANNER, now=out["expires"] + 1)[0]
    assert late["status"] == "expired" and "expired" in late["detail"]


# ---------------------------------------------------------------- desired config

def test_a_command_asked_while_the_device_was_away_is_sent_again_when_it_comes_online(fleet, broker):
    # Nobody subscribed (a kit's uplink cut before its bridge ever logged in): the first publish is lost.
    live = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify", "ttl_s": 600}).json()
    gone = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify", "ttl_s": 1}).json()
    time.sleep(1.2)
    answered = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify"}).json()
    sub = QosCollector(broker.url, [f"{BASE}/{SCANNER}/cmd"])
    pub = publisher(broker.url)
    try:
        pub.publish(f"{BASE}/{SCANNER}/ack", ack(SCANNER, answered["id"], 1), qos=1)
        wait_until(lambda: commands(fleet)[answered["id"]]["status"] == "ok", what="the answered command settled")
        birth = State(boot="ab12cd", seq=0, ts=1_795_280_030_000, online=True, role="scanner")
        pub.publish(f"{BASE}/{SCANNER}/state", encode(birth), qos=1, retain=True)
        wait_until(lambda: len(sub.on(f"{SCANNER}/cmd")) >= 2, what="the unanswered commands sent again")
        time.sleep(0.3)
        sent = [decode("cmd", p) for p in sub.on(f"{SCANNER}/cmd")]
        # both unanswered ones, the expired one too (the device answers it "expired" and never runs it),
        # the answered one not; the same ids, expiries and args as first sent
        assert [(c.id, c.expires) for c in sent] == [(live["id"], live["expires"]), (gone["id"], gone["expires"])]
        assert sub.qos == [1, 1]
        # a state that is not a birth (a death, a re-stated config version) sends nothing again
        pub.publish(f"{BASE}/{SCANNER}/state", encode(State(boot="ab12cd", seq=0, ts=1_795_280_030_000,
                                                            online=False, role="scanner", reason="lwt")),
                    qos=1, retain=True)
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{SCANNER}").json().get("online") is False,
                   what="the death stored")
        time.sleep(0.3)
        assert len(sub.on(f"{SCANNER}/cmd")) == 2
    finally:
        sub.close()
        pub.loop_stop()


def test_config_is_retained_versioned_and_reaches_a_late_subscriber(fleet, broker, collect):
    first = fleet.api.put(f"/api/v1/devices/{LIGHTS}/config", json={"data": {"scene": "warm"}})
    assert first.status_code == 200, first.text
    second = fleet.api.put(f"/api/v1/devices/{LIGHTS}/config", json={"data": {"scene": "cool"}}).json()
    assert (first.json()["version"], second["version"]) == (1, 2) and second["data"] == {"scene": "cool"}
    late = collect(f"{BASE}/{LIGHTS}/config")  # subscribes after both PUTs
    wait_until(lambda: late.on(f"{LIGHTS}/config"), what="the retained config")
    [(_t, payload, retained)] = late.messages
    cfg = decode("config", payload)
    assert retained is True and isinstance(cfg, Config) and (cfg.version, cfg.data) == (2, {"scene": "cool"})
    got = fleet.api.get(f"/api/v1/devices/{LIGHTS}/config").json()
    assert (got["version"], got["data"], got["applied_version"], got["in_sync"]) == (2, {"scene": "cool"}, None, False)


def test_device_state_with_the_desired_version_is_in_sync(fleet, broker):
    assert fleet.api.get(f"/api/v1/devices/{LIGHTS}/config").json()["version"] is None
    v = fleet.api.put(f"/api/v1/devices/{LIGHTS}/config", json={"data": {"scene": "warm"}}).json()["version"]
    pub = publisher(broker.url)
    try:
        old = State(boot="ab12cd", seq=0, ts=1_000, online=True, role="lighting", config_version=v - 1 if v > 1 else 0)
        pub.publish(f"{BASE}/{LIGHTS}/state", encode(old), qos=1, retain=True)
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}/config").json()["applied_version"] is not None,
                   what="the first state")
        assert fleet.api.get(f"/api/v1/devices/{LIGHTS}/config").json()["in_sync"] is False
        new = State(boot="ab12cd", seq=0, ts=1_000, online=True, role="lighting", config_version=v)
        pub.publish(f"{BASE}/{LIGHTS}/state", encode(new), qos=1, retain=True)
        got = wait_until(lambda: (g := fleet.api.get(f"/api/v1/devices/{LIGHTS}/config").json())["in_sync"] and g,
                         what="in_sync after the device reports the version")
        assert got["applied_version"] == got["version"] == v
    finally:
        pub.loop_stop()


def test_next_version_is_above_what_the_device_applied(fleet, broker):
    """A rebuilt fleet database must not reuse a version the device already applied (it would ignore it)."""
    fleet.store.ledger.write_batch(Batch(states=[(LIGHTS, State(boot="ab12cd", seq=0, ts=1, online=True, role="lighting",
                                                         config_version=41))]))
    assert fleet.api.put(f"/api/v1/devices/{LIGHTS}/config", json={"data": {}}).json()["version"] == 42


# ---------------------------------------------------------------- revocations

def test_revocations_merge_into_every_scanner_and_keep_other_keys(fleet, broker, collect):
    fleet.api.put(f"/api/v1/devices/{SCANNER}/config", json={"data": {"beep": False, "revoked": {"EVT-2": ["Z9"]}}})
    assert fleet.api.post("/api/v1/events/EVT-1/revocations", json={"tickets": ["A1"]}).status_code == 404
    known_event(fleet.api, "EVT-1")
    r = fleet.api.post("/api/v1/events/EVT-1/revocations", json={"tickets": ["A1", "B2", "A1"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"event_id": "EVT-1", "tickets": ["A1", "B2"],
                        "pushed": [{"device_id": SCANNER, "version": 2, "revoked": ["A1", "B2"]}]}
    r = fleet.api.post("/api/v1/events/EVT-1/revocations", json={"tickets": ["C3", "B2"]})
    assert r.json()["pushed"] == [{"device_id": SCANNER, "version": 3, "revoked": ["A1", "B2", "C3"]}]
    late = collect(f"{BASE}/{SCANNER}/config")
    wait_until(lambda: late.on(f"{SCANNER}/config"), what="the scanner's retained config")
    [(_t, payload, retained)] = late.messages
    cfg = decode("config", payload)
    assert retained and cfg.version == 3
    assert cfg.data == {"beep": False, "revoked": {"EVT-2": ["Z9"], "EVT-1": ["A1", "B2", "C3"]}}
    # Only scanners: the lighting controller got no config.
    assert fleet.api.get(f"/api/v1/devices/{LIGHTS}/config").json()["version"] is None


def test_concurrent_revocations_lose_nothing(fleet):
    def revoke(i: int) -> None:
        fleet.store.config.update([SCANNER], lambda old: {"revoked": {"E": (old or {}).get("revoked", {}).get("E", [])
                                                                          + [f"T{i}"]}})

    threads = [threading.Thread(target=revoke, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = fleet.store.config.desired(SCANNER)
    assert got["version"] == 8 and sorted(got["data"]["revoked"]["E"]) == sorted(f"T{i}" for i in range(8))


# ---------------------------------------------------------------- refusals

def test_unknown_device_is_404_everywhere(fleet):
    assert fleet.api.post("/api/v1/devices/nope/commands", json={"action": "identify"}).status_code == 404
    assert fleet.api.get("/api/v1/devices/nope/commands").status_code == 404
    r = fleet.api.put("/api/v1/devices/nope/config", json={"data": {}})
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert fleet.api.get("/api/v1/devices/nope/config").status_code == 404


@pytest.mark.parametrize("path,body,field", [
    (f"/api/v1/devices/{SCANNER}/commands", {"action": "Not An Action"}, "action"),
    (f"/api/v1/devices/{SCANNER}/commands", {"args": {}}, "action"),
    (f"/api/v1/devices/{SCANNER}/commands", {"action": "identify", "ttl_s": 0}, "ttl_s"),
    (f"/api/v1/devices/{SCANNER}/commands", {"action": "identify", "ttl_s": 86_401}, "ttl_s"),
    (f"/api/v1/devices/{SCANNER}/commands", {"action": "identify", "args": [1]}, "args"),
    (f"/api/v1/devices/{SCANNER}/commands", {"action": "identify", "expires": 5}, "expires"),
    (f"/api/v1/devices/{SCANNER}/config", {"data": "warm"}, "data"),
    (f"/api/v1/devices/{SCANNER}/config", {"version": 3, "data": {}}, "version"),
    ("/api/v1/events/EVT-1/revocations", {"tickets": ["lower"]}, "tickets"),
    ("/api/v1/events/EVT-1/revocations", {"tickets": []}, "tickets"),
    ("/api/v1/events/evt-1/revocations", {"tickets": ["A1"]}, "event_id"),
])
def test_bad_bodies_are_422_naming_the_field(fleet, path, body, field):
    r = fleet.api.request("PUT" if path.endswith("/config") else "POST", path, json=body)
    assert r.status_code == 422, r.text
    assert any(field in err["loc"] for err in r.json()["detail"]), r.text
    assert fleet.api.get(f"/api/v1/devices/{SCANNER}/commands").json() == []
    assert fleet.api.get(f"/api/v1/devices/{SCANNER}/config").json()["version"] is None


def test_oversize_payloads_are_413_and_change_nothing(fleet, collect):
    sub = collect(f"{BASE}/{SCANNER}/#")
    r = fleet.api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify", "args": {"x": "y" * 4096}})
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    assert fleet.api.get(f"/api/v1/devices/{SCANNER}/commands").json() == []
    fleet.api.put(f"/api/v1/devices/{SCANNER}/config", json={"data": {"keep": 1}})
    r = fleet.api.put(f"/api/v1/devices/{SCANNER}/config", json={"data": {"x": "y" * MAX_CONFIG_PAYLOAD}})
    assert r.status_code == 413 and str(MAX_CONFIG_PAYLOAD) in r.json()["detail"]
    many = [f"{i:016d}" for i in range(1000)]
    known_event(fleet.api, "EVT-1")
    for _ in range(4):  # 4 x 1000 ids of 19 bytes each pass 64 KiB
        r = fleet.api.post("/api/v1/events/EVT-1/revocations", json={"tickets": many})
        if r.status_code != 200:
            break
        many = [f"{int(t) + 1000:016d}" for t in many]
    assert r.status_code == 413, r.text
    got = fleet.api.get(f"/api/v1/devices/{SCANNER}/config").json()
    stored = Config(version=got["version"], ts=got["ts"], data=got["data"])
    assert got["version"] <= 4 and len(encode(stored)) <= MAX_CONFIG_PAYLOAD
    wait_until(lambda: len(sub.on("/config")) == got["version"], what="every accepted config published")
    assert decode("config", sub.on("/config")[-1]).version == got["version"]


def test_without_a_broker_connection_pushing_is_503(tmp_path):
    from fleet.api.app import create_app
    from fleet.auth.testing import ops_client

    store = Store.open(f"sqlite:///{tmp_path / 'nobroker.db'}")
    try:
        store.registry.register_kit(load_manifest(DEMO_KIT))
        api = ops_client(create_app(store))
        r = api.post(f"/api/v1/devices/{SCANNER}/commands", json={"action": "identify"})
        assert r.status_code == 503 and "broker" in r.json()["detail"]
        assert api.get(f"/api/v1/devices/{SCANNER}/config").json()["in_sync"] is True  # nothing desired
    finally:
        store.close()


# ---------------------------------------------------------------- the CLI, against a served fleet

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_tickets_revoke_pushes_through_the_api(fleet, collect, capsys, monkeypatch):
    import uvicorn

    from fleet.api.app import create_app
    from fleet.auth.testing import token_as
    from popkit.cli import main

    port = _free_port()
    app = create_app(fleet.store, fleet.ingest)
    monkeypatch.delenv("POPKIT_TOKEN", raising=False)
    assert main(["tickets", "revoke", "--event", "evt-1", "a1", "--fleet", "http://127.0.0.1:9"]) == 2
    assert "POPKIT_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("POPKIT_TOKEN", token_as(app, "crew-at-the-door", "crew", kits=["demo"]))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, what="uvicorn up")
        known_event(fleet.api, "EVT-1")
        sub = collect(f"{BASE}/{SCANNER}/config")
        assert main(["tickets", "revoke", "--event", "evt-1", "a1", "B2", "--fleet", f"http://127.0.0.1:{port}"]) == 0
        assert f"{SCANNER}: config version 1" in capsys.readouterr().out
        wait_until(lambda: sub.on("/config"), what="the pushed config")
        assert json.loads(sub.on("/config")[0])["data"] == {"revoked": {"EVT-1": ["A1", "B2"]}}
        assert main(["tickets", "revoke", "--event", "EVT-1", "not-an-id", "--fleet", f"http://127.0.0.1:{port}"]) == 2
        assert "422" in capsys.readouterr().err
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------- PostgreSQL

def test_postgres_commands_acks_and_config_versions(pg_url):
    store = Store.open(pg_url)
    try:
        store.registry.register_kit(load_manifest(DEMO_KIT))
        cmd = Command(id="c0ffee01", ts=1_000, expires=61_000, action="identify")
        store.commands.add(SCANNER, cmd)
        stray = Ack(boot="ab12cd", seq=1, ts=2_000, cmd_id="c0ffee01", status="error")
        good = Ack(boot="ab12cd", seq=1, ts=2_500, cmd_id="c0ffee01", status="ok", detail="blinked")
        store.ledger.write_batch(Batch(ledger=[LedgerMessage(LIGHTS, "ack", stray, encode(stray).decode())]))
        assert store.commands.get("c0ffee01", now=3_000)["status"] == "pending"
        store.ledger.write_batch(Batch(ledger=[LedgerMessage(SCANNER, "ack", good, encode(good).decode())]))
        got = store.commands.get("c0ffee01", now=99_000)
        assert (got["status"], got["detail"], got["acked_ms"]) == ("ok", "blinked", 2_500)

        assert [c.version for _d, c in store.config.update([SCANNER], lambda old: {"a": 1})] == [1]
        assert store.config.update([SCANNER], lambda old: {**old, "b": 2})[0][1].data == {"a": 1, "b": 2}
        store.ledger.write_batch(Batch(states=[(SCANNER, State(boot="ab12cd", seq=0, ts=5, online=True, role="scanner",
                                                        config_version=2))]))
        assert store.config.desired(SCANNER)["in_sync"] is True
        with pytest.raises(PayloadTooLarge):
            store.config.update([SCANNER], lambda old: {"x": "y" * MAX_CONFIG_PAYLOAD})
        assert store.config.desired(SCANNER)["version"] == 2

        # Row locks: concurrent merges on PostgreSQL serialise instead of overwriting each other.
        def merge(i: int) -> None:
            store.config.update([SCANNER, LIGHTS], lambda old: {**(old or {}), f"k{i}": i})

        threads = [threading.Thread(target=merge, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = store.config.desired(SCANNER)
        assert final["version"] == 10 and {f"k{i}" for i in range(8)} <= set(final["data"])
        assert store.config.desired(LIGHTS)["version"] == 8
    finally:
        store.close()


def test_republish_sends_every_stored_config_again(fleet, collect):
    fleet.api.put(f"/api/v1/devices/{LIGHTS}/config", json={"data": {"scene": "warm"}})
    known_event(fleet.api, "EVT-1")
    fleet.api.post("/api/v1/events/EVT-1/revocations", json={"tickets": ["A1"]})
    sub = collect(f"{BASE}/+/config")
    wait_until(lambda: len(sub.messages) == 2, what="the two retained configs")
    assert fleet.api.app.state.publisher.republish_configs() == 2
    wait_until(lambda: len(sub.messages) == 4, what="both configs published again")
    again = {t.split("/")[3]: decode("config", p).version for t, p, _r in sub.messages[2:]}
    assert again == {LIGHTS: 1, SCANNER: 1}


def test_the_audit_log_says_who_sent_what_to_which_device_and_how_it_ended(fleet, broker, collect):
    from fleet.alerts import AlertConfig, evaluate

    from fleet.auth.testing import client_as

    seen = collect("popkit/v1/demo/demo-lights-1/cmd")
    # Who asked is the signed-in user: a "by" in the body is ignored.
    anna, bo = client_as(fleet.api.app, "ops-anna"), client_as(fleet.api.app, "ops-bo")
    r = anna.post("/api/v1/devices/demo-lights-1/commands", json={"action": "identify", "by": "ops-bob"})
    assert r.status_code == 202 and r.json()["requested_by"] == "ops-anna"
    cmd_id = r.json()["id"]
    wait_until(lambda: seen.on("/cmd"), what="the command at the device")
    other = fleet.api.post("/api/v1/devices/demo-printer/commands", json={"action": "identify"}).json()
    assert other["requested_by"] == "ops-test"
    log = fleet.api.get("/api/v1/audit").json()
    assert {(e["by"], e["what"], e["target"]) for e in log[:2]} == {("ops-test", "command identify", "demo-printer"),
                                                                    ("ops-anna", "command identify", "demo-lights-1")}
    [mine] = [e for e in log if e["ref"] == cmd_id]
    assert mine["result"] == "pending"

    # People's hands on alerts are in the same log; the evaluator's own resolutions ('auto') are not.
    from kits.contract import PrinterTelemetry, encode

    pub = publisher(broker.url)
    pub.publish("popkit/v1/demo/demo-printer/telemetry",
                encode(PrinterTelemetry(boot="ab01", seq=1, ts=int(time.time() * 1000), online=True, paper="out")),
                qos=1).wait_for_publish(5)
    pub.loop_stop()
    wait_until(lambda: evaluate(fleet.store, None, AlertConfig()) and fleet.api.get("/api/v1/alerts?rule=paper_out").json()["items"],
               what="a paper-out alert")
    [alert] = fleet.api.get("/api/v1/alerts?rule=paper_out").json()["items"]
    assert bo.post(f"/api/v1/alerts/{alert['id']}/acknowledge", json={}).status_code == 200
    top = fleet.api.get("/api/v1/audit?limit=1").json()[0]
    assert (top["by"], top["what"], top["target"], top["ref"]) == ("ops-bo", "alert acknowledged", "demo-printer", str(alert["id"]))
    older = fleet.api.get(f"/api/v1/audit?before={log[0]['ts']}").json()
    assert all(e["ts"] < log[0]["ts"] for e in older)
    assert fleet.api.post("/api/v1/devices/demo-printer/commands", json={"action": "identify", "by": ""}).status_code == 422
