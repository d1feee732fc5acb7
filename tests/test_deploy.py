"""The systemd unit that runs the agent on a kit's Pi (deploy/popkit-agent.service)."""

from __future__ import annotations

import configparser
import json
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

    assert settings((REPO / "deploy" / "agent.env.example").read_text()) == settings(
        agent_env(8883, True, update_listen="10.42.0.1", release_pub=True))


UPDATE_UNIT = REPO / "deploy" / "popkit-agent-update@.service"
POLKIT_RULE = REPO / "deploy" / "50-popkit-poweroff.rules"


def test_the_self_update_unit_runs_the_updater_on_the_cached_bundle_as_root():
    from agent.updates.offers import RESULT_FILE, SELFUPDATE_UNIT
    from agent.settings import SERVICE_DATA

    service = parse_unit(UPDATE_UNIT)["Service"]
    assert service["Type"] == "oneshot" and "User" not in service  # root: it writes /opt/popkit
    argv = service["ExecStart"].split()
    assert argv[:4] == ["/opt/popkit/venv/bin/python", "-m", "agent.updates.selfupdate", "--bundle"]
    opts = dict(zip(argv[3::2], argv[4::2]))
    # the agent's cache folder for that release, the key the agent checked it with, the file it reads back
    assert opts == {"--bundle": f"{SERVICE_DATA}/updates/agent-%i", "--pubkey": "/etc/popkit/release.pub",
                    "--result": f"{SERVICE_DATA}/updates/{RESULT_FILE}"}
    assert SELFUPDATE_UNIT.format(version="0.3.0") == "popkit-agent-update@0.3.0.service"
    assert "[Install]" not in UPDATE_UNIT.read_text()  # started on demand only, never enabled


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_the_self_update_unit_passes_systemd_analyze_verify(tmp_path):
    text = UPDATE_UNIT.read_text().replace("/opt/popkit/venv/bin/python", sys.executable)
    copy = tmp_path / "popkit-agent-update@0.3.0.service"
    copy.write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (out.stdout + out.stderr).splitlines() if "popkit-agent-update" in line]
    assert out.returncode == 0 and not complaints, out.stdout + out.stderr


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed (it runs the polkit rule's JavaScript)")
def test_the_polkit_rule_lets_popkit_power_off_and_start_only_its_self_update(tmp_path):
    """The rule file run by node with polkit's API stubbed: the verdict for each request."""
    cases = [
        ("popkit", "org.freedesktop.login1.power-off", {}, "yes"),
        ("popkit", "org.freedesktop.systemd1.manage-units", {"verb": "start", "unit": "popkit-agent-update@0.3.0.service"},
         "yes"),
        ("popkit", "org.freedesktop.systemd1.manage-units", {"verb": "stop", "unit": "popkit-agent-update@0.3.0.service"},
         "not_handled"),
        ("popkit", "org.freedesktop.systemd1.manage-units", {"verb": "start", "unit": "popkit-agent.service"},
         "not_handled"),
        ("popkit", "org.freedesktop.systemd1.manage-units", {"verb": "start", "unit": "ssh.service"}, "not_handled"),
        ("popkit", "org.freedesktop.systemd1.manage-units",
         {"verb": "start", "unit": "popkit-agent-update@0.3.0.service.d/../x.service"}, "not_handled"),
        ("popkit", "org.freedesktop.systemd1.manage-units", {"verb": "start", "unit": "popkit-agent-update@x.service"},
         "not_handled"),
        ("someone", "org.freedesktop.systemd1.manage-units", {"verb": "start", "unit": "popkit-agent-update@0.3.0.service"},
         "not_handled"),
        ("popkit", "org.freedesktop.login1.reboot", {}, "not_handled"),
    ]
    harness = tmp_path / "run.js"
    harness.write_text(
        "const rules = [];\n"
        "const polkit = {Result: {YES: 'yes', NO: 'no', NOT_HANDLED: 'not_handled'}, addRule: r => rules.push(r)};\n"
        f"{POLKIT_RULE.read_text()}\n"
        f"const cases = {json.dumps(cases)};\n"
        "const out = cases.map(([user, id, details]) => {\n"
        "  const action = {id: id, lookup: k => details[k]};\n"
        "  for (const r of rules) { const v = r(action, {user: user}); if (v !== undefined && v !== 'not_handled') return v; }\n"
        "  return 'not_handled';\n"
        "});\n"
        "console.log(JSON.stringify(out));\n")
    out = subprocess.run(["node", str(harness)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [c[3] for c in cases]
