"""Device and kit health: the rules (pure), then end to end through a real broker and the fleet's API."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from fleet.health import DeviceFacts, HealthConfig, device_health, heartbeat_timeout_s, kit_health, worst
from kits.contract import BatteryTelemetry, DeviceTelemetry, Event, PrinterTelemetry, State, encode
from tests.conftest import publisher, start_fleet, wait_until

NOW = 1_800_000_000_000
CFG = HealthConfig(heartbeat_timeout_s=90)


def dev(role: str = "scanner", online: bool = True, seen_s_ago: float | None = 5, **latest) -> dict:
    return dict(id="d1", kit_id="k", role=role, online=online, boot="b1" if seen_s_ago is not None else None,
                fw="1.2.3", config_version=None, last_seen_ms=None if seen_s_ago is None else NOW - int(seen_s_ago * 1000),
                latest=latest)


def codes(h: dict) -> set[str]:
    return {r["code"] for r in h["reasons"]}


# ---------------------------------------------------------------- rules


def test_an_online_device_that_went_quiet_without_a_will_is_silent_after_the_timeout():
    assert device_health(dev(seen_s_ago=10, device={"uptime_s": 5}), None, CFG, NOW)["status"] == "ok"
    h = device_health(dev(seen_s_ago=91, device={"uptime_s": 5}), None, CFG, NOW)
    assert h["status"] == "silent" and h["since_seen_s"] == 91 and h["heartbeat_timeout_s"] == 90
    # A slow telemetry period stretches the timeout (3 periods), a fast one never shortens it.
    assert heartbeat_timeout_s(CFG, 60) == 180 and heartbeat_timeout_s(CFG, 2) == 90
    assert device_health(dev(seen_s_ago=120), None, CFG, NOW, telemetry_s=60)["status"] == "ok"


def test_a_panel_sends_no_telemetry_so_it_is_never_silent():
    assert device_health(dev(role="panel", seen_s_ago=3600), None, CFG, NOW)["status"] == "ok"


def test_offline_by_its_will_and_unknown_when_never_heard_from():
    assert device_health(dev(online=False, seen_s_ago=5), None, CFG, NOW)["status"] == "offline"
    h = device_health(dev(online=False, seen_s_ago=None), None, CFG, NOW)
    assert h["status"] == "unknown" and h["last_seen_ms"] is None and h["since_seen_s"] is None


def test_printer_paper_and_cover_make_it_degraded():
    out = device_health(dev(role="printer", printer={"online": True, "paper": "out", "cover_open": True}), None, CFG, NOW)
    assert out["status"] == "degraded" and codes(out) == {"paper_out", "cover_open"}
    near = device_health(dev(role="printer", printer={"online": True, "paper": "near_end"}), None, CFG, NOW)
    assert codes(near) == {"paper_near_end"} and near["reasons"][0]["severity"] == "warning"
    off = device_health(dev(role="printer", printer={"online": False, "paper": "unknown", "error": True}), None, CFG, NOW)
    assert codes(off) == {"printer_not_answering", "printer_error"}
    fine = device_health(dev(role="printer", printer={"online": True, "paper": "ok"}), None, CFG, NOW)
    assert fine["status"] == "ok" and fine["reasons"] == []


def test_low_soc_protection_flags_and_alarm_make_a_battery_degraded():
    low = device_health(dev(role="powerbank", battery={"v": 11.8, "i": -3, "soc": 15}), None, CFG, NOW)
    assert low["status"] == "degraded" and codes(low) == {"battery_low"} and low["reasons"][0]["severity"] == "warning"
    empty = device_health(dev(role="powerbank", battery={"v": 11.1, "i": -3, "soc": 5}), None, CFG, NOW)
    assert empty["reasons"][0]["severity"] == "fault"
    prot = device_health(dev(role="powerbank", battery={"v": 13.0, "i": 0, "soc": 90,
                                                        "protection": ["cell_overvoltage", "charge_overtemp"]}),
                         None, CFG, NOW)
    assert codes(prot) == {"bms_protection"} and "cell_overvoltage, charge_overtemp" in prot["reasons"][0]["what"]
    alarm = device_health(dev(role="powerbank", battery={"v": 11.0, "i": -3, "soc": 50, "alarm": "low_voltage"}),
                          None, CFG, NOW)
    assert codes(alarm) == {"battery_alarm"}
    assert device_health(dev(role="powerbank", battery={"v": 12.8, "i": -3, "soc": 50}), None, CFG, NOW)["status"] == "ok"


def test_a_forecast_short_of_the_event_end_degrades_the_battery():
    fc = {"lasts_until_end": False, "margin_min": -42.0}
    h = device_health(dev(role="powerbank", battery={"v": 12.5, "i": -9, "soc": 50}), None, CFG, NOW, battery_forecast=fc)
    assert codes(h) == {"battery_short"} and "42 min" in h["reasons"][0]["what"]


def test_gaps_rejections_and_an_unapplied_config_are_reasons():
    facts = DeviceFacts(gaps=7, gaps_this_boot=2, rejected=3, desired_version=4, desired_ts_ms=NOW - 120_000)
    h = device_health(dev(), facts, CFG, NOW)
    assert h["status"] == "degraded" and codes(h) == {"sequence_gaps", "rejected_messages", "config_behind"}
    assert (h["gaps"], h["gaps_this_boot"], h["rejected"]) == (7, 2, 3)
    # Gaps of an earlier boot are history, not a reason; a config pushed a moment ago is not late yet.
    fresh = DeviceFacts(gaps=7, gaps_this_boot=0, desired_version=4, desired_ts_ms=NOW - 5_000)
    assert device_health(dev(), fresh, CFG, NOW)["status"] == "ok"
    applied = dict(dev(), config_version=4)
    assert device_health(applied, DeviceFacts(desired_version=4, desired_ts_ms=0), CFG, NOW)["status"] == "ok"


def test_a_silent_or_offline_device_keeps_its_reasons_but_not_the_degraded_status():
    h = device_health(dev(seen_s_ago=500, printer={"online": True, "paper": "out"}), None, CFG, NOW)
    assert h["status"] == "silent" and codes(h) == {"paper_out"}


def test_a_kit_is_as_healthy_as_its_worst_device():
    hs = [{"status": s} for s in ("ok", "degraded", "unknown", "ok")]
    assert kit_health(hs) == {"status": "degraded",
                              "counts": {"ok": 2, "unknown": 1, "degraded": 1, "silent": 0, "offline": 0}}
    assert kit_health(hs + [{"status": "silent"}])["status"] == "silent"
    assert kit_health(hs + [{"status": "silent"}, {"status": "offline"}])["status"] == "offline"
    assert kit_health([])["status"] == "unknown"
    assert worst(["ok", "ok"]) == "ok"


# ---------------------------------------------------------------- through the broker and the API

MANIFEST = """
id = "hk"
name = "Health kit"
agent = "hk-agent"

[event]
doors_open = {doors}
ends = {ends}

[[devices]]
id = "hk-shunt"
role = "powerbank"
model = "victron-smartshunt"
bus = "serial:/dev/ttyUSB0"
telemetry_s = 2

[[devices]]
id = "hk-bms"
role = "powerbank"
model = "jbd"
bus = "ble:AA:BB:CC:DD:EE:01"

[[devices]]
id = "hk-printer"
role = "printer"
bus = "serial:/dev/ttyUSB1"

[[devices]]
id = "hk-scanner"
role = "scanner"
model = "esp32-gm65"
telemetry_s = 0.2
"""


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture
def kit_fleet(broker, tmp_path, monkeypatch):
    """The fleet with the health kit (event ending in 3 h) and a heartbeat timeout of 1 s."""
    monkeypatch.setenv("POPKIT_HEARTBEAT_TIMEOUT_S", "1")
    start = datetime.now(timezone.utc).replace(microsecond=0)
    path = tmp_path / "hk.toml"
    path.write_text(MANIFEST.format(doors=(start - timedelta(hours=1)).isoformat(),
                                    ends=(start + timedelta(hours=3)).isoformat()))
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=[path])
    f.ends_ms = int((start + timedelta(hours=3)).timestamp() * 1000)
    yield f
    f.ingest.stop()
    f.store.close()


def test_kit_shows_worst_status_readiness_and_a_forecast_per_power_bank(kit_fleet, broker, tmp_path):
    from agent.link import FleetLink

    fleet = kit_fleet
    link = FleetLink("hk", "hk-agent", "agent", broker.url, tmp_path / "outbox.db", fw="0.9.1",
                     hosted={"hk-shunt": "powerbank", "hk-bms": "powerbank", "hk-printer": "printer"}).start()
    try:
        t_end = now_ms() - 5_000
        sent = 0
        # Ten minutes of history, sent now with the times they were taken (no sleeping):
        # the shunt falls 12 %/h to 60 % (5 h left), the BMS has 10 Ah left at 5 A (2 h left).
        for k in range(31):
            ts = t_end - (30 - k) * 20_000
            soc = 60 + 12 * (30 - k) * 20 / 3600
            link.emit("hk-shunt", "telemetry", BatteryTelemetry, ts=ts, source="vedirect", v=12.5, i=-4.0, p=-50.0,
                      soc=round(soc, 2), ttg=280)
            link.emit("hk-bms", "telemetry", BatteryTelemetry, ts=ts, source="jbd", v=13.1, i=-5.0,
                      soc=50.0, remaining_ah=round(10 + 5 * (30 - k) * 20 / 3600, 3), capacity_ah=20.0)
            sent += 2
        link.emit("hk-printer", "telemetry", PrinterTelemetry, online=True, paper="out")
        link.emit("hk-agent", "event", Event, ts=now_ms() - 3_600_000, kind="readiness",
                  data={"status": "ready", "problems": [], "took_ms": 900})
        link.emit("hk-agent", "event", Event, kind="readiness",
                  data={"status": "degraded", "took_ms": 4200,
                        "problems": [{"device": "hk-printer", "severity": "warning", "what": "printer out of paper",
                                      "fix": "load a roll"}]})
        fleet.wait_ingested(sent + 3)
        kit = wait_until(lambda: (k := fleet.api.get("/api/v1/kits/hk").json())["devices_online"] == 4 and k,
                         what="agent and hosted devices online")

        assert kit["event"]["ends_ms"] == fleet.ends_ms
        assert kit["readiness"]["status"] == "degraded" and kit["readiness"]["device_id"] == "hk-agent"
        assert kit["readiness"]["took_ms"] == 4200
        assert kit["readiness"]["problems"] == [{"device": "hk-printer", "severity": "warning",
                                                 "what": "printer out of paper", "fix": "load a roll"}]

        by_dev = {d["id"]: d["health"] for d in kit["devices"]}
        assert by_dev["hk-printer"]["status"] == "degraded" and [r["code"] for r in by_dev["hk-printer"]["reasons"]] == ["paper_out"]
        assert by_dev["hk-scanner"]["status"] == "unknown"
        assert by_dev["hk-agent"]["fw"] == "0.9.1" and by_dev["hk-agent"]["last_seen_ms"] is not None
        assert kit["health"]["status"] == "degraded"
        assert kit["health"]["counts"] == {"ok": 2, "unknown": 1, "degraded": 2, "silent": 0, "offline": 0}

        bats = {b["device_id"]: b for b in kit["batteries"]}
        shunt, bms = bats["hk-shunt"], bats["hk-bms"]
        assert (shunt["soc"], shunt["v"], shunt["i"], shunt["p"]) == (60.0, 12.5, -4.0, -50.0)
        assert shunt["method"] == "soc_slope" and shunt["hours_left"] == pytest.approx(5.0, rel=0.02)
        assert shunt["device_ttg_min"] == 280 and shunt["device_ttg_h"] == pytest.approx(4.667, abs=0.01)
        assert shunt["lasts_until_end"] is True and shunt["margin_min"] == pytest.approx(120, abs=4)
        assert bms["method"] == "remaining_ah" and bms["hours_left"] == pytest.approx(2.0, rel=0.01)
        assert bms["lasts_until_end"] is False and bms["margin_min"] == pytest.approx(-60, abs=4)
        assert bms["p"] == pytest.approx(-65.5)  # v*i: a BMS reports no power
        assert by_dev["hk-bms"]["status"] == "degraded"
        assert [r["code"] for r in by_dev["hk-bms"]["reasons"]] == ["battery_short"]

        listed = {k["id"]: k for k in fleet.api.get("/api/v1/kits").json()["items"]}
        assert listed["hk"]["health"] == kit["health"] and listed["hk"]["readiness"] == kit["readiness"]
        assert [b["device_id"] for b in listed["hk"]["batteries"]] == ["hk-bms", "hk-shunt"]

        device = fleet.api.get("/api/v1/devices/hk-bms").json()
        assert device["battery_forecast"]["hours_left"] == pytest.approx(2.0, rel=0.01)
        assert device["health"]["status"] == "degraded"
        assert fleet.api.get("/api/v1/devices/hk-printer").json()["battery_forecast"] is None
    finally:
        link.stop()


def test_a_device_that_stops_sending_without_a_will_turns_silent_then_offline_by_its_will(kit_fleet, broker):
    fleet = kit_fleet
    pub = publisher(broker.url)
    base = "popkit/v1/hk/hk-scanner/"
    born = now_ms()
    pub.publish(base + "state", encode(State(boot="5ca101", seq=0, ts=born, online=True, role="scanner", fw="2.0.0")),
                qos=1, retain=True).wait_for_publish(5)
    for seq in (1, 2, 5):  # 3 and 4 never arrive
        pub.publish(base + "telemetry", encode(DeviceTelemetry(boot="5ca101", seq=seq, ts=now_ms(), uptime_s=seq)),
                    qos=1).wait_for_publish(5)
    pub.publish(base + "telemetry", b'{"boot":"5ca101","seq":6,"ts":1,"kind":"device"}', qos=1).wait_for_publish(5)
    fleet.wait_ingested(3)
    wait_until(lambda: fleet.ingest.metrics.rejected.get("invalid") == 1, what="the bad reading rejected")

    h = fleet.api.get("/api/v1/devices/hk-scanner").json()["health"]
    assert h["status"] == "degraded" and h["fw"] == "2.0.0" and h["heartbeat_timeout_s"] == 1
    assert (h["gaps"], h["gaps_this_boot"], h["rejected"]) == (2, 2, 1)
    assert {r["code"] for r in h["reasons"]} == {"sequence_gaps", "rejected_messages"}

    # No Will: the broker still thinks it is connected (its state stays online), but nothing comes.
    h = wait_until(lambda: (x := fleet.api.get("/api/v1/devices/hk-scanner").json())["health"]["status"] == "silent" and x,
                   timeout=5, what="scanner silent after the 1 s heartbeat timeout")
    assert h["online"] is True and h["health"]["since_seen_s"] >= 1
    kit = fleet.api.get("/api/v1/kits/hk").json()
    assert kit["health"]["status"] == "silent" and kit["health"]["counts"]["silent"] == 1

    # It speaks again (the missing two with it): fine; then its Will arrives: offline.
    for seq in (3, 4, 7):
        pub.publish(base + "telemetry", encode(DeviceTelemetry(boot="5ca101", seq=seq, ts=now_ms(), uptime_s=seq)),
                    qos=1).wait_for_publish(5)
    fleet.wait_ingested(6)
    h = fleet.api.get("/api/v1/devices/hk-scanner").json()["health"]
    assert h["status"] == "degraded" and h["gaps_this_boot"] == 1  # seq 6 was the rejected one
    pub.publish(base + "state", encode(State(boot="5ca101", seq=0, ts=born, online=False, role="scanner", reason="lwt")),
                qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: fleet.api.get("/api/v1/devices/hk-scanner").json()["health"]["status"] == "offline",
               what="scanner offline by its Will")
    pub.loop_stop()


def test_the_kit_list_costs_the_same_few_queries_for_one_kit_or_many(tmp_path):
    from fleet.auth.testing import ops_client
    from sqlalchemy import event

    from fleet.api.app import create_app
    from fleet.store import Store
    from kits.manifest import parse_manifest

    store = Store.open(f"sqlite:///{tmp_path / 'q.db'}")
    api = ops_client(create_app(store))
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))

    def queries_for_list(kits: int) -> int:
        for n in range(kits):
            store.registry.register_kit(parse_manifest(
                f'id = "k{n}"\nname = "K{n}"\nagent = "k{n}-agent"\n'
                f'[[devices]]\nid = "k{n}-power"\nrole = "powerbank"\nbus = "serial:/dev/ttyUSB0"\n'
                f'[[devices]]\nid = "k{n}-scan"\nrole = "scanner"\n'))
        seen.clear()
        assert len(api.get("/api/v1/kits", params={"limit": 1000}).json()["items"]) >= kits
        return len(seen)

    few, many = queries_for_list(1), queries_for_list(40)
    assert few == many and many <= 10
    store.close()


def test_health_queries_run_on_postgresql(pg_url):
    from fleet.ledger import Batch, LedgerMessage
    from fleet.store import Store
    from kits.manifest import parse_manifest

    store = Store.open(pg_url)
    try:
        ends = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=1)
        store.registry.register_kit(parse_manifest(MANIFEST.format(doors=(ends - timedelta(hours=4)).isoformat(),
                                                          ends=ends.isoformat())))
        t_end = now_ms() - 1000
        ledger = []
        for k in range(1, 13):
            m = BatteryTelemetry(boot="abcd01", seq=k, ts=t_end - (12 - k) * 30_000, source="jbd", v=13.0, i=-5.0,
                                 soc=40.0, remaining_ah=4.0)
            ledger.append(LedgerMessage("hk-bms", "telemetry", m, encode(m).decode()))
        ev = Event(boot="abcd01", seq=1, ts=t_end, kind="readiness", data={"status": "not_ready", "problems": []})
        ledger.append(LedgerMessage("hk-agent", "event", ev, encode(ev).decode()))
        store.ledger.write_batch(Batch(ledger=ledger, states=[
            ("hk-agent", State(boot="abcd01", seq=0, ts=1, online=True, role="agent")),
            ("hk-bms", State(boot="abcd01", seq=0, ts=1, online=True, role="powerbank"))]))
        (kit,) = store.health.kits_with_health(HealthConfig(), kit_id="hk")
        assert kit["readiness"]["status"] == "not_ready"
        bms = next(b for b in kit["batteries"] if b["device_id"] == "hk-bms")
        assert bms["method"] == "remaining_ah" and bms["hours_left"] == pytest.approx(0.8)
        assert bms["points"] == 12 and bms["lasts_until_end"] is False and bms["margin_min"] == pytest.approx(-12, abs=1)
        dev = store.health.device_with_health("hk-bms", HealthConfig())
        assert dev["battery_forecast"]["hours_left"] == pytest.approx(0.8) and dev["health"]["status"] == "degraded"
    finally:
        store.close()


def test_a_fleet_started_without_the_kit_forecasts_against_the_window_registered_through_the_api(broker, tmp_path):
    """No --kit anywhere: ops register the kit, event window and all, through one fleet process's
    API; another process on the same database (a second worker, started later, that never saw the
    manifest) shows the power bank lasting until the event's end."""
    from agent.link import FleetLink
    from fleet.api.app import create_app
    from fleet.auth.testing import ops_client
    from fleet.settings import FleetSettings
    from fleet.store import Store

    start = datetime.now(timezone.utc).replace(microsecond=0)
    ends_ms = int((start + timedelta(hours=3)).timestamp() * 1000)
    manifest = MANIFEST.format(doors=(start - timedelta(hours=1)).isoformat(), ends=(start + timedelta(hours=3)).isoformat())
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    first = start_fleet(broker.url, db_url, kits=[])
    other = Store.open(db_url)
    link = None
    try:
        r = first.api.put("/api/v1/kits/hk", content=manifest, headers={"content-type": "text/plain"})
        assert r.status_code == 200, r.text
        link = FleetLink("hk", "hk-agent", "agent", broker.url, tmp_path / "outbox.db", fw="0.9.1",
                         hosted={"hk-shunt": "powerbank"}).start()
        # A view here sees other processes' commits when it is older than POPKIT_VIEW_MAX_AGE_S: short here.
        api = ops_client(create_app(other, settings=FleetSettings(view_refresh_s=0.2, view_max_age_s=0.2)))
        assert api.get("/api/v1/kits/hk").json()["event"]["ends_ms"] == ends_ms
        t_end = now_ms() - 5_000
        for k in range(31):  # ten minutes falling 12 %/h to 60 %: 5 h left, the event ends in 3
            link.emit("hk-shunt", "telemetry", BatteryTelemetry, ts=t_end - (30 - k) * 20_000, source="vedirect",
                      v=12.5, i=-4.0, p=-50.0, soc=round(60 + 12 * (30 - k) * 20 / 3600, 2))
        first.wait_ingested(31)
        shunt = wait_until(lambda: {b["device_id"]: b for b in api.get("/api/v1/kits/hk").json()["batteries"]
                                    if b["lasts_until_end"] is not None}.get("hk-shunt"),
                           what="the shunt's forecast against the event")
        assert shunt["event_ends_ms"] == ends_ms
        assert shunt["lasts_until_end"] is True and shunt["margin_min"] == pytest.approx(120, abs=4)
        assert api.get("/api/v1/devices/hk-shunt").json()["battery_forecast"]["lasts_until_end"] is True
    finally:
        if link is not None:
            link.stop()
        first.ingest.stop()
        first.store.close()
        other.close()
