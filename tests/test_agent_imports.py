"""The agent imports, and refuses clearly, on a machine with no Bluetooth stack and no GPIO."""

from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys\nfor m in ('bleak', 'gpiozero', 'lgpio', 'RPi', 'dbus_fast'):\n    sys.modules[m] = None\n"


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK + code], capture_output=True, text=True, timeout=60)


def test_the_agent_imports_without_bleak_or_gpiozero():
    r = run("import agent.daemon, agent.kitup, agent.kitdown, agent.backends, agent.checks, agent.drivers.jbd, "
            "agent.drivers.lamp, agent.drivers.relay, agent.panel\nprint('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_real_gpio_missing_is_a_named_problem_not_a_simulator():
    r = run("from agent.backends import open_hardware\n"
            "from kits.manifest import parse_manifest\n"
            "m = parse_manifest('id=\"k\"\\nname=\"n\"\\n[[devices]]\\nid=\"flood\"\\nrole=\"light\"\\nbus=\"gpio:17\"\\n')\n"
            "hw = open_hardware(m)\n"
            "print(hw.simulated, sorted(hw.lights), hw.problems['flood'][:60])")
    assert r.returncode == 0, r.stderr
    simulated, lights, why = r.stdout.strip().split(" ", 2)
    assert simulated == "False" and lights == "[]" and why, r.stdout
