"""`popkit device flash --root DIR`, then the unix-port firmware booted from DIR with no config argument,
the way an ESP32 boots /main.py: `cd DIR && micropython main.py`.

What a crew would see: a door flashed from its provisioned device file logs in to the kit broker as
itself (TLS, the kit's ACL), admits a ticket and the check-in reaches the fleet; a lighting controller
flashed from its provisioned file obeys the fleet's scene on its outputs. Everything either writes at
run time lands in the tree's data/ (board.flash_dir()).

The simulators stand in for the hardware: the only thing the unix tree's config adds to the
provisioned file is where they listen (`--sim`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kits.manifest import load_manifest
from kits.tickets import EventKey, issue
from popkit.broker import MosquittoBroker, mosquitto_binary
from popkit.provision import provision
from simulators.dmx import DmxReceiver
from simulators.pwm import PwmReceiver
from simulators.scanner import ScannerSim
from tests.conftest import DEMO_KIT, start_fleet, wait_until
from tests.device.firmware import Device
from tests.device.test_scanner_app import EVENT, SCANNER, door, stored

LIGHTS = "demo-lights-1"
# The heap of a unix process that loads its modules as .mpy into the heap (as an ESP32 does from
# its filesystem): code included, unlike the ROMFS runs that hold the firmware to 64 KB.
HEAP = "256k"


def popkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popkit.cli", *args], capture_output=True, text=True, timeout=180)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def boot(tree: Path) -> Device:
    return Device.from_tree(tree, HEAP)


@pytest.fixture
def kit(tmp_path):
    """The demo kit as provisioned (TLS, a login per device, the ACL), its broker and the fleet on it."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    key = EventKey.generate(EVENT)
    port = free_port()
    creds = provision(load_manifest(DEMO_KIT), tmp_path / "provision", broker_port=port, event_keys=(key,))
    broker = MosquittoBroker(port=port, data_dir=tmp_path / "broker", password_file=creds.passwd,
                             acl_file=creds.acl, tls=creds.tls).start()
    fleet = start_fleet(f"mqtts://127.0.0.1:{port}?account={creds.fleet_file}", f"sqlite:///{tmp_path / 'fleet.db'}")
    yield creds, key, fleet
    fleet.ingest.stop()
    fleet.store.close()
    broker.close()


def flash_root(tmp_path: Path, role: str, device_file: Path, sim: dict) -> Path:
    (tmp_path / f"{role}-sim.json").write_text(json.dumps(sim))
    root = tmp_path / f"{role}-root"
    r = popkit("device", "flash", "--role", role, "--root", str(root), "--config", str(device_file),
               "--sim", str(tmp_path / f"{role}-sim.json"))
    assert r.returncode == 0, r.stderr
    return root


def test_a_door_booted_from_its_flashed_tree_admits_a_ticket_and_the_fleet_has_it(kit, tmp_path):
    creds, key, fleet = kit
    sim = ScannerSim()
    root = flash_root(tmp_path, "scanner", creds.device_file(SCANNER), {"uart": ["127.0.0.1", sim.port]})
    assert json.loads((root / "scanner.json").read_text())["broker"] == \
        json.loads(creds.device_file(SCANNER).read_text())["broker"], "the provisioned login, whole"
    now = int(time.time())
    ticket = issue(key, EVENT, "T00001", "GA", now - 3600, now + 3600)
    dev = boot(root)
    try:
        dev.expect(r"READY", timeout=20)
        sim.wait_connected(1, timeout=10)
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{SCANNER}").json().get("online"), 20,
                   what="the door online in the fleet, logged in with its flashed file")
        assert door(sim, ticket) == "green"
        assert door(sim, ticket) == "red", "the same ticket again: refused at this door"
        wait_until(lambda: len(stored(fleet)) == 2, 15, what="both scans in the fleet")
        assert [d["ticket"] for _b, _s, _ts, d in stored(fleet)] == ["T00001", "T00001"]
    finally:
        dev.kill()
        sim.close()
    # what it wrote is under data/ (board.flash_dir()), nothing beside the tree's own files but the
    # boot stage's fast-boot count (device/boot/abboot.py: "boots", once the door has been up 10 s)
    assert (root / "data" / "outbox").is_dir() and (root / "data" / "gate").is_dir()
    assert sorted(p.name for p in root.iterdir() if not p.name.endswith(".mpy") and p.name != "boots") == [
        "a", "data", "main.py", "scanner.json", "slot"]
    assert not list((root / "a").glob("*.json")) and not (root / "trial").exists()


def test_a_controller_booted_from_its_flashed_tree_drives_its_outputs_for_the_fleet(kit, tmp_path):
    creds, _key, fleet = kit
    provisioned = json.loads(creds.device_file(LIGHTS).read_text())
    assert provisioned["outputs"]["pwm"]["pins"] == [25, 26, 27, 14], "the demo manifest's strip"
    pwm, dmx = PwmReceiver(), DmxReceiver()
    root = flash_root(tmp_path, "lighting", creds.device_file(LIGHTS),
                      {"pwm": ["127.0.0.1", pwm.port], "dmx": ["127.0.0.1", dmx.port], "gamma": None})
    dev = boot(root)
    try:
        dev.expect(r"SCENE", timeout=20)  # power-up: the outputs written before any network
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}").json().get("online"), 20,
                   what="the controller online in the fleet, logged in with its flashed file")
        r = fleet.api.post(f"/api/v1/devices/{LIGHTS}/commands",
                           json={"action": "scene", "args": {"levels": {"r": 200, "dmx": {"1": [255, 128]}}}})
        assert r.status_code == 202, r.text
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}/commands").json()[0]["status"] == "ok", 10,
                   what="the controller's ack of the scene")
        wait_until(lambda: pwm.duties()[0] == 200 * 257, 5, what="red at 200 on the strip")
        wait_until(lambda: dmx.last() is not None and dmx.last().slots[:2] == bytes([255, 128]), 5,
                   what="DMX slots 1-2 at 255, 128")
        assert len(dmx.last().slots) == provisioned["dmx_slots"], "the universe the manifest gave it"
    finally:
        dev.kill()
        pwm.close()
        dmx.close()
    assert (root / "data" / "outbox").is_dir(), "its outbox and timeline under data/"
