"""`popkit device build|run|flash`: the deploy manifests drive the build, and a role runs in the unix port."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from popkit import firmware
from simulators.dmx import DmxReceiver
from simulators.pwm import PwmReceiver
from tests.conftest import wait_until


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


def test_flash_dry_run_lists_the_mpremote_calls(tmp_path):
    cfg = tmp_path / "scanner.json"
    cfg.write_text("{}")
    wifi = tmp_path / "wifi.json"
    wifi.write_text('{"ssid": "kit-7", "password": "generated-at-provisioning"}')
    r = popkit("device", "flash", "--role", "scanner", "--port", "/dev/ttyUSB0", "--config", str(cfg),
               "--wifi", str(wifi), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert all(line.startswith("mpremote connect /dev/ttyUSB0 ") for line in lines)
    assert any(line.endswith(":board.mpy") for line in lines) and any(line.endswith(":scanner.json") for line in lines)
    assert any(line.endswith(":wifi.json") for line in lines)
    assert lines[-1].endswith("reset")
    r = popkit("device", "flash", "--role", "scanner", "--port", "/dev/ttyUSB0", "--config", str(tmp_path / "nope.json"))
    assert r.returncode == 2 and "nope.json" in r.stderr
