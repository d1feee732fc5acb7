"""Alerts (fleet/alerts/rules.py): simulated kits report over a real Mosquitto, the fleet ingests, and the
evaluator is called with a chosen "now" (no sleeping) to open, update and resolve alerts."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import update

from fleet import db
from fleet.alerts import AlertConfig, Firing, evaluate
from fleet.auth.testing import client_as
from fleet.store import Store
from kits.contract import BatteryTelemetry, Event, PrinterTelemetry, State, encode
from tests.conftest import publisher, start_fleet, wait_until

CFG = AlertConfig(offline_grace_s=300, scanner_errors=3, scanner_window_s=600)
MIN = 60_000


def now_ms() -> int:
    return int(time.time() * 1000)


class SimKit:
    """Publishes what a kit's devices would: retained states, telemetry and events, each with its
    own (boot, seq), and waits until the fleet has committed them."""

    def __init__(self, fleet, broker_url: str, kit: str = "demo", boot: str = "a1b2c3"):
        self.fleet, self.kit, self.boot = fleet, kit, boot
        self.pub = publisher(broker_url)
        self.seq = itertools.count(1)
        self.ledger = fleet.ingest.metrics.ingested
        self.states = fleet.ingest.metrics.states

    def _send(self, device: str, channel: str, model, retain: bool = False) -> None:
        self.pub.publish(f"popkit/v1/{self.kit}/{device}/{channel}", encode(model), qos=1,
                         retain=retain).wait_for_publish(5)

    def state(self, device: str, role: str, online: bool = True, ts: int | None = None, **kw) -> None:
        self._send(device, "state", State(boot=self.boot, seq=0, ts=ts or now_ms(), online=online, role=role,
                                          reason="birth" if online else "lwt", **kw), retain=True)
        self.states += 1
        self.settle()

    def battery(self, device: str, soc: float, ts: int | None = None, i: float = -3.0, **kw) -> None:
        self._send(device, "telemetry", BatteryTelemetry(boot=self.boot, seq=next(self.seq), ts=ts or now_ms(),
                                                         source="sim", v=12.4, i=i, soc=soc, **kw))
        self.ledger += 1
        self.settle()

    def printer(self, device: str, paper: str) -> None:
        self._send(device, "telemetry", PrinterTelemetry(boot=self.boot, seq=next(self.seq), ts=now_ms(),
                                                         online=True, paper=paper))
        self.ledger += 1
        self.settle()

    def event(self, device: str, kind: str, data: dict, ts: int | None = None) -> None:
        self._send(device, "event", Event(boot=self.boot, seq=next(self.seq), ts=ts or now_ms(), kind=kind, data=data))
        self.ledger += 1
        self.settle()

    def settle(self) -> None:
        m = self.fleet.ingest.metrics
        wait_until(lambda: m.ingested >= self.ledger and m.states >= self.states, what="the fleet to commit")

    def close(self) -> None:
        self.pub.loop_stop()
        self.pub.disconnect()


@pytest.fixture
def sim(fleet, broker):
    kit = SimKit(fleet, broker.url)
    # The demo kit's agent is up and drives its power bank and printer.
    kit.state("demo-agent", "agent")
    kit.state("demo-power", "powerbank")
    kit.state("demo-printer", "printer")
    yield kit
    kit.close()


def alerts(fleet, **params) -> list[dict]:
    r = fleet.api.get("/api/v1/alerts", params=params)
    assert r.status_code == 200, r.text
    return r.json()["items"]


def history(fleet, alert_id: int) -> list[str]:
    return [h["what"] for h in fleet.api.get(f"/api/v1/alerts/{alert_id}").json()["history"]]


def test_low_soc_opens_one_alert_repeats_update_it_and_back_to_normal_resolves_it(fleet, sim):
    sim.battery("demo-power", soc=15)
    t = now_ms()
    r = evaluate(fleet.store, t, CFG)
    assert (r.opened, r.resolved) == (1, 0)
    [a] = alerts(fleet)
    assert (a["subject"], a["kit_id"], a["rule"], a["severity"], a["state"]) == \
        ("demo-power", "demo", "low_soc", "warning", "open")
    assert a["count"] == 1 and a["first_seen_ms"] == a["last_seen_ms"] == t
    assert "15 %" in a["message"] and a["details"]["soc"] == 15
    assert 'popkit_alerts_open{rule="low_soc",severity="warning"} 1' in fleet.api.get("/metrics").text

    # The same reading seen again touches the alert; a new low reading counts; neither adds a row.
    evaluate(fleet.store, t + 1000, CFG)
    sim.battery("demo-power", soc=14)
    evaluate(fleet.store, t + 2000, CFG)
    [a] = alerts(fleet)
    assert a["count"] == 2 and a["last_seen_ms"] == t + 2000 and a["first_seen_ms"] == t
    assert "14 %" in a["message"]

    # Below the empty threshold it turns critical (recorded in its history).
    sim.battery("demo-power", soc=8)
    evaluate(fleet.store, t + 3000, CFG)
    [a] = alerts(fleet)
    assert a["severity"] == "critical" and a["count"] == 3

    # Back to normal: resolved by itself.
    sim.battery("demo-power", soc=65, i=4.0)
    r = evaluate(fleet.store, t + 4000, CFG)
    assert r.resolved == 1
    [a] = alerts(fleet)
    assert (a["state"], a["resolved_by"], a["resolved_ms"]) == ("resolved", "auto", t + 4000)
    assert history(fleet, a["id"]) == ["opened", "updated", "resolved"]
    metrics = fleet.api.get("/metrics").text
    assert 'popkit_alerts_open{rule="low_soc",severity="critical"} 0' in metrics

    # Low again: a new alert; the resolved one stays in the history.
    sim.battery("demo-power", soc=12, i=-3.0)
    evaluate(fleet.store, t + 5000, CFG)
    listed = alerts(fleet)
    assert [x["state"] for x in listed] == ["open", "resolved"] and listed[0]["id"] > listed[1]["id"]


def test_device_offline_alerts_after_the_grace_period_for_the_agent_not_each_hosted_device(fleet, sim):
    sim.battery("demo-power", soc=80)  # the power bank was heard from too
    sim.state("demo-agent", "agent", online=False)  # its Last Will: the hosted devices go down with it
    t = now_ms()
    assert evaluate(fleet.store, t + 299_000, CFG).opened == 0  # within the grace period
    evaluate(fleet.store, t + 301_000, CFG)
    [a] = alerts(fleet, rule="device_offline")
    assert a["subject"] == "demo-agent" and a["severity"] == "critical" and a["details"]["status"] == "offline"
    assert "offline for 5 min" in a["message"]

    sim.state("demo-agent", "agent", online=True)
    evaluate(fleet.store, now_ms(), CFG)
    [a] = alerts(fleet, rule="device_offline")
    assert a["state"] == "resolved" and a["resolved_by"] == "auto"


def test_a_silent_device_alerts_once_the_grace_period_is_over(fleet, sim):
    sim.battery("demo-power", soc=80)
    t = now_ms()
    # Online by its state, but nothing for 10 minutes: silent (no Last Will came), past the grace period.
    evaluate(fleet.store, t + 10 * MIN, CFG)
    # The agent carries its power bank's and printer's messages: one alert, for the agent.
    [a] = alerts(fleet, rule="device_offline")
    assert a["subject"] == "demo-agent" and a["details"]["status"] == "silent"
    assert "silent" in a["message"] and "10 min" in a["message"]


def test_paper_out_and_bms_protection(fleet, sim):
    sim.printer("demo-printer", paper="out")
    sim.battery("demo-power", soc=70, protection=["cell_overvoltage", "charge_overcurrent"])
    evaluate(fleet.store, now_ms(), CFG)
    by_rule = {a["rule"]: a for a in alerts(fleet, state="open")}
    assert set(by_rule) == {"paper_out", "bms_protection"}
    assert by_rule["paper_out"]["subject"] == "demo-printer" and by_rule["paper_out"]["severity"] == "critical"
    assert by_rule["bms_protection"]["details"]["protection"] == ["cell_overvoltage", "charge_overcurrent"]
    assert "cell_overvoltage" in by_rule["bms_protection"]["message"]

    sim.printer("demo-printer", paper="ok")
    sim.battery("demo-power", soc=70)
    evaluate(fleet.store, now_ms(), CFG)
    assert alerts(fleet, state="active") == []
    assert {a["resolved_by"] for a in alerts(fleet, state="resolved")} == {"auto"}


def test_a_config_not_applied_within_the_grace_period_alerts_until_the_device_reports_it(fleet, sim):
    """A lighting controller's new timeline (any desired config) pushed and not applied in time."""
    from fleet.health import HealthConfig

    cfg = AlertConfig(health=HealthConfig(config_grace_s=60))
    sim.state("demo-lights-1", "lighting")
    fleet.store.config.update(["demo-lights-1"], lambda _old: {"format": 1, "scenes": {"a": {"levels": {}}}})
    assert evaluate(fleet.store, now_ms() + 30_000, cfg).opened == 0  # within the grace period
    evaluate(fleet.store, now_ms() + 61_000, cfg)
    [a] = alerts(fleet, state="open")
    assert (a["subject"], a["rule"], a["severity"]) == ("demo-lights-1", "config_not_applied", "warning")
    assert "config 1 pushed" in a["message"]
    sim.state("demo-lights-1", "lighting", config_version=1)
    evaluate(fleet.store, now_ms() + 62_000, cfg)
    assert alerts(fleet, state="active") == []


def test_repeated_scanner_errors(fleet, sim):
    t = now_ms()
    sim.event("demo-scanner-1", "checkin", {"event": "NIGHT-1", "ticket": "T1", "verdict": "admitted"}, ts=t)
    for n, verdict in enumerate(["bad_signature", "malformed"]):
        sim.event("demo-scanner-1", "checkin", {"verdict": verdict}, ts=t + n)
    evaluate(fleet.store, t + 1000, CFG)
    assert alerts(fleet, rule="scanner_errors") == []  # 2 < 3
    sim.event("demo-scanner-1", "checkin", {"ticket": "FAKE1", "verdict": "bad_signature"}, ts=t + 2)
    evaluate(fleet.store, t + 2000, CFG)
    [a] = alerts(fleet, rule="scanner_errors")
    assert a["subject"] == "demo-scanner-1" and a["details"]["errors"] == 3 and a["severity"] == "warning"
    # Ten minutes on, the errors are out of the window: back to normal.
    evaluate(fleet.store, t + 11 * MIN, CFG)
    [a] = alerts(fleet, rule="scanner_errors")
    assert a["state"] == "resolved"


def test_acknowledge_and_resolve_through_the_api(fleet, sim):
    sim.battery("demo-power", soc=15)
    sim.printer("demo-printer", paper="out")
    evaluate(fleet.store, now_ms(), CFG)
    low = alerts(fleet, rule="low_soc")[0]
    paper = alerts(fleet, rule="paper_out")[0]

    # Who acknowledges or resolves is the signed-in user (a "by" in the body is ignored).
    anna, bob = client_as(fleet.api.app, "ops-anna"), client_as(fleet.api.app, "ops-bob")
    r = anna.post(f"/api/v1/alerts/{low['id']}/acknowledge", json={"by": "someone-else", "note": "on my way"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == "ops-anna"
    assert body["history"][-1] == {"ts": body["acknowledged_ms"], "what": "acknowledged", "by": "ops-anna",
                                   "detail": "on my way"}
    again = bob.post(f"/api/v1/alerts/{low['id']}/acknowledge", json={})
    assert again.status_code == 200 and again.json()["acknowledged_by"] == "ops-anna"
    # Still firing: it stays acknowledged (and is updated), it does not reopen.
    evaluate(fleet.store, now_ms(), CFG)
    assert fleet.api.get(f"/api/v1/alerts/{low['id']}").json()["state"] == "acknowledged"

    r = anna.post(f"/api/v1/alerts/{paper['id']}/resolve", json={"note": "new roll"})
    assert r.status_code == 200 and r.json()["state"] == "resolved" and r.json()["resolved_by"] == "ops-anna"
    r = fleet.api.post(f"/api/v1/alerts/{paper['id']}/resolve", json={"by": "ops-anna"})
    assert r.status_code == 409 and "resolved already" in r.json()["detail"]
    assert fleet.api.post(f"/api/v1/alerts/{paper['id']}/acknowledge", json={"by": "x"}).status_code == 409
    r = fleet.api.post("/api/v1/alerts/999999/acknowledge", json={"by": "ops-anna"})
    assert r.status_code == 404 and r.json()["detail"] == "no alert 999999"
    assert fleet.api.get("/api/v1/alerts/999999").status_code == 404
    assert fleet.api.post(f"/api/v1/alerts/{low['id']}/resolve", json={"by": ""}).status_code == 422
    assert fleet.api.post(f"/api/v1/alerts/{low['id']}/resolve", json={"by": "auto"}).status_code == 422
    assert fleet.api.post(f"/api/v1/alerts/{low['id']}/resolve", json={"who": "x"}).status_code == 422
    assert fleet.api.get("/api/v1/alerts", params={"state": "sleeping"}).status_code == 422
    assert fleet.api.get("/api/v1/alerts", params={"rule": "nope"}).status_code == 422

    # The printer is still out of paper: the next evaluation opens a new alert for it.
    evaluate(fleet.store, now_ms(), CFG)
    assert [a["state"] for a in alerts(fleet, rule="paper_out")] == ["open", "resolved"]


def test_list_filters_and_pages_newest_first(fleet, sim):
    sim.battery("demo-power", soc=15, protection=["cell_undervoltage"])
    sim.printer("demo-printer", paper="out")
    t = now_ms()
    evaluate(fleet.store, t + 10 * MIN, CFG)  # + everyone silent
    everything = alerts(fleet, limit=500)
    assert len(everything) == 4  # low_soc, bms_protection, paper_out, device_offline (the agent)
    assert [a["id"] for a in everything] == sorted((a["id"] for a in everything), reverse=True)
    page = fleet.api.get("/api/v1/alerts", params={"limit": 3}).json()
    rest = fleet.api.get("/api/v1/alerts", params={"limit": 3, "cursor": page["next_cursor"]}).json()
    assert len(page["items"]) == 3 and len(rest["items"]) == 1 and rest["next_cursor"] is None
    assert [a["id"] for a in page["items"] + rest["items"]] == [a["id"] for a in everything]
    assert {a["rule"] for a in alerts(fleet, severity="critical")} == {"bms_protection", "paper_out", "device_offline"}
    assert {a["subject"] for a in alerts(fleet, subject="demo-power")} == {"demo-power"}
    assert len(alerts(fleet, kit="demo")) == 4 and alerts(fleet, kit="other") == []
    schema = fleet.api.get("/openapi.json").json()
    assert {"/api/v1/alerts", "/api/v1/alerts/{alert_id}", "/api/v1/alerts/{alert_id}/acknowledge",
            "/api/v1/alerts/{alert_id}/resolve"} <= set(schema["paths"])
    assert "AlertDetailOut" in schema["components"]["schemas"]


EVENT_KIT = """
id = "ek"
name = "Event kit"
agent = "ek-agent"

[event]
doors_open = {doors}
ends = {ends}

[[devices]]
id = "ek-power"
role = "powerbank"
model = "victron-smartshunt"
bus = "serial:/dev/ttyUSB0"
telemetry_s = 60
"""


@pytest.fixture
def event_fleet(broker, tmp_path):
    """A kit whose event opens its doors in an hour and ends in five."""
    t = now_ms()
    iso = lambda ms: datetime.fromtimestamp(ms / 1000, timezone.utc).replace(microsecond=0).isoformat()  # noqa: E731
    doors, ends = (t + 60 * MIN) // 1000 * 1000, (t + 300 * MIN) // 1000 * 1000
    path = tmp_path / "ek.toml"
    path.write_text(EVENT_KIT.format(doors=iso(doors), ends=iso(ends)))
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=[path])
    f.doors_ms, f.ends_ms = doors, ends
    kit = SimKit(f, broker.url, kit="ek")
    kit.state("ek-agent", "agent")
    kit.state("ek-power", "powerbank")
    yield f, kit
    kit.close()
    f.ingest.stop()
    f.store.close()


def test_kit_not_ready_at_doors_open(event_fleet):
    fleet, sim = event_fleet
    problem = {"device": "ek-power", "severity": "fault", "what": "battery at 30 %", "fix": "swap the pack"}
    sim.event("ek-agent", "readiness", {"status": "not_ready", "problems": [problem]})
    evaluate(fleet.store, fleet.doors_ms - MIN, CFG)
    assert alerts(fleet, rule="kit_not_ready") == []  # not yet: doors open in a minute
    evaluate(fleet.store, fleet.doors_ms, CFG)
    [a] = alerts(fleet, rule="kit_not_ready")
    assert (a["subject"], a["kit_id"], a["severity"]) == ("ek", "ek", "critical")
    assert a["message"] == "kit ek not ready at doors-open: battery at 30 %"
    assert a["details"]["problems"] == [problem]

    sim.event("ek-agent", "readiness", {"status": "ready", "problems": []})
    evaluate(fleet.store, fleet.doors_ms + MIN, CFG)
    [a] = alerts(fleet, rule="kit_not_ready")
    assert a["state"] == "resolved" and a["resolved_by"] == "auto"


def test_forecast_short_of_the_event_end(event_fleet):
    fleet, sim = event_fleet
    t = now_ms()
    # Discharging 1 % a minute from 50 %: empty in about 40 minutes, the event ends in five hours.
    for k in range(11):
        sim.battery("ek-power", soc=50 - k, i=-6.0, ts=t - (10 - k) * MIN)
    evaluate(fleet.store, t, CFG)
    [a] = alerts(fleet, rule="forecast_short")
    assert a["subject"] == "ek-power" and a["severity"] == "warning"
    assert a["details"]["margin_min"] == pytest.approx(-260, abs=5)
    assert a["details"]["event_ends_ms"] == fleet.ends_ms and a["details"]["method"] == "soc_slope"
    assert "before the event ends" in a["message"]

    # On charge: no forecast of running out, so back to normal.
    sim.battery("ek-power", soc=41, i=8.0, ts=t + 1000)
    evaluate(fleet.store, t + 2000, CFG)
    [a] = alerts(fleet, rule="forecast_short")
    assert a["state"] == "resolved"


def test_a_kit_whose_event_is_not_known_keeps_its_alerts(event_fleet):
    """A kit registered by a fleet from before event windows were stored: its window is unknown
    to every worker, so neither event rule can be judged and their alerts are left as they are."""
    fleet, sim = event_fleet
    sim.event("ek-agent", "readiness", {"status": "not_ready", "problems": []})
    evaluate(fleet.store, fleet.doors_ms, CFG)
    assert alerts(fleet, rule="kit_not_ready", state="open")
    with fleet.store.engine.begin() as conn:
        conn.execute(update(db.kits).values(manifest_ms=None, doors_open_ms=None, ends_ms=None))
    evaluate(fleet.store, fleet.doors_ms + MIN, CFG)
    assert alerts(fleet, rule="kit_not_ready", state="open")


def test_a_worker_that_never_loaded_the_manifest_knows_the_event_from_the_database(event_fleet, tmp_path):
    """A second fleet process on the same database (no --kit, no registration of its own) judges
    the kit against the event window the first one registered."""
    fleet, sim = event_fleet
    sim.event("ek-agent", "readiness", {"status": "not_ready", "problems": []})
    other = Store(fleet.store.engine)  # a worker of its own: nothing in memory
    assert other.registry.kit_info("ek").ends_ms == fleet.ends_ms
    evaluate(other, fleet.doors_ms + MIN, CFG)
    assert alerts(fleet, rule="kit_not_ready", state="open")


# ------------------------------------------------------------ several workers at once


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_db(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fleet.db'}"
    return request.getfixturevalue("pg_url")


def _battery_batch(soc: float, seq: int):
    from fleet.ledger import Batch, LedgerMessage

    msg = BatteryTelemetry(boot="f00d01", seq=seq, ts=now_ms(), source="sim", v=12.3, i=-2.0, soc=soc)
    return Batch(ledger=[LedgerMessage("demo-power", "telemetry", msg, encode(msg).decode())])


def test_one_alert_per_subject_and_rule_with_two_evaluators_at_once(shared_db):
    """Two workers (two stores, two engines) evaluating together, many times: one alert, one
    'opened'; both resolving: one 'resolved'. The partial unique index is what guarantees it."""
    import sqlalchemy as sa

    from fleet import db
    from kits.manifest import load_manifest
    from tests.conftest import DEMO_KIT

    workers = [Store.open(shared_db), Store.open(shared_db)]
    try:
        manifest = load_manifest(DEMO_KIT)
        for s in workers:
            s.registry.register_kit(manifest)
        workers[0].ledger.write_batch(_battery_batch(11, 1))

        def race(rounds: int = 15) -> None:
            barrier = threading.Barrier(len(workers))
            errors: list[BaseException] = []

            def run(store) -> None:
                try:
                    for _ in range(rounds):
                        barrier.wait(10)
                        evaluate(store, now_ms(), CFG)
                except BaseException as exc:  # noqa: BLE001
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(s,)) for s in workers]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
            assert not errors, errors

        race()
        a = workers[0].alerts.list(rule="low_soc")
        assert len(a) == 1 and a[0]["state"] == "open" and a[0]["count"] == 1
        assert [h["what"] for h in workers[1].alerts.get(a[0]["id"])["history"]] == ["opened"]

        workers[1].ledger.write_batch(_battery_batch(90, 2))
        race(5)
        a = workers[0].alerts.list(rule="low_soc")
        assert len(a) == 1 and a[0]["state"] == "resolved"
        assert [h["what"] for h in workers[0].alerts.get(a[0]["id"])["history"]] == ["opened", "resolved"]

        # The database refuses a second active alert for the same (subject, rule) outright ...
        workers[0].alerts.sync([Firing("demo-power", "demo", "low_soc", "warning", "x")], set(), now_ms())
        row = dict(subject="demo-power", kit_id="demo", rule="low_soc", severity="warning", state="open",
                   first_seen_ms=1, last_seen_ms=1, count=1, message="dup", details={}, notify_count=0)
        with pytest.raises(sa.exc.IntegrityError):
            with workers[1].engine.begin() as conn:
                conn.execute(db.alerts.insert().values(**row))
        # ... but any number of resolved ones.
        with workers[1].engine.begin() as conn:
            conn.execute(db.alerts.insert().values(**dict(row, state="resolved")))
            conn.execute(db.alerts.insert().values(**dict(row, state="resolved")))
        assert len(workers[0].alerts.list(rule="low_soc", state="active")) == 1
    finally:
        for s in workers:
            s.close()


def low_soc_opens_then_resolves(fleet, sim, metrics) -> None:
    """A running evaluator opens the low SOC alert when the pack reads 12 %, and resolves it at 60 %."""
    wait_until(lambda: metrics.evaluations >= 1, what="the evaluation at start")
    sim.battery("demo-power", soc=12)
    wait_until(lambda: alerts(fleet, rule="low_soc"), what="the evaluator to open the low SOC alert")
    sim.battery("demo-power", soc=60, i=4.0)
    wait_until(lambda: alerts(fleet, rule="low_soc")[0]["state"] == "resolved", what="auto-resolve")
    assert metrics.evaluation_errors == 0


def test_the_evaluator_thread_runs_soon_after_ingest_commits(fleet, sim):
    """In the service the evaluator watches ingest's batch counter (never ingest itself)."""
    from fleet.alerts import Evaluator
    from fleet.metrics import AlertMetrics

    metrics = AlertMetrics()
    ev = Evaluator(fleet.store, CFG, interval_s=3600, min_interval_s=0.1,
                   changes=lambda: fleet.ingest.metrics.batches, metrics=metrics).start()
    try:
        low_soc_opens_then_resolves(fleet, sim, metrics)
    finally:
        ev.stop()


def test_in_the_service_the_evaluator_judges_the_kit_views_instead_of_computing_the_fleet_again(fleet, sim):
    """serve() hands the evaluator the API's kept views (KitViews.snapshot): the fleet is computed
    once for the dashboard and the alerts, and a change reaches the alerts through the views."""
    from fleet.alerts import Evaluator
    from fleet.health import HealthConfig
    from fleet.views.cache import KitViews
    from fleet.metrics import AlertMetrics

    store = fleet.store
    views = KitViews(store, HealthConfig(), refresh_s=3600)
    store.changes.listeners.append(lambda kits, _d: views.invalidate(kits))
    views.start()
    wait_until(lambda: views.stats.full_passes >= 1, what="the views' first pass")
    computed_by = []
    compute = store.health.kits_with_health

    def counting(*args, **kwargs):
        computed_by.append(threading.current_thread().name)
        return compute(*args, **kwargs)

    store.health.kits_with_health = counting
    metrics = AlertMetrics()
    ev = Evaluator(store, CFG, interval_s=3600, min_interval_s=0.1, changes=lambda: fleet.ingest.metrics.batches,
                   metrics=metrics, views=views.snapshot).start()
    try:
        low_soc_opens_then_resolves(fleet, sim, metrics)
        assert computed_by and "fleet-alerts" not in computed_by  # only the views' thread computed the fleet
    finally:
        ev.stop()
        views.stop()
        store.health.kits_with_health = compute
