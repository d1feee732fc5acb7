"""Ten minutes of a kit's traffic with its uplink cut, then the uplink back: the fleet gets all of it.

The kit broker bridged to the fleet broker, as provisioned (tests/bridged.py). The kit's producers
(the agent for the power bank it hosts, a door, a lighting controller; each logged in as itself)
live through ten minutes of *simulated* time in a dozen real seconds: what they emit carries the
time it happened, ten minutes ago up to now, as if the outage had lasted that long. The fleet
broker is down all along (the venue's internet is out); then it comes back.

The ledger: every (device, boot, seq) a producer's outbox sent is stored exactly once, each
device's rows are in the order they happened, at the time they happened; readings over a minute
old on arrival are marked historical, the last minute's are not. Every outbox drains.
"""

from __future__ import annotations

import time

from agent.link import FleetLink
from kits.contract import BatteryTelemetry, DeviceTelemetry, Event
from tests.bridged import start_bridged
from tests.conftest import DEMO_KIT, start_fleet, wait_until

SIM_S, STEP_S = 600, 5  # ten minutes of the kit's life, a reading every 5 s per device
PRODUCERS = {"demo-agent": "agent", "demo-scanner-1": "scanner", "demo-lights-1": "lighting"}


def stored(store, device: str) -> list[tuple[int, int, int]]:
    """(seq, ts, received_ms) of every ledger row of ``device``, in seq order."""
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT seq, ts_ms, received_ms FROM telemetry WHERE device_id = ? UNION ALL "
            "SELECT seq, ts_ms, received_ms FROM events WHERE device_id = ? ORDER BY 1", (device, device)).all()]


def test_ten_simulated_minutes_without_uplink_reach_the_fleet_once_in_order_and_historical(tmp_path):
    net = start_bridged(tmp_path, DEMO_KIT)
    fleet = start_fleet(net.fleet_url, f"sqlite:///{tmp_path / 'fleet.db'}")
    links = {d: FleetLink("demo", d, role, net.kit_url(d), tmp_path / f"{d}.db",
                          hosted={"demo-power": "powerbank"} if role == "agent" else None).start()
             for d, role in PRODUCERS.items()}
    emitted: dict[str, list[tuple[int, int]]] = {d: [] for d in ("demo-power", "demo-scanner-1", "demo-lights-1")}
    try:
        assert all(link.connected.wait(10) for link in links.values())
        wait_until(net.bridge_logged_in, 10, what="the bridge up")
        net.fleet_broker.kill()  # the venue's internet is out

        start_ms = int(time.time() * 1000) - SIM_S * 1000
        for step in range(SIM_S // STEP_S):
            ts = start_ms + step * STEP_S * 1000
            emitted["demo-power"].append((links["demo-agent"].emit(
                "demo-power", "telemetry", BatteryTelemetry, ts=ts, source="vedirect",
                v=13.2 - step / 1000, i=-3.1, soc=80 - step / 10), ts))
            emitted["demo-scanner-1"].append((links["demo-scanner-1"].emit(
                "demo-scanner-1", "event", Event, ts=ts, kind="checkin",
                data={"event": "DEMO-NIGHT", "ticket": f"T{step:05d}", "tier": "GA", "verdict": "admitted"}), ts))
            emitted["demo-lights-1"].append((links["demo-lights-1"].emit(
                "demo-lights-1", "telemetry", DeviceTelemetry, ts=ts, uptime_s=step * STEP_S,
                heap_free=50_000, rssi=-60, outbox=0, scene="set"), ts))
            time.sleep(0.1)
        assert all(len(link.outbox) >= SIM_S // STEP_S for link in links.values()), "the kit held it all"

        net.fleet_broker.start()  # the uplink returns
        wait_until(lambda: all(len(link.outbox) == 0 for link in links.values()), 60,
                   what="every outbox drained by receipts across the bridge")
        for device, sent in emitted.items():
            rows = stored(fleet.store, device)
            assert [(seq, ts) for seq, ts, _r in rows] == sent, f"{device}: stored is not what was sent, once, in order"
            historical = [received - ts > 60_000 for _seq, ts, received in rows]
            assert historical[0] and not historical[-1], (device, rows[0], rows[-1])
        items = fleet.api.get("/api/v1/devices/demo-power/telemetry", params={"limit": 500}).json()["items"]
        assert len(items) == SIM_S // STEP_S
        marked = [i.get("historical", False) for i in items]
        assert marked[0] and not marked[-1] and marked == sorted(marked, reverse=True)
        print(f"\n10 simulated minutes: {sum(map(len, emitted.values()))} messages held and delivered once; "
              f"{fleet.ingest.metrics.duplicates} duplicate arrivals dropped by the fleet")
    finally:
        for link in links.values():
            link.stop()
        fleet.ingest.stop()
        fleet.store.close()
        net.close()
