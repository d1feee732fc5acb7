"""`popkit kit up --simulate`: the crew's power-up, as a process, on a whole simulated kit.

Every part speaks its real protocol (ESC/POS and VE.Direct on ptys, ELK-BLEDOM through the
simulated bleak backend, relays and the panel on gpiozero's MockFactory), the scanner and the
lighting controller are the real firmware in the unix-port MicroPython, on a test-spawned
Mosquitto. The exit code, the terminal's words and the readiness event the fleet gets agree.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kits.contract import decode
from tests.conftest import wait_until

KIT = """
id = "tk"
name = "Test kit"
agent = "tk-agent"

[event]
ends = {ends}

[[devices]]
id = "tk-power"
role = "powerbank"
model = "victron-smartshunt"
bus = "serial:/dev/ttyUSB0"
expect = {{ min_soc = 50 }}

[[devices]]
id = "tk-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:/dev/ttyUSB1"

[[devices]]
id = "tk-door"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "tk-stage"
role = "lighting"
model = "esp32-pwm-dmx"

[[devices]]
id = "tk-flood"
role = "light"
model = "relay"
bus = "gpio:17"
expect = {{ safety = true }}

[[devices]]
id = "tk-lamp"
role = "light"
model = "elk-bledom"
bus = "ble:BE:16:02:00:11:01"

[[devices]]
id = "tk-panel"
role = "panel"
bus = "gpio"
pins = {{ button = 27, red = 5, green = 6, blue = 13 }}
"""


@pytest.fixture
def manifest(tmp_path) -> Path:
    ends = (datetime.now(timezone.utc) + timedelta(hours=5)).replace(microsecond=0).isoformat()
    path = tmp_path / "kit.toml"
    path.write_text(KIT.format(ends=ends))
    return path


def kit_up(manifest: Path, broker, tmp_path: Path, scenario: str = "") -> tuple[int, str, float]:
    cmd = [sys.executable, "-m", "popkit.cli", "kit", "up", str(manifest), "--simulate", "--mqtt", broker.url,
           "--data", str(tmp_path / "agent")]
    if scenario:
        cmd += ["--scenario", scenario]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout, time.monotonic() - t0


def readiness(seen) -> dict:
    wait_until(lambda: seen.on("tk-agent/event"), 10, what="the readiness event")
    ev = decode("event", seen.on("tk-agent/event")[-1])
    assert ev.kind == "readiness"
    return ev.data


def test_a_healthy_kit_is_ready_in_seconds_and_says_so_to_the_fleet(manifest, broker, collect, tmp_path):
    seen = collect("popkit/v1/tk/+/event")
    code, out, took = kit_up(manifest, broker, tmp_path)
    assert code == 0, out
    assert "Test kit: READY" in out
    for words in ("online, firmware scanner-0.3.1", "online, firmware lighting-0.4.1", "test label printed",
                  "flashed", "12."):
        assert words in out, (words, out)
    assert readiness(seen) == {"status": "ready", "problems": [], "took_ms": readiness(seen)["took_ms"]}
    print(f"\nkit up, healthy simulated kit: ready in {took:.1f} s (process start to exit)")
    assert took < 20  # the bench measures it; this only catches a hang


def test_paper_out_is_not_ready_with_the_fix(manifest, broker, collect, tmp_path):
    seen = collect("popkit/v1/tk/+/event")
    code, out, _ = kit_up(manifest, broker, tmp_path, "paper=out")
    assert code == 2, out
    assert "Test kit: NOT READY" in out and "tk-printer: paper out, load a roll" in out
    data = readiness(seen)
    assert data["status"] == "not_ready"
    assert data["problems"] == [{"device": "tk-printer", "severity": "fault", "what": "paper out", "fix": "load a roll"}]


def test_a_battery_that_will_not_last_to_the_end_is_degraded(manifest, broker, collect, tmp_path):
    seen = collect("popkit/v1/tk/+/event")
    code, out, _ = kit_up(manifest, broker, tmp_path, "soc=60,load=30")  # ~2 h at 30 A; 5 h to go
    assert code == 1, out
    assert "Test kit: DEGRADED" in out
    [p] = readiness(seen)["problems"]
    assert p["device"] == "tk-power" and p["severity"] == "warning"
    assert p["what"].startswith("will not last to the event's end") and p["fix"] == "charge or swap the pack, or cut the load"


def test_a_missing_scanner_is_not_ready(manifest, broker, collect, tmp_path):
    seen = collect("popkit/v1/tk/+/event")
    code, out, _ = kit_up(manifest, broker, tmp_path, "vanish=tk-door")
    assert code == 2, out
    assert "scanner tk-door is not online" in out and "online, firmware lighting-0.4.1" in out
    assert [p["device"] for p in readiness(seen)["problems"]] == ["tk-door"]


def test_a_bad_manifest_or_scenario_is_refused_naming_it(tmp_path, broker):
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "tk"\nname = "x"\n[[devices]]\nid = "p"\nrole = "printer"\nbus = "ble:AA:BB:CC:DD:EE:FF"\n')
    r = subprocess.run([sys.executable, "-m", "popkit.cli", "kit", "up", str(bad), "--simulate"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 3 and "bad.toml: devices[0] ('p'): bus: a printer takes serial:..." in r.stderr
    ok = tmp_path / "ok.toml"
    ok.write_text('id = "tk"\nname = "x"\n')
    r = subprocess.run([sys.executable, "-m", "popkit.cli", "kit", "up", str(ok), "--simulate", "--scenario", "paper=wet"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "'paper=wet'" in r.stderr  # names the bad part
