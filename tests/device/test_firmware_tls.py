"""The firmware as `popkit kit provision` leaves it: the real MicroPython, logged in as itself, over
TLS to a broker holding the kit's ACL, verifying that broker with the kit's CA; the fleet and the
agent's door hub on the same broker through their own account files.

What a crew would see: with its provisioned config a door scans, the hub answers and the check-in
reaches the fleet; a controller obeys the fleet's scene command. A device flashed with another kit's
CA (a broker posing as ours) or a revoked password never gets in, and the door still decides at once.
"""

from __future__ import annotations

import json
import time

import pytest

from agent.hub import DoorHub
from kits.manifest import load_manifest
from kits.tickets import EventKey, issue
from popkit.broker import MosquittoBroker, mosquitto_binary
from popkit.provision import provision
from simulators.pwm import PwmReceiver
from simulators.scanner import ScannerSim
from tests.conftest import DEMO_KIT, start_fleet, wait_until
from tests.device.firmware import Device, rom_images  # noqa: F401 - fixture
from tests.device.test_scanner_app import BUDGET, EVENT, SCANNER, door, stored, write_config

LIGHTS = "demo-lights-1"


def logged_in(broker, device: str) -> bool:
    """Mosquitto's connection log names the account of every client it let in."""
    return any("New client connected" in ln and f"u'demo.{device}'" in ln for ln in broker.log().splitlines())


@pytest.fixture
def kit(tmp_path):
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    creds = provision(load_manifest(DEMO_KIT), tmp_path / "provision")
    broker = MosquittoBroker(data_dir=tmp_path / "broker", password_file=creds.passwd, acl_file=creds.acl,
                             tls=creds.tls).start()
    yield creds, broker
    broker.close()


def as_provisioned(cfg_path, creds, device: str, broker, **broker_over) -> None:
    """Put the device's provisioned broker block (login, TLS, CA) into a test config, on the test's port."""
    cfg = json.loads(cfg_path.read_text())
    mine = json.loads(creds.device_file(device).read_text())["broker"]
    assert mine["tls"] and mine["ca"].startswith("-----BEGIN CERTIFICATE-----")
    timing = cfg["broker"] if isinstance(cfg["broker"], dict) else {}
    cfg["broker"] = {**timing, **mine, "port": broker.port, **broker_over}
    cfg_path.write_text(json.dumps(cfg))


def test_provisioned_firmware_speaks_tls_as_itself_end_to_end(kit, rom_images, tmp_path):  # noqa: F811
    creds, broker = kit
    fleet = start_fleet(f"mqtts://127.0.0.1:{broker.port}?account={creds.fleet_file}",
                        f"sqlite:///{tmp_path / 'fleet.db'}")
    hub = DoorHub("demo", f"mqtts://127.0.0.1:{broker.port}?account={creds.device_file('demo-agent')}",
                  tmp_path / "claims.db").start()
    sim, pwm = ScannerSim(), PwmReceiver()
    key = EventKey.generate(EVENT)
    now = int(time.time())
    tickets = [issue(key, EVENT, f"T{n}", "GA", now - 3600, now + 3600) for n in range(3)]
    dev = lights = None
    try:
        assert hub.ready.wait(10), "the hub did not log in with the agent's account file"
        cfg = write_config(tmp_path / "scanner.json", sim, broker.port, tmp_path / "flash", [key], hub_ms=1000)
        as_provisioned(cfg, creds, SCANNER, broker)
        n = sim.connections
        dev = Device.from_rom(rom_images["scanner"], cfg, budget=BUDGET)
        dev.expect(r"READY", timeout=10)
        sim.wait_connected(n + 1, timeout=10)
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{SCANNER}").json().get("online"), 15,
                   what="the scanner online in the fleet, over TLS")
        for t in tickets:
            assert door(sim, t) == "green"
        assert door(sim, tickets[0]) == "red"
        wait_until(lambda: len(stored(fleet)) == 4, 15, what="4 check-ins in the fleet")
        assert all(d.get("hub_checked", True) for _b, _s, _ts, d in stored(fleet)), "the hub answered each claim"
        assert logged_in(broker, SCANNER), "the broker's word that the door logged in as itself"

        lcfg = tmp_path / "lighting.json"
        lcfg.write_text(json.dumps({"kit": "demo", "device": LIGHTS, "broker": {"keepalive": 5},
                                    "state_dir": str(tmp_path / "lflash"), "pwm": ["127.0.0.1", pwm.port],
                                    "gamma": None, "telemetry_s": 1, "dmx_slots": 24}))
        (tmp_path / "lflash").mkdir()
        as_provisioned(lcfg, creds, LIGHTS, broker)
        lights = Device.from_rom(rom_images["lighting"], lcfg, budget=64 * 1024)
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}").json().get("online"), 15,
                   what="the controller online in the fleet, over TLS")
        r = fleet.api.post(f"/api/v1/devices/{LIGHTS}/commands",
                           json={"action": "scene", "args": {"levels": {"r": 200}}})
        assert r.status_code == 202, r.text
        wait_until(lambda: fleet.api.get(f"/api/v1/devices/{LIGHTS}/commands").json()[0]["status"] == "ok", 10,
                   what="the controller's ack of the scene")
        wait_until(lambda: pwm.duties()[0] == 200 * 257, 5, what="red at 200 on the strip")
    finally:
        for d in (dev, lights):
            if d is not None:
                d.kill()
        sim.close()
        pwm.close()
        hub.stop()
        fleet.ingest.stop()
        fleet.store.close()


@pytest.mark.parametrize("what", ["another kit's CA", "a revoked password"])
def test_a_device_that_cannot_trust_or_be_trusted_stays_out_and_still_decides(
        kit, rom_images, tmp_path, what):  # noqa: F811
    creds, broker = kit
    sim = ScannerSim()
    key = EventKey.generate(EVENT)
    now = int(time.time())
    cfg = write_config(tmp_path / "scanner.json", sim, broker.port, tmp_path / "flash", [key], hub_ms=300)
    if what == "another kit's CA":
        other = provision(load_manifest(DEMO_KIT), tmp_path / "elsewhere")
        as_provisioned(cfg, creds, SCANNER, broker, ca=other.tls.ca.read_text())
    else:
        as_provisioned(cfg, creds, SCANNER, broker)
        provision(load_manifest(DEMO_KIT), creds.folder, revoke=(SCANNER,))
        broker.reload()
    dev = Device.from_rom(rom_images["scanner"], cfg, budget=BUDGET)
    try:
        dev.expect(r"READY", timeout=10)
        sim.wait_connected(1, timeout=10)
        time.sleep(2.0)  # several connect attempts (backoff 200..1000 ms)
        assert door(sim, issue(key, EVENT, "T1", "GA", now - 60, now + 3600)) == "green"
        assert not logged_in(broker, SCANNER), "the door got in"
    finally:
        dev.kill()
        sim.close()
