"""The install step on a fresh Debian root, as on a Pi after docs/pi-install.md's `apt install` line.

A root made with debootstrap (cached: tests/field/debian_root.py) gets a provisioned kit's files
through `deploy/install-kit.sh` run inside it (chroot): the user, the files, the virtualenv from
PopKit's wheel, the units enabled. Then, inside the root: a second run changes nothing,
`systemd-analyze verify` accepts the agent's unit (and refuses one whose ExecStart is missing, so
the check bites), chrony accepts its config, NetworkManager reads both topologies' keyfiles, and
the agent starts exactly as its unit says (its user and groups, its EnvironmentFile, its working
directory, its ExecStart from the installed virtualenv), tells systemd it is ready (Type=notify),
reaches the kit broker (itself started from the installed files) and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from popkit.cli import main
from tests.conftest import DEMO_KIT, REPO
from tests.field import debian_root as deb
from tests.field.pi import unit_service

pytestmark = pytest.mark.skipif(deb.refusal() is not None, reason=f"no Debian root for the install step: "
                                                                    f"{deb.refusal()}")


@pytest.fixture(scope="module")
def made():
    """The cached root and wheels (made once; a machine that cannot make them skips, loudly)."""
    started = time.monotonic()
    cached = deb.cached()
    try:
        tar, wheels = deb.root_tar(), deb.wheelhouse()
    except deb.Unavailable as exc:
        pytest.skip(f"cannot make a Debian root here: {exc}")
    return tar, wheels, ("reused" if cached else "made") + f" in {time.monotonic() - started:.0f}s"


def _ids(root: Path, kind: str) -> dict[str, int]:
    return {p[0]: int(p[2]) for p in (line.split(":") for line in (root / "etc" / kind).read_text().splitlines())
            if len(p) > 3}


# systemd's side of Type=notify: a datagram socket the agent sends READY=1 to once it runs.
_NOTIFY_LISTENER = """
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)  # the agent runs as its own user
s.settimeout(60)
while True:
    msg = s.recv(4096).decode()
    if "READY=1" in msg.split():
        print(msg)
        break
"""


def _agent_as_the_unit_runs_it(root: Path, notify_socket: str) -> str:
    """The shell line that starts the agent in the root as systemd would from the installed unit."""
    unit = unit_service(root / "etc/systemd/system/popkit-agent.service")
    env_file = unit["EnvironmentFile"][0].lstrip("-")
    env = [e for line in unit["Environment"] for e in shlex.split(line)] + [f"NOTIFY_SOCKET={notify_socket}"]
    for line in (root / env_file.lstrip("/")).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            env.append(line.strip())
    users, groups = _ids(root, "passwd"), _ids(root, "group")
    user = unit["User"][0]
    extra = ",".join(str(groups[g]) for g in unit["SupplementaryGroups"][0].split())
    inner = f"cd {shlex.quote(unit['WorkingDirectory'][0])} && exec {unit['ExecStart'][0]}"
    return (f'chroot --userspec={users[user]}:{groups[unit["Group"][0]]} --groups={extra} "$R" '
            f"/usr/bin/env -i PATH=/usr/bin:/bin {' '.join(shlex.quote(e) for e in env)} sh -c {shlex.quote(inner)}")


def test_install_step_in_a_fresh_debian_root(made, tmp_path, capsys):
    tar, wheels, cache_s = made
    started = time.monotonic()
    out = tmp_path / "provision"
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(out)]) == 0
    router = tmp_path / "router"  # the other topology's keyfile, for NetworkManager to read too
    assert main(["kit", "provision", str(DEMO_KIT), "--out", str(router), "--network", "router",
                 "--kit-address", "192.168.8.2/24"]) == 0
    wheel = deb.popkit_wheel(tmp_path / "wheel", wheels)
    root = deb.unpack(tar, tmp_path / "root")
    try:
        srv = root / "srv"
        shutil.copytree(REPO / "popkit", srv / "popkit" / "popkit", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "deploy", srv / "popkit" / "deploy")
        shutil.copytree(out / "pi", srv / "kit")  # what the crew copies to the Pi
        shutil.copytree(wheels, srv / "wheels")
        shutil.copy2(wheel, srv / "wheels" / wheel.name)
        nm = "etc/NetworkManager/system-connections/popkit-kit.nmconnection"
        shutil.copy2(router / "pi" / "root" / nm, srv / "router.nmconnection")
        install = (f'chroot "$R" /srv/popkit/deploy/install-kit.sh /srv/kit --source /srv/wheels/{wheel.name} '
                   "--find-links /srv/wheels")
        first = deb.in_root(root, install)
        assert first.returncode == 0, first.stderr + first.stdout
        assert "changed: user popkit created" in first.stdout
        assert "changed: /opt/popkit/venv made" in first.stdout
        assert "changed: popkit-agent.service enabled" in first.stdout
        assert (root / "etc/systemd/system/multi-user.target.wants/popkit-agent.service").is_symlink()
        assert (root / "etc/systemd/system/multi-user.target.wants/mosquitto.service").is_symlink()
        installed_s = time.monotonic() - started

        broken = "/etc/systemd/system/popkit-broken.service"
        (root / broken.lstrip("/")).write_text(
            (root / "etc/systemd/system/popkit-agent.service").read_text()
            .replace("/opt/popkit/venv/bin/popkit", "/opt/popkit/nowhere/bin/popkit"))
        checks = deb.in_root(root, f"""
{install} > "$R/tmp/second.txt"
chroot "$R" systemd-analyze verify /etc/systemd/system/popkit-agent.service > "$R/tmp/verify.txt" 2>&1 \\
  && echo verify=0 || echo verify=$?
chroot "$R" systemd-analyze verify {broken} > "$R/tmp/verify-broken.txt" 2>&1 && echo broken=0 || echo broken=$?
chroot "$R" chronyd -p -f /etc/chrony/chrony.conf > /dev/null 2> "$R/tmp/chrony.txt" && echo chrony=0 || echo chrony=$?
for f in /{nm} /srv/router.nmconnection; do  # NetworkManager's own reader (it refuses what it cannot use)
  chroot "$R" sh -c "nmcli --offline connection modify connection.id popkit-kit < $f" >> "$R/tmp/nm.txt" 2>&1 \
    && echo nm=0 || echo nm=$?
done
sed 's/^mode=ap/mode=bogus/' "$R/{nm}" | chroot "$R" nmcli --offline connection modify connection.id x \
  > /dev/null 2>&1 && echo nm_bogus=0 || echo nm_bogus=$?
""")
        assert checks.returncode == 0, checks.stderr
        second = (root / "tmp/second.txt").read_text()
        assert second.splitlines()[-1] == "0 change(s) under /" and "changed:" not in second, second
        verify = (root / "tmp/verify.txt").read_text()
        assert "verify=0" in checks.stdout and "popkit-agent.service" not in verify, verify
        assert "broken=0" not in checks.stdout, "systemd-analyze verify accepted a unit whose ExecStart is missing"
        assert "/opt/popkit/nowhere/bin/popkit" in (root / "tmp/verify-broken.txt").read_text()
        assert "chrony=0" in checks.stdout, (root / "tmp/chrony.txt").read_text()
        nm_out = (root / "tmp/nm.txt").read_text()
        assert checks.stdout.count("nm=0") == 2, nm_out
        assert "nm_bogus=0" not in checks.stdout, "NetworkManager accepted a Wi-Fi mode it does not have"
        assert "mode=ap" in nm_out and "method=shared" in nm_out and "address1=10.42.0.1/24" in nm_out
        assert "method=manual" in nm_out and "address1=192.168.8.2/24,192.168.8.1" in nm_out

        # The kit broker from the installed files, then the agent as its unit runs it; stopped (as
        # systemd stops it) once it has told systemd it is ready and says it reached the broker.
        agent = _agent_as_the_unit_runs_it(root, "/run/popkit-notify.sock")
        run = deb.in_root(root, f"""
mkdir -p "$R/run/mosquitto" && chroot "$R" chown mosquitto:mosquitto /run/mosquitto
chroot "$R" /usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf -d
{shlex.quote(sys.executable)} -c {shlex.quote(_NOTIFY_LISTENER)} "$R/run/popkit-notify.sock" > "$R/tmp/notify.txt" &
listener=$!
for i in $(seq 100); do [ -S "$R/run/popkit-notify.sock" ] && break; sleep 0.1; done
{agent} > "$R/tmp/agent.log" 2>&1 &
pid=$!
wait $listener || echo no_ready
for i in $(seq 300); do grep -q "connected to" "$R/tmp/agent.log" && break; sleep 0.1; done
kill -TERM $pid; wait $pid && echo agent_exit=0 || echo agent_exit=$?
""", timeout=120)
        log = (root / "tmp/agent.log").read_text()
        notified = (root / "tmp/notify.txt").read_text()
        assert "READY=1" in notified.split() and "STATUS=kit demo" in notified, run.stdout + run.stderr + log
        assert "agent for kit demo" in log, log + run.stderr  # it read /etc/popkit/kit.toml
        assert re.search(r"demo-agent connected to mqtts://127\.0\.0\.1:8883\?account=/etc/popkit/mqtt-account\.json",
                         log), log  # ... and its env file, and logged in as itself over TLS
        assert "agent_exit=0" in run.stdout, run.stdout + log
        assert (root / "var/lib/popkit/demo-outbox.db").exists()  # its state directory, as the popkit user
        with capsys.disabled():
            print(f"\n[pi install] Debian root and wheels {cache_s}; "
                  f"provision + unpack + install {installed_s:.0f}s; whole run {time.monotonic() - started:.0f}s")
    finally:
        shutil.rmtree(root, ignore_errors=True)  # ~300 MB
