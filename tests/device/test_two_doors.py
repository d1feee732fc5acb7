"""Two doors, one ticket: the scanners ask the kit's hub (agent/hub.py) before they admit.

Both scanners are the real firmware (device/apps/scanner/main.py) in the unix-port MicroPython,
each with its simulated QR module; the hub is the agent's, on a test-spawned Mosquitto; the
fleet reconciles. With the hub up, the second door refuses a ticket the first admitted; with the
hub gone both admit, say so (hub_checked false), and the fleet's attendance flags the double
entry with both scans. Once back, the hub has learned what the doors admitted without it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.hub import DoorHub
from kits.tickets import EventKey, issue
from simulators.scanner import ScannerSim
from tests.conftest import start_fleet, wait_until
from tests.device.firmware import Device
from tests.device.firmware import rom_images  # noqa: F401 - fixture
from tests.device.test_scanner_app import BUDGET, door, scans, write_config

KIT = "doors"
EVENT = "TWO-DOORS"
MANIFEST = """
id = "doors"
name = "Two doors"
agent = "doors-agent"

[[devices]]
id = "door-a"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "door-b"
role = "scanner"
model = "esp32-gm65"
"""


@pytest.fixture
def kit_fleet(broker, tmp_path):
    manifest = tmp_path / "doors.toml"
    manifest.write_text(MANIFEST)
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(manifest,))
    yield f
    f.ingest.stop()
    f.store.close()


def start_door(rom_images: dict[str, Path], tmp_path: Path, broker, name: str, key: EventKey) -> tuple[ScannerSim, Device]:
    sim = ScannerSim()
    cfg = write_config(tmp_path / f"{name}.json", sim, broker.port, tmp_path / f"{name}-flash", [key],
                       kit=KIT, device=name)
    dev = Device.from_rom(rom_images["scanner"], cfg, budget=BUDGET)
    dev.expect(r"READY", timeout=10)
    sim.wait_connected(1, timeout=10)
    return sim, dev


def checkins(fleet, device: str) -> list[dict]:
    with fleet.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT body FROM events WHERE device_id = ? AND kind = 'checkin' ORDER BY seq",
                                    (device,)).all()
    return [json.loads(b)["data"] for (b,) in rows]


def test_the_second_door_refuses_through_the_hub_and_without_it_the_fleet_flags_both(
        broker, kit_fleet, rom_images, collect, tmp_path):  # noqa: F811
    key = EventKey.generate(EVENT)
    now = int(time.time())
    t = {n: issue(key, EVENT, n, "GA", now - 3600, now + 3600) for n in ("T1", "T2", "T3", "T4")}
    births = collect(f"popkit/v1/{KIT}/+/state")
    hub = DoorHub(KIT, broker.url, tmp_path / "claims.db").start()
    assert hub.ready.wait(10)
    sim_a, a = start_door(rom_images, tmp_path, broker, "door-a", key)
    sim_b, b = start_door(rom_images, tmp_path, broker, "door-b", key)
    try:
        # A door is born once it has subscribed to the hub's answers: both are on the kit's broker.
        wait_until(lambda: len([p for p in births.on("/state") if b'"online":true' in p]) >= 2, 10,
                   what="both doors online")

        # The hub is up: the first door admits, the second refuses at once.
        assert door(sim_a, t["T1"]) == "green"
        assert door(sim_b, t["T1"]) == "red"
        assert door(sim_a, t["T4"]) == "green"
        assert hub.counts["admitted"] == 2 and hub.counts["refused"] == 1

        # The hub is gone (the agent is down): each door decides alone and flags it.
        hub.stop()
        assert door(sim_a, t["T2"]) == "green"
        assert door(sim_b, t["T2"]) == "green"
        assert door(sim_b, t["T3"]) == "green"

        # The hub is back and has learned T3 from door-b's check-in: door-a refuses it.
        hub = DoorHub(KIT, broker.url, tmp_path / "claims.db").start()
        assert hub.ready.wait(10)
        wait_until(lambda: hub.counts["learned"] >= 3, 15, what="the hub learning the doors' lone admissions")
        time.sleep(5.5)  # door-a asked a silent hub for T2: it waits out its quiet time before asking again
        assert door(sim_a, t["T3"]) == "red"
        assert door(sim_b, t["T4"]) == "red"  # a claim made before the hub restarted is still held

        wait_until(lambda: len(checkins(kit_fleet, "door-a")) == 4 and len(checkins(kit_fleet, "door-b")) == 4, 20,
                   what="all eight check-ins in the fleet")
    finally:
        hub.stop()
        sim_a.close()
        sim_b.close()

    assert [v for v, *_ in scans(a)] == ["admitted", "admitted", "admitted", "already_admitted"]
    assert [v for v, *_ in scans(b)] == ["already_admitted", "admitted", "admitted", "already_admitted"]
    in_a, in_b = checkins(kit_fleet, "door-a"), checkins(kit_fleet, "door-b")
    assert in_b[0] == {"event": EVENT, "ticket": "T1", "tier": "GA", "verdict": "already_admitted",
                       "first_device": "door-a"}
    assert [d.get("hub_checked", True) for d in in_a] == [True, True, False, True]
    assert [d.get("hub_checked", True) for d in in_b] == [True, False, False, True]
    assert in_a[3]["first_device"] == "door-b" and in_b[3]["first_device"] == "door-a"

    att = kit_fleet.api.get(f"/api/v1/events/{EVENT}/attendance").json()
    assert att["admitted"] == 4  # T1, T2, T3, T4: T2 was let in twice
    assert att["by_scanner"] == {"door-a": {"admitted": 3, "refused": 1}, "door-b": {"admitted": 2, "refused": 2}}
    [double] = att["double_entries"]
    assert double["ticket"] == "T2"
    assert sorted((s["device_id"], s["hub_checked"]) for s in double["scans"]) == [("door-a", False), ("door-b", False)]
    a.kill()
    b.kill()
