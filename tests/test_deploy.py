"""The systemd unit that runs the agent on a kit's Pi (deploy/popkit-agent.service)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "deploy" / "popkit-agent.service"


def parse_unit(path: Path) -> configparser.ConfigParser:
    # systemd allows repeated keys (ExecStart, Environment): strict=False keeps the last one,
    # multi-value keys are checked on the raw text below.
    cp = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    cp.optionxform = str  # keys are case-sensitive in systemd
    cp.read(path)
    return cp


def test_unit_restarts_always_under_a_watchdog():
    service = parse_unit(UNIT)["Service"]
    assert service["Type"] == "notify"
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "2"
    assert service["WatchdogSec"] == "30"
    assert parse_unit(UNIT)["Unit"]["StartLimitIntervalSec"] == "0"  # never stops retrying


def test_unit_runs_popkit_agent_as_its_own_user():
    service = parse_unit(UNIT)["Service"]
    exec_start = service["ExecStart"].split()
    assert exec_start[0].startswith("/") and exec_start[0].endswith("/popkit")
    assert exec_start[1:] == ["agent", "run", "--kit", "/etc/popkit/kit.toml"]
    assert service["User"] == "popkit"
    assert set(service["SupplementaryGroups"].split()) == {"gpio", "dialout", "bluetooth"}


def test_unit_keeps_the_outbox_in_the_state_directory_and_is_hardened():
    service = parse_unit(UNIT)["Service"]
    assert service["StateDirectory"] == "popkit"
    assert "POPKIT_AGENT_DATA=/var/lib/popkit" in UNIT.read_text()
    assert service["EnvironmentFile"] == "-/etc/popkit/agent.env"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/var/lib/popkit"
    assert service["PrivateTmp"] == "yes"


def test_unit_has_no_secrets():
    text = UNIT.read_text() + (REPO / "deploy" / "agent.env.example").read_text()
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        assert "PASSWORD" not in line.upper() and "@" not in line.split("=", 1)[-1]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    # verify checks that ExecStart exists: point it at this checkout's popkit, keep the rest.
    popkit = Path(sys.executable).with_name("popkit")
    if not popkit.exists():
        pytest.skip("popkit is not installed in this venv")
    text = UNIT.read_text().replace("/opt/popkit/venv/bin/popkit", str(popkit))
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if UNIT.name in line]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr


def test_agent_env_example_is_what_provisioning_writes_for_the_pi():
    from popkit.kitfiles import agent_env

    def settings(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]

    assert settings((REPO / "deploy" / "agent.env.example").read_text()) == settings(agent_env(8883, True))
