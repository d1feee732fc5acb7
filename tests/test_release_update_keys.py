"""Each ESP32's update key from ``popkit kit provision`` (popkit/provision.py, popkit/kitfiles.py):
32 random bytes in its own device file, all of them in the Pi's /etc/popkit/update-keys.json (0600,
the agent's), kept across provisioning and rotation, gone on revocation; and a device file
holding one still flashes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from agent.updates.keys import read_keys
from kits.manifest import load_manifest
from kits.release import device_tag
from popkit.cli import main
from popkit.flashtree import load_device_file
from tests.conftest import DEMO_KIT

DOOR, LIGHTS, AGENT, PRINTER = "demo-scanner-1", "demo-lights-1", "demo-agent", "demo-printer"


def _provision(out: Path, *extra: str) -> None:
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(out), *extra]) == 0


def _device_keys(out: Path) -> dict[str, str]:
    keys = {}
    for f in (out / "devices").glob("*.json"):
        cfg = json.loads(f.read_text())
        if "update_key" in cfg:
            keys[cfg["device"]] = cfg["update_key"]
    return keys


def _pi_keys(out: Path) -> dict[str, str]:
    return json.loads((out / "pi" / "root" / "etc" / "popkit" / "update-keys.json").read_text())


def test_every_esp32_gets_its_own_update_key_and_the_pi_gets_them_all(tmp_path: Path):
    out = tmp_path / "p"
    _provision(out)
    manifest = load_manifest(DEMO_KIT)
    esp32s = {s.id for s in manifest.devices if s.role in ("scanner", "lighting") and not s.hosted}
    assert {DOOR, LIGHTS} <= esp32s
    keys = _device_keys(out)
    assert set(keys) == esp32s  # not the agent, not a hosted printer or power bank
    assert AGENT not in keys and PRINTER not in keys
    assert all(len(bytes.fromhex(k)) == 32 for k in keys.values())
    assert len(set(keys.values())) == len(keys)  # one key per device: a leaked key opens one board
    assert _pi_keys(out) == keys
    plan = json.loads((out / "pi" / "files.json").read_text())
    entry = next(e for e in plan["files"] if e["path"] == "/etc/popkit/update-keys.json")
    assert (entry["owner"], entry["group"], entry["mode"]) == ("popkit", "popkit", "0600")
    staged = out / "pi" / "root" / "etc" / "popkit" / "update-keys.json"
    assert stat.S_IMODE(staged.stat().st_mode) == 0o600
    # The agent's reader takes the file as written (it refuses one others can read).
    assert {d: k.hex() for d, k in read_keys(staged).items()} == keys
    # What the agent tags with is what the device checks with.
    door_key = bytes.fromhex(json.loads((out / "devices" / f"{DOOR}.json").read_text())["update_key"])
    assert device_tag(door_key, b"{}") == device_tag(read_keys(staged)[DOOR], b"{}")


def test_update_keys_are_kept_rotated_and_revoked(tmp_path: Path):
    out = tmp_path / "p"
    _provision(out)
    first = _device_keys(out)
    _provision(out)  # nothing asked: the boards keep the keys they were flashed with
    assert _device_keys(out) == first and _pi_keys(out) == first
    door_password = json.loads((out / "devices" / f"{DOOR}.json").read_text())["broker"]["password"]
    _provision(out, "--rotate", DOOR)  # a rotation is of the broker password; the update key stays
    assert json.loads((out / "devices" / f"{DOOR}.json").read_text())["broker"]["password"] != door_password
    assert _device_keys(out) == first and _pi_keys(out) == first
    _provision(out, "--revoke", LIGHTS)
    assert LIGHTS not in _pi_keys(out) and LIGHTS not in _device_keys(out)
    assert _pi_keys(out)[DOOR] == first[DOOR]
    _provision(out)  # the controller, still in the manifest, is back with a new account: and a new key
    assert _pi_keys(out)[LIGHTS] != first[LIGHTS] and _device_keys(out) == _pi_keys(out)


def test_a_device_file_with_its_update_key_flashes(tmp_path: Path):
    out = tmp_path / "p"
    _provision(out)
    for device, role in ((DOOR, "scanner"), (LIGHTS, "lighting")):
        cfg = load_device_file(role, out / "devices" / f"{device}.json", "unix")
        assert len(bytes.fromhex(cfg["update_key"])) == 32
