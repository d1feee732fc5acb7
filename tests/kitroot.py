"""A Pi's root for tests of `popkit kit install`, and the kit broker run from what was installed there.

:func:`seed_root` leaves a folder as apt would have on the Pi before the install step: the users
and groups (this machine's, so the ``mosquitto`` user has the same uid) and Debian's own
``/etc/mosquitto/mosquitto.conf``, which includes ``conf.d``.

:func:`probe_broker` starts Mosquitto *inside* the installed root and logs in to it as the kit's
clients would: in a private mount and network namespace (``unshare``, root only), the root's
``/etc`` is laid over this machine's (a read-only overlay), so ``mosquitto -c
/etc/mosquitto/mosquitto.conf`` reads exactly the installed files at their Pi paths, with no path
rewritten; the kit address (10.42.0.1) is on the namespace's loopback, and nothing the broker does
is seen outside the namespace (its port, its persistence).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

# Debian bookworm's /etc/mosquitto/mosquitto.conf (package mosquitto 2.0.11), as the package installs it
# (this machine's own may have been changed: it is not used).
DEBIAN_MOSQUITTO_CONF = """\
# Place your local configuration in /etc/mosquitto/conf.d/
#
# A full description of the configuration file is at
# /usr/share/doc/mosquitto/examples/mosquitto.conf.example

pid_file /run/mosquitto/mosquitto.pid

persistence true
persistence_location /var/lib/mosquitto/

log_dest file /var/log/mosquitto/mosquitto.log

include_dir /etc/mosquitto/conf.d
"""


def seed_root(root: Path) -> Path:
    etc = root / "etc"
    (etc / "mosquitto" / "conf.d").mkdir(parents=True, exist_ok=True)
    for name in ("passwd", "group", "shadow", "gshadow"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), etc / name)
    (etc / "mosquitto" / "mosquitto.conf").write_text(DEBIAN_MOSQUITTO_CONF)
    return root


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: its bytes (files), link target, mode, owner and group."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
        out[str(p.relative_to(root))] = (body, st.st_mode, st.st_uid, st.st_gid)
    return out


def probe_refusal() -> str | None:
    """Why the broker cannot be run inside an installed root here, or None."""
    if os.geteuid() != 0:
        return "not root (mount and network namespaces need CAP_SYS_ADMIN)"
    for tool in ("unshare", "mount", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if shutil.which("mosquitto") is None and not os.access("/usr/sbin/mosquitto", os.X_OK):
        return "mosquitto is not installed"
    return None


def probe_broker(root: Path, logins: dict[str, str], kit_address: str = "10.42.0.1", timeout: float = 60) -> dict:
    """Mosquitto started from ``root``'s installed files; ``logins`` (name -> MQTT URL, read inside
    the root) tried against it. Returns {name: "accepted" | "refused: ..." | "no connection: ..."}
    and the broker's log."""
    cmd = ["unshare", "--mount", "--net", "--fork", sys.executable, "-m", "tests.kitroot", str(root), kit_address,
           json.dumps(logins)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"the broker probe failed (exit {done.returncode}): {done.stderr[-3000:]}") from None


def _login(url: str) -> str:
    import paho.mqtt.client as mqtt

    from plumbing.mqtt import client_for

    client, target = client_for(url, f"probe-{os.getpid()}-{time.monotonic_ns()}")
    got: list = []
    client.on_connect = lambda c, u, f, rc, p=None: got.append(rc)
    try:
        client.connect(target.host, target.port, keepalive=10)
    except OSError as exc:
        return f"no connection: {exc}"
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        rc = client.loop(0.1)
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN) and not got:
            return f"no connection: {mqtt.error_string(rc)}"
    client.disconnect()
    if not got:
        return "no connection: no CONNACK"
    return "accepted" if not got[0].is_failure else f"refused: {got[0]}"


def _inside(root: Path, kit_address: str, logins: dict[str, str]) -> None:
    """In the namespaces: the root's /etc over this machine's, a fresh /run and broker state."""
    def sh(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True)

    sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", f"{kit_address}/24", "dev", "lo")
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={root / 'etc'}:/etc", "/etc")
    sh("mount", "-t", "tmpfs", "tmpfs", "/run")
    import pwd

    mosq = pwd.getpwnam("mosquitto")
    for d in ("/run/mosquitto", "/var/lib/mosquitto", "/var/log/mosquitto"):
        os.makedirs(d, exist_ok=True)
        if d != "/run/mosquitto":
            sh("mount", "-t", "tmpfs", "tmpfs", d)
        os.chown(d, mosq.pw_uid, mosq.pw_gid)
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-c", "/etc/mosquitto/mosquitto.conf"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    from popkit.broker import wait_for_port

    result: dict = {}
    try:
        wait_for_port(8883, 15, host=kit_address)
        for name, url in logins.items():
            result[name] = _login(url)
    except TimeoutError as exc:
        result["error"] = str(exc)
    finally:
        broker.terminate()
        out, _ = broker.communicate(timeout=10)
        log = Path("/var/log/mosquitto/mosquitto.log")
        result["log"] = (log.read_text() if log.exists() else "") + out.decode(errors="replace")
    print(json.dumps(result))


if __name__ == "__main__":
    _inside(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
