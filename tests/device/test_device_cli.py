"""`popkit device build|run|flash`: the deploy manifests drive the build, a role runs in the unix port, and a
flash writes what the board reads (the tree itself: test_flash_tree.py, test_flash_root.py)."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys

from popkit import firmware
from simulators.dmx import DmxReceiver
from simulators.pwm import PwmReceiver
from tests.conftest import DEMO_KIT, wait_until
from tests.device.test_flash_tree import ESP32_BOARD, board_paths, board_writes


def popkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popkit.cli", *args], capture_output=True, text=True, timeout=120)


def test_build_compiles_every_module_each_manifest_names_for_the_unix_port(tmp_path):
    for role in firmware.ROLES:
        manifest = firmware.read_manifest(role, "unix")
        out = firmware.build(role, "unix", tmp_path / role)
        assert {p.stem for p in manifest.sources} == {p.stem for p in out.glob("*.mpy")}
        assert {"board", "link", "pkmqtt", "main"} <= {p.stem for p in out.glob("*.mpy")}
        assert manifest.version.startswith(role)


def test_esp32_build_cross_compiles_both_roles_for_the_xtensa_core(tmp_path):
    r = popkit("device", "build", "--port", "esp32")
    assert r.returncode == 0, r.stderr
    for role in firmware.ROLES:
        out = firmware.REPO / "build" / "device" / "esp32" / role
        names = {p.stem for p in out.glob("*.mpy")}
        assert {"board", "main", "link", "pkmqtt", f"{role}_hw"} <= names


def test_a_missing_module_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(firmware, "DEVICE", tmp_path)  # an empty device tree: nothing to build from
    (tmp_path / "manifest_lighting.py").write_text('metadata(version="0.0.1")\nmodule("gone.py", base_path="lib")\n')
    try:
        firmware.build("lighting", "unix", tmp_path / "out")
    except firmware.FirmwareError as exc:
        assert "gone.py" in str(exc)
    else:
        raise AssertionError("a missing module built")


def test_device_run_starts_the_lighting_role_in_micropython(tmp_path, broker):
    pwm, dmx = PwmReceiver(), DmxReceiver()
    cfg = tmp_path / "lighting.json"
    (tmp_path / "flash").mkdir()
    cfg.write_text(json.dumps({"kit": "demo", "device": "demo-lights-1", "broker": ["127.0.0.1", broker.port],
                               "dmx_slots": 8, "state_dir": str(tmp_path / "flash"), "pwm": ["127.0.0.1", pwm.port],
                               "dmx": ["127.0.0.1", dmx.port], "telemetry_s": 1}))
    proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "device", "run", "--role", "lighting", "--config",
                             str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Power-up writes the outputs (dark: nothing scheduled yet) before any network.
        wait_until(lambda: pwm.current() is not None, timeout=20, what="the controller's PWM outputs")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        pwm.close()
        dmx.close()


def test_flash_dry_run_lists_mpremote_calls_that_write_the_tree_the_board_boots(tmp_path):
    """Read as a board would: every file the calls write, at the path the ESP32 board and the app read."""
    wifi = tmp_path / "wifi.json"
    wifi.write_text('{"ssid": "kit-7", "password": "generated-at-provisioning"}')
    r = popkit("kit", "provision", str(DEMO_KIT), "--out", str(tmp_path / "prov"), "--wifi", str(wifi))
    assert r.returncode == 0, r.stderr
    device_file = tmp_path / "prov" / "devices" / "demo-scanner-1.json"
    r = popkit("device", "flash", "--role", "scanner", "--port", "/dev/ttyUSB0", "--config", str(device_file),
               "--dry-run")
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(line) for line in r.stdout.splitlines()]
    assert cmds[0][3:] == ["fs", "ls", ":"], "what the board holds is looked at before anything is written"
    written, order = board_writes(cmds)
    config_path, flash_dir, _ = board_paths(ESP32_BOARD)
    modules = {f"/a/{src.stem}.mpy" for src in firmware.read_manifest("scanner", "esp32").sources
               if src.parent.parent.name != "apps"}
    # the boot stage (main.py, abboot, safemode) and the pointer at the root, the app in slot a
    assert set(written) == {config_path("scanner"), "/main.py", "/abboot.mpy", "/safemode.mpy", "/slot",
                            "/a/app_main.mpy"} | modules
    assert order[-1] == "/main.py" and cmds[-1][3:] == ["reset"]
    r = popkit("device", "flash", "--role", "scanner", "--port", "/dev/ttyUSB0", "--config", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and f"{tmp_path / 'nope.json'}: no such file" in r.stderr
