"""``popkit demo``: a broker, the fleet and one kit on this machine, stopped cleanly by Ctrl-C.

Each part runs as its own process with the same command an operator would use:
``popkit fleet serve``, ``popkit agent run --simulate`` (the power bank and the
printer on simulated serial lines), and, for each scanner and lighting controller
of the kit, ``popkit device run --role ROLE --config FILE``: the real firmware in
the unix-port MicroPython. Their hardware is simulated in this process, on local
sockets, as the unix board layer expects it: the scanner's QR module
(simulators/scanner.py, with a crowd scanning a ticket every few seconds and a
port to hold up your own), the controller's PWM strip and DMX line
(simulators/pwm.py, simulators/dmx.py).

What the firmware needs is generated into the data folder at start, never into
git: the event's ticket key, a CSV of tickets, each device's config and flash
folder. Once the fleet answers, the demo PUTs a compiled timeline as each lighting
controller's config (renewed before it runs out) and revokes one ticket of the CSV
at every scanner, both through the fleet's API.

Killed outright (SIGKILL, a crash), the demo leaves nothing running: every part is started bound
to it (popkit/lifeline.py) and gets SIGTERM when it dies. Closing its terminal (SIGHUP) stops it in
order, as Ctrl-C and SIGTERM do. It keeps a record of itself and its parts in the data folder
(``demo.pid``, popkit/demo_record.py): the next start on that folder refuses while this demo runs,
naming its pid, and stops whatever a killed one left behind.

Without the ``micropython`` binary (the ``device`` extra, also in ``demo``) the
scanners and controllers are the Python stand-ins of ``popkit sim devices``
instead, and the demo says so, and why, on every start.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from plumbing.exits import RESTART_EXIT
from popkit import lifeline
from popkit.broker import AmqttBroker, MosquittoBroker, embedded_broker, free_port, mosquitto_binary
from popkit.demo_record import DemoRecord, DemoRunning, port_holder
from popkit.demo_login import DEMO_USER, LOGIN_FILE, FleetSession, create_login

READY_TIMEOUT_S = 30
FIRMWARE_ROLES = ("scanner", "lighting")
EVENT = "DEMO-NIGHT"
DEMO_TICKETS = 20  # the CSV a user can hold up to the scanner; the crowd brings its own
SCAN_EVERY_S = 3.0
SCENE_S = 30  # each scene of the demo timeline lasts this long ...
TIMELINE_WINDOWS = 40  # ... for this many windows (20 min; the controller takes at most 4 KB of config)
TIMELINE_RENEW_S = 15 * 60
# Firmware output echoed to the terminal (the rest goes to the device's log file only):
# verdicts, scenes, configs and commands, and anything unexpected (an error, a traceback).
_QUIET = re.compile(r"(BOOT|CODE|READY|OUTBOX|MEM|HEAP) ")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _popkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "popkit.cli", *args]


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path.resolve())


@dataclass
class Access:
    """How each part reaches the demo's broker: the fleet's and the agent's MQTT URLs, and each
    ESP32's config `broker` block (None: an open broker, host and port only)."""
    fleet: str
    agent: str
    devices: dict[str, dict] = field(default_factory=dict)
    provisioned: bool = False

    def device_broker(self, device: str) -> dict | None:
        return self.devices.get(device)


def _start_broker(data_dir: Path, manifest, provisioned: bool):
    """The demo's broker and who reaches it how. Mosquitto with ``provisioned``: the kit is
    provisioned as a crew would (popkit kit provision: an account per device, the ACL, the kit's
    CA) into the data folder, and the broker listens on TLS only; amqtt (no mosquitto here) is an
    open loopback broker, and the demo says so."""
    choice = os.environ.get("POPKIT_DEMO_BROKER", "auto")
    use_mosquitto = choice == "mosquitto" or (choice == "auto" and mosquitto_binary() is not None)
    if not use_mosquitto:
        broker = AmqttBroker(port=free_port()).start() if choice == "amqtt" else \
            embedded_broker(data_dir=data_dir / "broker", die_with_parent=True).start()
        return broker, Access(broker.url, broker.url)
    if not provisioned:
        broker = MosquittoBroker(data_dir=data_dir / "broker", die_with_parent=True).start()
        return broker, Access(broker.url, broker.url)
    from popkit.provision import provision

    port = free_port()
    # again at every start: new devices get accounts, the files learn this run's port; passwords stay
    creds = provision(manifest, data_dir / "provision", broker_host="127.0.0.1", broker_port=port)
    broker = MosquittoBroker(port=port, data_dir=data_dir / "broker", password_file=creds.passwd,
                             acl_file=creds.acl, tls=creds.tls, die_with_parent=True).start()
    url = f"mqtts://127.0.0.1:{port}?account="
    devices = {}
    for spec in manifest.devices:
        path = creds.device_file(spec.id)
        if spec.role in FIRMWARE_ROLES and path.exists():
            devices[spec.id] = json.loads(path.read_text())["broker"]
    return broker, Access(f"{url}{creds.fleet_file}", f"{url}{creds.device_file(manifest.agent)}", devices, True)


def _wait_ready(session: FleetSession, kit_id: str, procs: dict[str, subprocess.Popen],
                logs: dict[str, Path]) -> dict | None:
    """Poll the API until the kit shows every device online and a battery reading."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                where = f"its console {_shown(logs[name])}" if name in logs else "its output above"
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see {where}")
        try:
            kit = session.get(f"/api/v1/kits/{kit_id}")
            if kit["devices_online"] == kit["devices_total"] and kit["battery"]:
                return kit
        except OSError:
            pass
        time.sleep(0.3)
    return None


# ---------------------------------------------------------------- can the firmware run here?

def firmware_unavailable(mqtt_url: str | None) -> str | None:
    """Why the kit's ESP32s cannot run their firmware in this demo (None: they can)."""
    from popkit import firmware
    from plumbing.mqtt import parse_mqtt_url

    if os.environ.get("POPKIT_DEMO_DEVICES", "firmware") == "python":
        return "POPKIT_DEMO_DEVICES=python asks for them"
    target = parse_mqtt_url(mqtt_url) if mqtt_url else None
    if target is not None and (target.tls or target.username):
        return (f"{mqtt_url} needs TLS or a login, and the demo has no account for the firmware there "
                "(give no --mqtt: the demo provisions its own broker)")
    try:
        firmware.tool("micropython")
        for role in FIRMWARE_ROLES:
            firmware.build(role, "unix")  # the same build `popkit device run` does (then up to date)
    except firmware.FirmwareError as exc:
        return str(exc)
    except Exception as exc:  # anything else on the way (a broken install): still say it, still run the demo
        return f"the firmware could not be built: {type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------- what the firmware needs

@dataclass
class Tickets:
    key: object  # kits.tickets.EventKey
    key_file: Path
    csv: Path
    payloads: list[str]
    revoked: str  # the CSV's last ticket id: revoked in the scanner's config
    not_before: int = 0  # the tickets' window (Unix s): the key's window the fleet pushes to the scanners
    expires: int = 0


def make_tickets(data_dir: Path) -> Tickets:
    """The event key (kept across runs, 0600) and a fresh CSV of tickets valid from an hour ago for 30 days."""
    from kits.tickets import DEFAULT_VALIDITY, issue_batch, load_or_create_key, parse

    key_file = data_dir / "keys" / f"{EVENT}.key"
    key, _ = load_or_create_key(EVENT, key_file)
    out = data_dir / "tickets" / f"{EVENT}.csv"
    out.unlink(missing_ok=True)  # the demo's own file, regenerated each start
    nbf = int(time.time()) - 3600
    issue_batch(EVENT, DEMO_TICKETS, out, valid_from=datetime.fromtimestamp(nbf, timezone.utc).isoformat(),
                key_file=key_file)
    payloads = [line.split(",")[2] for line in out.read_text().splitlines()[1:]]
    expires = nbf + int(DEFAULT_VALIDITY.total_seconds()) + 24 * 3600  # the tickets' end, and a day's margin
    return Tickets(key, key_file, out, payloads, parse(payloads[-1]).ticket_id, nbf, expires)


def demo_timeline(now: float) -> dict:
    """A compiled timeline (docs/lighting-timeline.md): doors, set, interval in turn, SCENE_S each."""
    scenes = {
        "house": {"levels": {"w": 90}},
        "doors": {"levels": {"r": 255, "g": 140, "b": 40, "w": 120, "dmx": {"1": [255, 140, 40]}}, "fade_ms": 2000},
        "set": {"levels": {"r": 60, "b": 255, "dmx": {"1": [40, 0, 255], "4": [255]}}, "fade_ms": 800},
        "interval": {"levels": {"r": 120, "g": 100, "w": 200, "dmx": {"1": [200, 180, 160]}}, "fade_ms": 1500},
    }
    order = ("doors", "set", "interval")
    t0 = int(now) // SCENE_S * SCENE_S
    windows = [[t0 + i * SCENE_S, t0 + (i + 1) * SCENE_S, order[(t0 // SCENE_S + i) % len(order)], 10]
               for i in range(TIMELINE_WINDOWS)]
    return {"format": 1, "scenes": scenes, "default": "house", "windows": windows,
            "meta": {"venue": "popkit demo", "compiled": datetime.fromtimestamp(now, timezone.utc).isoformat()}}


class Operator:
    """The crew at the fleet's API, for the demo: once the fleet answers, it PUTs each lighting
    controller's timeline (the fleet stores it and publishes it retained; renewed before it runs
    out), gives the scanners the event's key with its window (PUT .../key: the fleet then knows the
    event) and revokes one ticket of the CSV at every scanner (POST .../revocations)."""

    def __init__(self, session: FleetSession, lights: list[str], tickets: Tickets | None):
        self.session, self.base, self.lights, self.tickets = session, session.base, lights, tickets
        self.versions: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-operator", daemon=True)

    def _call(self, method: str, path: str, body: dict) -> dict:
        return self.session.call(method, path, body)  # signed in as the demo's ops user

    def push_timelines(self) -> None:
        for dev in self.lights:
            out = self._call("PUT", f"/api/v1/devices/{dev}/config", {"data": demo_timeline(time.time())})
            self.versions[dev] = out["version"]

    def start(self) -> "Operator":
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._stop.wait(0.2):  # the fleet's API first
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    return
        t = self.tickets
        steps = [("the lighting timeline", self.push_timelines)]
        if t is not None:  # the key first: a revocation for an event the fleet does not know is refused
            steps[:0] = [
                ("the event key", lambda: self._call("PUT", f"/api/v1/events/{EVENT}/key", {
                    "key": t.key.secret.hex(), "not_before": t.not_before, "expires": t.expires})),
                ("the revocation", lambda: self._call("POST", f"/api/v1/events/{EVENT}/revocations",
                                                      {"tickets": [t.revoked]}))]
        for what, step in steps:
            try:
                step()
            except Exception as exc:  # the rest of the demo runs on: say it, go on
                print(f"popkit demo: could not push {what} through the fleet: {exc}", file=sys.stderr, flush=True)
        while not self._stop.wait(TIMELINE_RENEW_S):
            try:
                self.push_timelines()
            except Exception as exc:  # the controllers run on the timeline they have
                print(f"popkit demo: could not renew the lighting timeline: {exc}", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(6)


@dataclass
class Bench:
    """The hardware the kit's ESP32s are wired to, simulated in this process, and what drives it."""

    parts: list = field(default_factory=list)  # receivers and simulators: close() each
    crowd: object | None = None
    feed: object | None = None
    operator: Operator | None = None
    tickets: Tickets | None = None
    configs: dict[str, Path] = field(default_factory=dict)  # device id -> its firmware config
    lines: dict[str, str] = field(default_factory=dict)  # device id -> what it is wired to, for the crew

    def stop_producers(self) -> None:
        for p in (self.crowd, self.operator):
            if p is not None:
                p.stop()

    def close(self) -> None:
        for p in [self.feed, *self.parts]:
            if p is not None:
                p.close()


def set_up_bench(manifest, mqtt_url: str, data_dir: Path, base: FleetSession | str = "",
                 access: Access | None = None) -> Bench:
    """Simulators, configs and tickets for the manifest's scanners and lighting controllers."""
    from plumbing.mqtt import parse_mqtt_url
    from simulators.dmx import DmxReceiver
    from simulators.pwm import PwmReceiver
    from simulators.scanner import Crowd, ScanFeed, ScannerSim

    target = parse_mqtt_url(mqtt_url)
    bench = Bench()
    lights = []
    for spec in manifest.devices:
        if spec.role not in FIRMWARE_ROLES:
            continue
        home = data_dir / "devices" / spec.id
        flash = home / "flash"
        flash.mkdir(parents=True, exist_ok=True)
        telemetry_s = max(1, round(spec.telemetry_s))
        if spec.role == "scanner":
            if bench.tickets is None:
                bench.tickets = make_tickets(data_dir)
            t = bench.tickets
            sim = ScannerSim()
            bench.parts.append(sim)
            cfg = {"kit": manifest.id, "device": spec.id,
                   "broker": {"host": target.host, "port": target.port, "keepalive": 15,
                              **((access and access.device_broker(spec.id)) or {})},
                   "uart": ["127.0.0.1", sim.port], "flash": str(flash.resolve()), "telemetry_s": telemetry_s,
                   "gate": {"leeway": 60, "events": [{"event": EVENT, "key": t.key.secret.hex(), "capacity": 1000,
                                                      "revoked": []}]}}  # revoked through the fleet
            revoked = next(p for p in t.payloads if p.split(":")[2] == t.revoked)
            if bench.crowd is None:  # one crowd, at the first door; the feed port reaches that door too
                bench.crowd = Crowd(sim, t.key, every_s=SCAN_EVERY_S, revoked=revoked)
                bench.feed = ScanFeed(sim)
            bench.lines[spec.id] = f"QR module simulators/scanner.py on 127.0.0.1:{sim.port}"
        else:
            pwm, dmx = PwmReceiver(keep=2000), DmxReceiver(keep=50)
            bench.parts += [pwm, dmx]
            cfg = {"kit": manifest.id, "device": spec.id,
                   "broker": (access and access.device_broker(spec.id)) or [target.host, target.port], "dmx_slots": 24,
                   "state_dir": str(flash.resolve()), "pwm": ["127.0.0.1", pwm.port],
                   "dmx": ["127.0.0.1", dmx.port], "telemetry_s": telemetry_s, "keepalive": 15}
            lights.append(spec.id)
            bench.lines[spec.id] = (f"PWM simulators/pwm.py on 127.0.0.1:{pwm.port}, "
                                    f"DMX simulators/dmx.py on 127.0.0.1:{dmx.port}")
        path = home / f"{spec.role}.json"
        _write_private(path, json.dumps(cfg, indent=1) + "\n")  # a scanner's holds the event key
        bench.configs[spec.id] = path
    # The operator calls the fleet's API as the demo's ops user; without a session (``popkit kit up``
    # has no fleet of its own) there is none.
    if isinstance(base, FleetSession) and (lights or bench.tickets):
        bench.operator = Operator(base, lights, bench.tickets)
    return bench


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was there before
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _pump(device: str, proc: subprocess.Popen, log_path: Path) -> None:
    """A firmware's console: all of it into its log, the interesting lines to the terminal."""
    with open(log_path, "a", buffering=1) as log:
        for line in proc.stdout:
            log.write(line)
            line = line.rstrip("\n")
            if line and not _QUIET.match(line + " "):
                _say(f"{device:<15} {line}")  # its terminal closed: the log still gets every line


# ---------------------------------------------------------------- the demo

def run_demo(mqtt_url: str | None, http: str, data_dir: Path, kit: str) -> int:
    """The demo on ``data_dir``, which it claims first (popkit/demo_record.py): a demo still running
    there is named and left alone; what a killed one left running is stopped, and the crew told."""
    host, port = http.rsplit(":", 1)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        record, notes = DemoRecord.claim(data_dir, http)
    except DemoRunning as exc:
        print(f"popkit demo: {exc}", file=sys.stderr)
        return 2
    try:
        for note in notes:
            print(f"popkit demo: {note}", file=sys.stderr, flush=True)
        if not _port_free(host, int(port)):
            holder = port_holder(int(port))
            print(f"popkit demo: {http} is already in use" + (f" by {holder}" if holder else "")
                  + "; pass --http 127.0.0.1:<free port>", file=sys.stderr)
            return 2
        return _run(mqtt_url, http, data_dir, kit, record)
    finally:
        record.release()  # every part is stopped by now


def _say(text: str, **kwargs) -> None:
    """A line while stopping: the terminal may be gone (SIGHUP), and the stop must go on."""
    try:
        print(text, flush=True, **kwargs)
    except OSError:
        pass


def _run(mqtt_url: str | None, http: str, data_dir: Path, kit: str, record: DemoRecord) -> int:
    from kits.manifest import load_manifest

    started = time.monotonic()
    manifest = load_manifest(kit)
    broker = None
    esp32s = [d for d in manifest.devices if d.role in FIRMWARE_ROLES]
    why_not = firmware_unavailable(mqtt_url) if esp32s else None
    if mqtt_url is None:
        # provisioned unless the ESP32s fall back to Python stand-ins, which have no accounts
        broker, access = _start_broker(data_dir, manifest, provisioned=why_not is None)
        if isinstance(broker, MosquittoBroker):
            record.note("broker", broker.proc.pid)
        mqtt_url = broker.url
        print(f"broker   {broker.kind} on {mqtt_url}" + (
            f" (TLS with the kit's CA; an account per device, ACL: {_shown(data_dir / 'provision')}, outside git)"
            if access.provisioned else " (open: no accounts, loopback only)"))
    else:
        access = Access(mqtt_url, mqtt_url)
        print(f"broker   {mqtt_url} (given)")

    # `kill` or a service manager stops the demo as cleanly as Ctrl-C does, and so does closing its
    # terminal (SIGHUP: the parts, in sessions of their own, never see it); SIGINT is re-armed
    # because a shell starting us in the background (`popkit demo &`) ignores it.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    procs: dict[str, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    bench = Bench()
    # Own sessions: Ctrl-C reaches only us, and we stop the parts in order (producers first). And
    # each part dies with us if we are killed outright (lifeline.popen: PR_SET_PDEATHSIG, so every
    # part is started from this, the main, thread); the record names them for the next start.
    spawn = dict(start_new_session=True)
    logs: dict[str, Path] = {}  # firmware device -> its console log

    def start(name: str, starter) -> subprocess.Popen:
        procs[name] = proc = starter()
        record.note(name, proc.pid)
        return proc

    # The fleet as the demo: a random signing key unless one is given (POPKIT_DEMO), and an ops user
    # with a fresh password for the dashboard and for the demo's own API calls (popkit/demo_login.py).
    base = f"http://{http}"
    db_url = f"sqlite:///{data_dir / 'fleet.db'}"
    password = create_login(db_url, data_dir)
    session = FleetSession(base, DEMO_USER, password)
    try:
        start("fleet", lambda: lifeline.popen(
            _popkit("fleet", "serve", "--mqtt", access.fleet, "--db", db_url, "--http", http,
                    "--kit", kit, "--client-id", "popkit-demo-fleet"), env=dict(os.environ, POPKIT_DEMO="1"), **spawn))

        def start_agent() -> subprocess.Popen:
            return lifeline.popen(_popkit("agent", "run", "--kit", kit, "--mqtt", access.agent, "--data",
                                          str(data_dir / "agent"), "--simulate"), **spawn)

        def start_firmware(spec) -> subprocess.Popen:
            proc = lifeline.popen(
                _popkit("device", "run", "--role", spec.role, "--config", str(bench.configs[spec.id])),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, **spawn)
            pump = threading.Thread(target=_pump, args=(spec.id, proc, logs[spec.id]), daemon=True)
            pump.start()
            pumps.append(pump)
            return proc

        restarts = {"agent": start_agent}
        start("agent", start_agent)
        if esp32s and why_not is None:
            from popkit.firmware import read_manifest

            bench = set_up_bench(manifest, mqtt_url, data_dir, session, access)
            (data_dir / "logs").mkdir(exist_ok=True)
            for spec in esp32s:
                logs[spec.id] = data_dir / "logs" / f"{spec.id}.log"
                start(spec.id, lambda spec=spec: start_firmware(spec))
                restarts[spec.id] = lambda spec=spec: start_firmware(spec)
                print(f"device   {spec.id}: firmware {read_manifest(spec.role, 'unix').version} in micropython "
                      f"(unix port), {bench.lines[spec.id]}; console {_shown(logs[spec.id])}")
            if bench.crowd is not None:
                bench.crowd.start()
            if bench.operator is not None:
                bench.operator.start()
        elif esp32s:
            start("devices", lambda: lifeline.popen(
                _popkit("sim", "devices", "--kit", kit, "--mqtt", mqtt_url, "--data", str(data_dir / "sim")), **spawn))
            names = ", ".join(d.id for d in esp32s)
            print(f"device   {names}: SIMULATED IN PYTHON (simulators/devices.py, fw sim-0.1.0), NOT the firmware,\n"
                  f"         because {why_not}", file=sys.stderr, flush=True)
        print(f"fleet    {base}/  (API {base}/api/v1/kits, OpenAPI {base}/docs, metrics {base}/metrics)")
        print(f"sign in  {base}/ as {DEMO_USER}, password {password}  (also in {_shown(data_dir / LOGIN_FILE)})")
        if bench.tickets is not None:
            t = bench.tickets
            here = os.path.relpath(sys.executable) if not os.path.relpath(sys.executable).startswith("..") else sys.executable
            print(f"event    {EVENT}: attendance {base}/api/v1/events/{EVENT}/attendance; a scan every "
                  f"~{SCAN_EVERY_S:.0f} s at the door")
            print(f"tickets  {_shown(t.csv)} ({DEMO_TICKETS}; {t.revoked} gets revoked through the fleet), key {_shown(t.key_file)}; "
                  f"hold one up:\n         {here} -m simulators.scanner 127.0.0.1:{bench.feed.port} '{t.payloads[0]}'")
        print(f"data     {data_dir.resolve()}", flush=True)
        ready = _wait_ready(session, manifest.id, procs, logs)
        if ready:
            b = ready["battery"]
            print(f"kit {manifest.id!r} is up: {ready['devices_online']}/{ready['devices_total']} devices online, "
                  f"battery {b.get('soc')} % at {b['v']:.2f} V ({time.monotonic() - started:.1f} s).  "
                  f"Ctrl-C stops everything.", flush=True)
        else:
            print(f"kit {manifest.id!r} not fully up after {READY_TIMEOUT_S}s; still running, see {base}/", file=sys.stderr)
        while True:
            time.sleep(0.5)
            # The supervisor a kit has (systemd, an ESP32's reset): a part that exits asking for a
            # restart (a `reboot` command: RESTART_EXIT) starts again; any other exit ends the demo.
            for name, proc in list(procs.items()):
                if proc.poll() == RESTART_EXIT and name in restarts:
                    print(f"restart  {name}: rebooted by a command; starting it again", flush=True)
                    start(name, restarts[name])
            if any(p.poll() is not None for p in procs.values()):
                break
        failed = [n for n, p in procs.items() if p.poll() is not None]
        where = "".join(f"; {n}'s console: {_shown(logs[n])}" for n in failed if n in logs)
        print(f"popkit demo: {', '.join(failed)} stopped unexpectedly{where}; shutting down", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _say("\nstopping…")
        return 0
    finally:
        # A second Ctrl-C must not leave half the parts running: the stop below is bounded anyway.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        bench.stop_producers()  # the crowd at the door and the operator first
        # Then the ESP32s (SIGTERM: the firmware is built for power cuts), the agent, the fleet.
        order = [d.id for d in esp32s] + ["devices", "agent", "fleet"]
        for name in order:
            proc = procs.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM if name != "fleet" else signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for pump in pumps:
            pump.join(2)
        if broker is not None:
            broker.stop()
        bench.close()
