"""The kit's own broker and its bridge to the fleet, end to end, through an uplink outage.

Two real Mosquittos as `popkit kit provision` makes them: the kit broker (TLS, an account per
device, the ACL, the bridge) and the fleet broker (TLS, the fleet's and the bridge's accounts).
On the kit broker: the agent in this process (printer, BLE lamp, panel, the door hub) and two
ESP32 doors running the real firmware in the unix port. On the fleet broker: the fleet.

What a crew would see when the venue's internet drops: the doors still admit, the second door
still refuses a ticket the first admitted (the hub is in the kit), the printer prints, the lamp
follows its timeline, the panel's button gives a verdict. What ops would see when it returns:
everything the kit owed, once, in each device's order, at the time it happened, marked historical.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from agent.backends import open_hardware
from agent.daemon import Agent
from agent.drivers.receipt import Receipt
from agent.hub import DoorHub
from agent.link import FleetLink
from agent.statewatch import StateWatch
from kits.manifest import load_manifest
from kits.tickets import EventKey, issue
from popkit.provision import FLEET_USER, bridge_account
from simulators.kit import SimulatedKit
from simulators.scanner import ScannerSim
from tests.bridged import start_bridged
from tests.conftest import start_fleet, wait_until
from tests.device.firmware import Device
from tests.device.firmware import rom_images  # noqa: F401 - fixture
from tests.device.test_firmware_tls import as_provisioned
from tests.device.test_scanner_app import BUDGET, door, write_config
from tests.test_broker_acl import Session

KIT, EVENT = "tour", "TOUR-NIGHT"
DOORS = ("tour-door-a", "tour-door-b")
MANIFEST = """
id = "tour"
name = "Touring kit"
agent = "tour-agent"

[[devices]]
id = "tour-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:/dev/ttyUSB1"
telemetry_s = 1

[[devices]]
id = "tour-lamp"
role = "light"
model = "elk-bledom"
bus = "ble:BE:16:02:00:11:01"
telemetry_s = 1

[[devices]]
id = "tour-panel"
role = "panel"
bus = "gpio"
pins = { button = 27, red = 5, green = 6, blue = 13 }

[[devices]]
id = "tour-door-a"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "tour-door-b"
role = "scanner"
model = "esp32-gm65"
"""
SCENES = {"dark": {"levels": {}}, "red": {"levels": {"r": 255}}, "blue": {"levels": {"b": 255}}}


class KitAgent:
    """The Pi agent on its own loop in a thread (as agent/daemon.py run_agent wires it), with the hub."""

    def __init__(self, manifest, url: str, data: Path):
        data.mkdir(exist_ok=True)
        hosted = {s.id: s.role for s in manifest.devices if s.hosted}
        self.link = FleetLink(KIT, manifest.agent, "agent", url, data / "outbox.db", hosted=hosted,
                              resend_after_s=5).start()
        self.hub = DoorHub(KIT, url, data / "claims.db").start()
        self.watch = StateWatch(KIT, url).start()
        self.hw = open_hardware(manifest, SimulatedKit())
        self.agent = Agent(manifest, self.link, self.hw, self.watch, data, simulate=True)
        self.loop = asyncio.new_event_loop()

        async def main():
            try:
                await self.agent.run()
            finally:
                await self.hw.close()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(15)
        self.watch.stop()
        self.hub.stop()
        self.link.stop()


@pytest.fixture
def bridged_kit(tmp_path):
    path = tmp_path / "tour.toml"
    path.write_text(MANIFEST)
    manifest = load_manifest(path)
    net = start_bridged(tmp_path, path)
    try:
        fleet = start_fleet(net.fleet_url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(path,))
    except BaseException:
        net.close()
        raise
    fleet.store.telemetry.historical_after_ms = fleet.store.activity.historical_after_ms = 3000  # the outage here lasts seconds, not the minute a venue's would
    agent = KitAgent(manifest, net.kit_url(manifest.agent), tmp_path / "agent")
    yield dict(fleet=fleet, agent=agent, fleet_broker=net.fleet_broker, kit_broker=net.kit_broker,
               fleet_side=net.fleet_side, kit_side=net.kit_side)
    agent.stop()
    fleet.ingest.stop()
    fleet.store.close()
    net.close()


def start_door(images, tmp_path, kit_side, kit_broker, name: str, key: EventKey) -> tuple[ScannerSim, Device]:
    sim = ScannerSim()
    cfg = write_config(tmp_path / f"{name}.json", sim, kit_broker.port, tmp_path / f"{name}-flash", [key],
                       kit=KIT, device=name, hub_ms=1000)
    as_provisioned(cfg, kit_side, name, kit_broker)
    dev = Device.from_rom(images["scanner"], cfg, budget=BUDGET)
    dev.expect(r"READY", timeout=10)
    sim.wait_connected(1, timeout=10)
    return sim, dev


def stored(fleet, device: str) -> list[tuple[str, int, int, int, str]]:
    """(boot, seq, ts, received_ms, body) of every ledger row of a device, in seq order per boot."""
    with fleet.store.engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(
            "SELECT boot, seq, ts_ms, received_ms, body FROM events WHERE device_id = ?"
            " UNION ALL SELECT boot, seq, ts_ms, received_ms, body FROM telemetry WHERE device_id = ?"
            " ORDER BY 1, 2", (device, device)).all()]


def balanced(fleet, device: str) -> bool:
    """Every seq of every boot stored once, none missing: seqs 1..max of each boot, nothing else."""
    by_boot: dict[str, list[int]] = {}
    for boot, seq, *_ in stored(fleet, device):
        by_boot.setdefault(boot, []).append(seq)
    return bool(by_boot) and all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_boot.values())


def checkins(fleet, device: str) -> list[tuple[str, str, int, int]]:
    return [(json.loads(body)["data"]["ticket"], json.loads(body)["data"]["verdict"], ts, received)
            for _b, _s, ts, received, body in stored(fleet, device) if '"checkin"' in body]


def test_with_the_uplink_cut_the_kit_works_and_when_it_returns_the_fleet_gets_everything_once(
        bridged_kit, rom_images, tmp_path):  # noqa: F811
    k = bridged_kit
    fleet, agent, fleet_broker = k["fleet"], k["agent"], k["fleet_broker"]
    key = EventKey.generate(EVENT)
    now = int(time.time())
    t = {n: issue(key, EVENT, n, "GA", now - 3600, now + 3600) for n in ("T1", "T2", "T3")}
    wait_until(lambda: agent.agent.last_report is not None, 15, what="the agent's power-up self-test")
    wait_until(lambda: f"u'{bridge_account(KIT)}'" in fleet_broker.log(), 10, what="the bridge logged in")

    # The lamp's timeline arrives from the fleet over the bridge: red now, blue from `edge` (in the outage).
    edge = now + 20
    timeline = {"version": 1, "ts": now * 1000,
                "data": {"format": 1, "scenes": SCENES, "default": "dark",
                         "windows": [[now - 60, edge, "red", 10], [edge, now + 3600, "blue", 10]]}}
    ops = Session(fleet_broker.port, FLEET_USER, k["fleet_side"].accounts[FLEET_USER], k["fleet_side"].tls.ca)
    ops.c.publish(f"popkit/v1/{KIT}/tour-lamp/config", json.dumps(timeline), qos=1, retain=True).wait_for_publish(5)
    lamp = agent.hw.sims["tour-lamp"]
    wait_until(lambda: lamp.is_on and lamp.rgb == (255, 0, 0), 15, what="the lamp red, by its timeline")

    sim_a, a = start_door(rom_images, tmp_path, k["kit_side"], k["kit_broker"], DOORS[0], key)
    sim_b, b = start_door(rom_images, tmp_path, k["kit_side"], k["kit_broker"], DOORS[1], key)
    try:
        # Both doors in session at the kit broker (born after subscribing): a door still in its TLS
        # handshake asks no hub and admits alone, as a loaded CI machine once showed at door-b.
        assert all(agent.watch.wait_online(d, 15) for d in DOORS), "a door never came online at the kit broker"
        assert door(sim_a, t["T1"]) == "green"
        wait_until(lambda: [c[0] for c in checkins(fleet, DOORS[0])] == ["T1"], 15, what="T1 at the fleet, live")

        # ---- the venue's internet drops: the fleet broker is gone, the kit broker is not
        fleet_broker.kill()
        cut = time.time()
        assert cut < edge - 3, "set-up took so long that the lamp's next window began before the outage"
        assert door(sim_a, t["T2"]) == "green"
        assert door(sim_b, t["T2"]) == "red"  # the hub, in the kit, knows door-a admitted it
        assert door(sim_b, t["T3"]) == "green"
        agent.agent.queues["tour-printer"].enqueue(Receipt().text("Printed offline").cut())
        roll = agent.hw.sims["tour-printer"].roll
        wait_until(lambda: "Printed offline" in roll.text, 10, what="the receipt on paper with no uplink")
        first = agent.agent.last_report
        button = agent.hw.pin_factory.pin(27)
        button.drive_low()
        time.sleep(0.1)
        button.drive_high()
        wait_until(lambda: agent.agent.last_report is not first, 15, what="the panel's self-test with no uplink")
        assert agent.agent.last_report.status == "ready", agent.agent.last_report.problems
        wait_until(lambda: lamp.rgb == (0, 0, 255), edge - time.time() + 5, what="the lamp blue at its edge, offline")
        time.sleep(max(0.0, cut + 6 - time.time()))  # long enough that what the kit held counts as historical
        assert not [c for c in checkins(fleet, DOORS[1])], "nothing crossed a cut uplink"

        # ---- the uplink returns
        fleet_broker.start()
        wait_until(lambda: len(checkins(fleet, DOORS[0])) == 2 and len(checkins(fleet, DOORS[1])) == 2, 40,
                   what="the scans the doors held reaching the fleet")
        got_a, got_b = checkins(fleet, DOORS[0]), checkins(fleet, DOORS[1])
        assert [(c[0], c[1]) for c in got_a] == [("T1", "admitted"), ("T2", "admitted")]
        assert [(c[0], c[1]) for c in got_b] == [("T2", "already_admitted"), ("T3", "admitted")]
        # original scan times (before the uplink returned), in each door's order
        for rows in (got_a, got_b):
            assert [c[2] for c in rows] == sorted(c[2] for c in rows)
        assert all(c[2] < cut * 1000 + 30_000 and c[3] - c[2] > 3000 for c in got_a[1:] + got_b), "held and historical"
        view = {(c["ticket"], c["device_id"]): c for c in fleet.api.get(f"/api/v1/kits/{KIT}/checkins").json()}
        assert view[("T1", DOORS[0])]["historical"] is False
        assert view[("T2", DOORS[0])]["historical"] is True and view[("T3", DOORS[1])]["historical"] is True
        # everything every device owed: stored once each, none missing, and the outboxes empty
        for device in (*DOORS, "tour-agent", "tour-printer", "tour-lamp"):
            wait_until(lambda d=device: balanced(fleet, d), 30, what=f"{device}'s ledger complete")
        wait_until(lambda: len(agent.link.outbox) == 0, 30, what="the agent's outbox drained by the fleet's receipts")
        late = fleet.api.get("/api/v1/devices/tour-printer/telemetry",
                             params={"since": int(cut * 1000), "until": int(cut * 1000) + 5000}).json()["items"]
        assert late and all(r.get("historical") is True for r in late), late

        # and the fleet's commands reach the kit again, answered across the bridge
        r = fleet.api.post("/api/v1/devices/tour-printer/commands",
                           json={"action": "print", "args": {"receipt": Receipt().text("Back online").cut().to_dict()},
                                 "ttl_s": 30})
        assert r.status_code == 202, r.text
        wait_until(lambda: "Back online" in roll.text, 20, what="a fleet print after the outage")
    finally:
        for dev, sim in ((a, sim_a), (b, sim_b)):
            dev.kill()
            sim.close()
        ops.c.loop_stop()
