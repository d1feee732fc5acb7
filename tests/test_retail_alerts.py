"""The oldest order a kit has not uploaded (fleet/retail/pending.py) and the orders_not_uploaded alert
(fleet/alerts/rules.py): the rule alone, then a real store on SQLite and PostgreSQL fed the agent's
device telemetry, then end to end through a real Mosquitto, the fleet's ingest and its API."""

from __future__ import annotations

import secrets

import pytest

from fleet.alerts import AlertConfig, evaluate
from fleet.alerts.rules import orders_not_uploaded
from fleet.db import now_ms
from fleet.ledger import Batch, LedgerMessage
from fleet.settings import FleetSettings
from fleet.store import Store
from kits.contract import DeviceTelemetry, encode
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT, publisher, wait_until

HOUR = 3_600_000
NOW = 1_800_000_000_000
CFG = AlertConfig()  # 24 h


def report(orders: int, oldest_ms: int | None, reported_ms: int = NOW) -> dict:
    return dict(device="demo-agent", orders=orders, oldest_ms=oldest_ms, reported_ms=reported_ms, received_ms=reported_ms)


def telemetry(device: str, seq: int, ts: int, orders: int | None, oldest_ms: int | None) -> LedgerMessage:
    msg = DeviceTelemetry(boot="a9e0b001", seq=seq, ts=ts, uptime_s=seq, orders_pending=orders,
                          orders_oldest_ms=oldest_ms)
    return LedgerMessage(device, "telemetry", msg, encode(msg).decode())


# ---------------------------------------------------------------- the rule alone


def test_the_rule_fires_past_the_threshold_and_is_critical_past_three_times_it():
    assert orders_not_uploaded("demo", None, CFG, NOW) is None  # never reported: no till, nothing to say
    assert orders_not_uploaded("demo", report(0, None), CFG, NOW) is None
    assert orders_not_uploaded("demo", report(4, NOW - 23 * HOUR), CFG, NOW) is None
    f = orders_not_uploaded("demo", report(4, NOW - 25 * HOUR), CFG, NOW)
    assert (f.subject, f.kit_id, f.rule, f.severity) == ("demo", "demo", "orders_not_uploaded", "warning")
    assert "4 orders not uploaded" in f.message and "25 h" in f.message and f.evidence == NOW - 25 * HOUR
    assert orders_not_uploaded("demo", report(1, NOW - 73 * HOUR), CFG, NOW).severity == "critical"
    short = AlertConfig(orders_pending_s=3600)
    assert orders_not_uploaded("demo", report(1, NOW - 2 * HOUR), short, NOW) is not None


def test_a_kit_silent_since_its_last_report_still_alerts_and_says_so():
    """Judged against now: the orders the kit held when it went quiet only grow older."""
    last = report(2, NOW - HOUR, reported_ms=NOW - HOUR)
    assert orders_not_uploaded("demo", last, CFG, NOW) is None
    f = orders_not_uploaded("demo", last, CFG, NOW + 24 * HOUR)
    assert f is not None and "last reported" in f.message


def test_the_threshold_is_a_setting():
    assert AlertConfig.from_settings(FleetSettings()).orders_pending_s == 24 * 3600
    assert AlertConfig.from_settings(FleetSettings(retail_pending_alert_s=7200)).orders_pending_s == 7200


# ---------------------------------------------------------------- a real store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store.open(url)
    s.registry.register_kit(load_manifest(DEMO_KIT))
    yield s
    s.close()


def alerts(store, rule="orders_not_uploaded") -> list[dict]:
    return [a for a in store.alerts.list() if a["rule"] == rule and a["state"] != "resolved"]


def test_the_latest_report_per_kit_is_kept_and_drives_the_alert(store):
    now = now_ms()
    store.ledger.write_batch(Batch(ledger=[telemetry("demo-agent", 1, now - 1000, 3, now - 30 * HOUR)]))
    assert store.retail.orders.pending.latest()["demo"]["orders"] == 3
    evaluate(store, now_ms=now, cfg=CFG)
    [a] = alerts(store)
    assert a["subject"] == "demo" and a["details"]["orders"] == 3
    # An older report arriving late (a resent backlog) does not undo the newer one.
    store.ledger.write_batch(Batch(ledger=[telemetry("demo-agent", 2, now - 5000, 0, None)]))
    assert store.retail.orders.pending.latest()["demo"]["orders"] == 3
    # The kit uploads: its next report says nothing is pending, and the alert resolves by itself.
    store.ledger.write_batch(Batch(ledger=[telemetry("demo-agent", 3, now, 0, None)]))
    assert store.retail.orders.pending.latest()["demo"] == dict(
        device="demo-agent", orders=0, oldest_ms=None, reported_ms=now,
        received_ms=store.retail.orders.pending.latest()["demo"]["received_ms"])
    evaluate(store, now_ms=now + 1000, cfg=CFG)
    assert alerts(store) == []


def test_only_the_kits_agent_reports_its_till(store):
    now = now_ms()
    store.ledger.write_batch(Batch(ledger=[telemetry("demo-scanner-1", 1, now, 9, now - 48 * HOUR),
                                           telemetry("demo-agent", 1, now, None, None)]))  # no till: says nothing
    assert store.retail.orders.pending.latest() == {}
    evaluate(store, now_ms=now, cfg=CFG)
    assert alerts(store) == []


# ---------------------------------------------------------------- end to end


def test_the_agents_telemetry_reaches_the_api_and_the_alert(fleet):
    client = publisher(fleet.settings.mqtt_url)
    try:
        now = now_ms()
        msg = DeviceTelemetry(boot=secrets.token_hex(4), seq=1, ts=now, uptime_s=60, orders_pending=2,
                              orders_oldest_ms=now - 26 * HOUR)
        client.publish("popkit/v1/demo/demo-agent/telemetry", encode(msg), qos=1)
        wait_until(lambda: fleet.api.get("/api/v1/kits/demo/orders-pending").json()["reported"], what="the report")
    finally:
        client.disconnect()
        client.loop_stop()
    p = fleet.api.get("/api/v1/kits/demo/orders-pending").json()
    assert (p["orders"], p["oldest_ms"], p["late"], p["alert_after_s"]) == (2, now - 26 * HOUR, True, 86400)
    assert p["age_s"] >= 26 * 3600
    assert fleet.api.get("/api/v1/retail/sales").json()["pending"]["demo"]["late"] is True
    evaluate(fleet.store, cfg=AlertConfig.from_settings(fleet.settings))
    [a] = [a for a in fleet.api.get("/api/v1/alerts").json()["items"] if a["rule"] == "orders_not_uploaded"]
    assert a["subject"] == "demo" and a["severity"] == "warning" and "2 orders not uploaded" in a["message"]
