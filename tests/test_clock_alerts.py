"""Device clocks at the fleet: each device's clock state from its latest state, a health reason when it
is unset or off the fleet's, and the clock_unset and clock_drift alerts. The rules alone, then a
real store on SQLite and PostgreSQL (fed directly, with chosen receipt times), then end to end through a real
Mosquitto, the fleet's ingest and its API."""

from __future__ import annotations

import itertools
import time

import pytest

from fleet.alerts import AlertConfig, evaluate
from fleet.health import HealthConfig, device_health
from fleet.ledger import CLOCK_LAG_WINDOW_MS, Batch, LedgerMessage
from fleet.store import Store
from kits.contract import DeviceTelemetry, State, encode
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT, publisher, wait_until

NOW = 1_800_000_000_000
Y2000 = 946_684_800_000  # a unix-port ESP32 powered up with no time
CFG = AlertConfig(health=HealthConfig(clock_drift_s=120), clock_grace_s=120)
DOOR = "demo-scanner-1"


def dev(**kw) -> dict:
    base = dict(id=DOOR, kit_id="demo", role="scanner", online=True, boot="b1", fw="scanner-0.2.0",
                config_version=None, last_seen_ms=NOW - 1000, latest={"device": {"uptime_s": 5}}, host_id=None,
                clock="synced", reset_cause="power", clock_since_ms=NOW - 60_000, clock_lag_ms=150)
    base.update(kw)
    return base


def codes(h: dict) -> set[str]:
    return {r["code"] for r in h["reasons"]}


# ---------------------------------------------------------------- the rules alone


def test_an_unset_clock_degrades_an_online_device():
    h = device_health(dev(clock="unset"), None, CFG.health, NOW)
    assert h["status"] == "degraded" and codes(h) == {"clock_unset"}
    assert device_health(dev(clock="kit"), None, CFG.health, NOW)["status"] == "ok"
    assert device_health(dev(clock=None), None, CFG.health, NOW)["status"] == "ok"  # older firmware says nothing


def test_a_clock_off_the_fleets_by_more_than_the_bound_degrades_it_either_way():
    behind = device_health(dev(clock_lag_ms=300_000), None, CFG.health, NOW)
    assert codes(behind) == {"clock_drift"} and "300 s behind" in behind["reasons"][0]["what"]
    ahead = device_health(dev(clock_lag_ms=-200_000), None, CFG.health, NOW)
    assert codes(ahead) == {"clock_drift"} and "200 s ahead of" in ahead["reasons"][0]["what"]
    assert device_health(dev(clock_lag_ms=119_000), None, CFG.health, NOW)["status"] == "ok"
    # Not judged: an unset clock (its ts means nothing: clock_unset says so), an agent-driven device
    # (it carries the agent's clock, judged there).
    assert codes(device_health(dev(clock="unset", clock_lag_ms=9 * 10**11), None, CFG.health, NOW)) == {"clock_unset"}
    assert device_health(dev(host_id="demo-agent", clock=None, clock_lag_ms=900_000), None, CFG.health, NOW)[
        "status"] == "ok"


# ---------------------------------------------------------------- on a real store, receipt times chosen


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The fleet's store on each backend (ingest's statements differ: PostgreSQL types its parameters)."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store.open(url)
    manifest = load_manifest(DEMO_KIT)
    s.registry.register_kit(manifest)
    yield s
    s.close()


class Door:
    """A scanner's messages, written straight into the store as ingest would, received when the test says."""

    def __init__(self, store: Store, boot: str = "d00d0001"):
        self.store, self.boot = store, boot
        self.seq = itertools.count(1)

    def state(self, received_ms: int, ts: int, online: bool = True, clock: str | None = "synced", boot: str | None = None,
              **kw) -> None:
        s = State(boot=boot or self.boot, seq=0, ts=ts, online=online, role="scanner", clock=clock,
                  reason="birth" if online else "lwt", **kw)
        self.store.ledger.write_batch(Batch(states=[(DOOR, s)]), received_ms=received_ms)

    def telemetry(self, received_ms: int, *ts: int) -> None:
        msgs = []
        for t in ts:
            m = DeviceTelemetry(boot=self.boot, seq=next(self.seq), ts=t, uptime_s=1)
            msgs.append(LedgerMessage(DOOR, "telemetry", m, encode(m).decode()))
        self.store.ledger.write_batch(Batch(ledger=msgs), received_ms=received_ms)


def door_view(store: Store, now: int) -> dict:
    [kit] = store.health.kits_with_health(CFG.health, kit_id="demo", now=now)
    return next(d for d in kit["devices"] if d["id"] == DOOR)


def rules(store: Store, now: int) -> dict[str, dict]:
    evaluate(store, now, CFG)
    return {a["rule"]: a for a in store.alerts.list(state="active", kit_id="demo") if a["subject"] == DOOR}


def test_a_door_booted_without_time_alerts_after_the_grace_and_resolves_once_it_has_kit_time(store):
    door = Door(store)
    door.state(NOW, ts=Y2000, clock="unset", reset_cause="watchdog")
    v = door_view(store, NOW)
    assert (v["clock"], v["reset_cause"], v["clock_since_ms"]) == ("unset", "watchdog", NOW)
    assert "clock_unset" in codes(v["health"])
    assert "clock_unset" not in rules(store, NOW + 60_000)  # a door waits a moment for the kit's time
    fired = rules(store, NOW + 121_000)["clock_unset"]
    assert fired["severity"] == "warning" and "2 min" in fired["message"]
    assert fired["details"]["reset_cause"] == "watchdog"
    # The kit's Pi answered (on its last known time): the door publishes its state again.
    door.state(NOW + 122_000, ts=Y2000, clock="kit", reset_cause="watchdog")
    v = door_view(store, NOW + 123_000)
    assert v["clock"] == "kit" and v["clock_since_ms"] == NOW + 122_000
    assert "clock_unset" not in rules(store, NOW + 123_000)
    [resolved] = [a for a in store.alerts.list(state="resolved") if a["rule"] == "clock_unset"]
    assert resolved["resolved_by"] == "auto"


def test_a_reboot_without_time_still_shows_online_and_restarts_the_grace(store):
    """The new boot's birth says 2000, older than the state applied before: its ts means nothing, it
    applies. A late Will of the old boot (ts 2026) must not mark the new session offline."""
    door = Door(store)
    door.state(NOW, ts=NOW - 3_600_000, clock="synced")
    door.state(NOW + 1000, ts=Y2000, clock="unset", boot="b007b007", reset_cause="watchdog")
    v = door_view(store, NOW + 2000)
    assert (v["online"], v["boot"], v["clock"], v["clock_since_ms"]) == (True, "b007b007", "unset", NOW + 1000)
    door.state(NOW + 3000, ts=NOW - 3_600_000, online=False, clock="synced")  # the old boot's Will, late
    assert door_view(store, NOW + 4000)["online"] is True
    # The Will of a previous unset session is ignored too; the current session's own Will applies.
    door.state(NOW + 5000, ts=Y2000 + 5, online=False, clock="unset", boot="01d01d00")
    assert door_view(store, NOW + 6000)["online"] is True
    door.state(NOW + 7000, ts=Y2000, online=False, clock="unset", boot="b007b007")
    assert door_view(store, NOW + 8000)["online"] is False
    # A reboot into an unset clock again: the grace starts again at the new birth, not at the first one.
    door.state(NOW + 500_000, ts=Y2000, clock="unset", boot="b008b008")
    assert door_view(store, NOW + 501_000)["clock_since_ms"] == NOW + 500_000
    assert "clock_unset" not in rules(store, NOW + 501_000)


def test_a_clock_behind_the_fleets_alerts_but_a_backlog_after_an_outage_does_not(store):
    door = Door(store)
    door.state(NOW, ts=NOW)
    # An hour's outage: the backlog arrives late, but with it the door's live messages, on time.
    door.telemetry(NOW + 1000, NOW + 900)
    door.telemetry(NOW + 2000, *range(NOW - 3_600_000, NOW - 60_000, 600_000))
    assert door_view(store, NOW + 2000)["clock_lag_ms"] == 100
    assert "clock_drift" not in rules(store, NOW + 2000)
    # A door whose clock is 10 minutes behind: every message is at least that late.
    late = Door(store, boot="1a7e1a7e")
    late.state(NOW + 3000, ts=NOW - 600_000)
    for k in range(3):
        t = NOW + 10 * CLOCK_LAG_WINDOW_MS + k * CLOCK_LAG_WINDOW_MS  # a new window each time: both old ones roll out
        late.telemetry(t, t - 600_000 - 80)
    v = door_view(store, t)
    assert v["clock_lag_ms"] == 600_080 and "clock_drift" in codes(v["health"])
    drift = rules(store, t)["clock_drift"]
    assert "600 s behind" in drift["message"] and drift["details"]["drift_ms"] == 600_080


def test_a_clock_ahead_of_the_fleets_alerts_at_once_and_resolves_when_it_is_back(store):
    door = Door(store)
    door.state(NOW, ts=NOW)
    door.telemetry(NOW + 1000, NOW + 1000 + 300_000)  # sent "five minutes from now"
    assert rules(store, NOW + 1000)["clock_drift"]["details"]["drift_ms"] == -300_000
    # Corrected: once both windows holding the ahead reading have passed, it is resolved.
    for k in (1, 2):
        t = NOW + 1000 + k * CLOCK_LAG_WINDOW_MS
        door.telemetry(t, t - 50)
    assert door_view(store, t)["clock_lag_ms"] == 50
    assert "clock_drift" not in rules(store, t)


# ---------------------------------------------------------------- end to end: broker, ingest, API


def test_the_api_shows_each_devices_clock_in_the_kit_and_device_views(fleet, broker):
    pub = publisher(broker.url)
    try:
        def state(device: str, role: str, **kw) -> None:
            s = State(boot="ab12cd34", seq=0, ts=kw.pop("ts", int(time.time() * 1000)), online=True, role=role, **kw)
            pub.publish(f"popkit/v1/demo/{device}/state", encode(s), qos=1, retain=True).wait_for_publish(5)

        state("demo-agent", "agent", clock="synced")
        state(DOOR, "scanner", ts=Y2000, clock="unset", reset_cause="power")
        wait_until(lambda: fleet.ingest.metrics.states >= 2, what="both states committed")
        kit = fleet.api.get("/api/v1/kits/demo").json()
        by_id = {d["id"]: d for d in kit["devices"]}
        assert by_id["demo-agent"]["clock"] == "synced"
        assert (by_id[DOOR]["clock"], by_id[DOOR]["reset_cause"]) == ("unset", "power")
        assert "clock_unset" in {r["code"] for r in by_id[DOOR]["health"]["reasons"]}
        assert by_id["demo-power"]["clock"] is None  # the agent drives it: its clock is the agent's
        door = fleet.api.get(f"/api/v1/devices/{DOOR}").json()
        assert door["clock"] == "unset" and door["clock_since_ms"] is not None
        [summary] = [k for k in fleet.api.get("/api/v1/kits").json()["items"] if k["id"] == "demo"]
        chips = {d["id"]: d for d in summary["devices"]}
        assert chips[DOOR]["clock"] == "unset" and chips["demo-agent"]["clock"] == "synced"
    finally:
        pub.loop_stop()
        pub.disconnect()
