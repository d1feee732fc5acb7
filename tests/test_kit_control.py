"""`popkit kit up` and `kit down` beside the running agent service, as on the Pi.

The agent runs as the service does (`popkit agent run`, its settings from an env file, here with
`--simulate` and a test-spawned Mosquitto); the commands read the same file. Beside it they ask
the daemon over its control socket: they open none of the kit's devices (the manifest's serial
paths are files this test watches with inotify) and never publish the agent's state, which stays
online throughout and after. With no agent listening they do the work themselves, as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from agent.control import _address
from kits.contract import decode
from tests.conftest import Collector, wait_until

KIT = """
id = "ck"
name = "Control kit"
agent = "ck-agent"

[[devices]]
id = "ck-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:{printer}"

[[devices]]
id = "ck-power"
role = "powerbank"
model = "victron-smartshunt"
bus = "serial:{power}"

[[devices]]
id = "ck-panel"
role = "panel"
bus = "gpio"
pins = {{ button = 27, red = 5, green = 6, blue = 13 }}
"""

IN_OPEN = 0x20


class OpenWatch:
    """Every open(2) of some files, from any process (inotify)."""

    def __init__(self, *paths: Path):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        for p in paths:
            assert self.libc.inotify_add_watch(self.fd, str(p).encode(), IN_OPEN) >= 0

    def opens(self) -> int:
        n = 0
        while True:
            try:
                buf = os.read(self.fd, 4096)
            except BlockingIOError:
                return n
            i = 0
            while i < len(buf):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", buf, i)
                n += bool(mask & IN_OPEN)
                i += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def popkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popkit.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def site(tmp_path, broker):
    """The kit's files as on a Pi: a manifest whose serial ports are files nobody should open,
    and the agent's settings file naming the broker and the data folder."""
    traps = tmp_path / "printer-port", tmp_path / "power-port"
    for t in traps:
        t.write_bytes(b"")
    manifest = tmp_path / "kit.toml"
    manifest.write_text(KIT.format(printer=traps[0], power=traps[1]))
    data = tmp_path / "lib" / "popkit"
    env = tmp_path / "agent.env"
    env.write_text(f"# as /etc/popkit/agent.env\nPOPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA='{data}'\n")
    return manifest, env, data, traps


@pytest.fixture
def scenario() -> str:
    return ""


@pytest.fixture
def agent(site, scenario):
    manifest, env, data, _ = site
    proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "agent", "run", "--kit", str(manifest), "--env",
                             str(env), "--simulate", *(["--scenario", scenario] if scenario else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (data / "agent.sock").exists() or proc.poll() is not None, 30, what="the agent's socket")
        assert proc.poll() is None, proc.stderr.read()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)


def states(seen: Collector) -> list:
    return [decode("state", p) for p in seen.on("ck-agent/state") if p]


def retained_state(broker):
    fresh = Collector(broker.url, ["popkit/v1/ck/ck-agent/state"])
    try:
        wait_until(lambda: fresh.on("ck-agent/state"), 10, what="the agent's retained state")
        return decode("state", fresh.on("ck-agent/state")[-1])
    finally:
        fresh.close()


def test_kit_up_beside_the_agent_gets_the_daemons_self_test_and_opens_no_device(site, agent, broker, collect):
    manifest, env, data, traps = site
    seen = collect("popkit/v1/ck/ck-agent/state", "popkit/v1/ck/+/event")
    wait_until(lambda: [e for e in seen.on("ck-agent/event") if decode("event", e).kind == "readiness"], 30,
               what="the agent's own power-up self-test")
    daemon_boot = states(seen)[-1].boot
    watch = OpenWatch(*traps)
    try:
        r = popkit("kit", "up", str(manifest), "--env", str(env))
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"through {data / 'agent.sock'}" in r.stdout and "Control kit: READY" in r.stdout
        # The daemon's own printer test (through its print queue), not a second connection to the port.
        assert "status ok, test label queued" in r.stdout and "ck-power" in r.stdout
        assert "panel LED: green, steady" in r.stdout  # what the agent's panel shows now
        assert watch.opens() == 0, "kit up opened the printer's or the battery monitor's port"
    finally:
        watch.close()
    readiness = [decode("event", e) for e in seen.on("ck-agent/event") if decode("event", e).kind == "readiness"]
    wait_until(lambda: len([e for e in seen.on("ck-agent/event") if decode("event", e).kind == "readiness"]) == 2,
               10, what="kit up's verdict, published by the agent")
    readiness = [decode("event", e) for e in seen.on("ck-agent/event") if decode("event", e).kind == "readiness"]
    assert {e.boot for e in readiness} == {daemon_boot} and readiness[-1].data["status"] == "ready"

    r = popkit("kit", "down", str(manifest), "--env", str(env), "--wait", "0")
    assert "Control kit: end of event" in r.stdout and "check-ins   0" in r.stdout, r.stdout + r.stderr
    assert r.returncode == 1 and "still waiting for the uplink" in r.stdout  # no fleet here to receipt anything
    wait_until(lambda: [e for e in seen.on("ck-agent/event") if decode("event", e).kind == "summary"], 10,
               what="the summary, published by the agent")
    assert {decode("event", e).boot for e in seen.on("ck-agent/event")} == {daemon_boot}
    assert states(seen) and all(s.online and s.boot == daemon_boot for s in states(seen))
    after = retained_state(broker)
    assert after.online and after.boot == daemon_boot
    assert agent.poll() is None


@pytest.mark.parametrize("scenario", ["paper=out"])
def test_kit_up_beside_the_agent_shows_its_verdict_the_fixes_and_the_panels_blink_code(site, agent):
    manifest, env, _data, _ = site
    r = popkit("kit", "up", str(manifest), "--env", str(env))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Control kit: NOT READY" in r.stdout and "ck-printer: paper out, load a roll" in r.stdout
    assert "panel LED: red, 4 short blinks then a pause: a printer" in r.stdout


def test_kit_up_for_another_kit_is_refused_by_the_agent(site, agent, tmp_path):
    manifest, env, _data, _ = site
    other = tmp_path / "other.toml"
    other.write_text(manifest.read_text().replace('id = "ck"', 'id = "zz"', 1))
    r = popkit("kit", "up", str(other), "--env", str(env))
    assert r.returncode == 3 and "this agent runs kit 'ck', not 'zz'" in r.stderr, r.stdout + r.stderr


def test_kit_up_with_no_agent_listening_works_alone_with_the_env_files_data(tmp_path, broker):
    from simulators.printer import PrinterSimulator

    printer = PrinterSimulator().start()
    try:
        manifest = tmp_path / "kit.toml"
        manifest.write_text('id = "ck"\nname = "Control kit"\nagent = "ck-agent"\n[[devices]]\nid = "ck-printer"\n'
                            f'role = "printer"\nbus = "serial:{printer.path}"\n')
        data = tmp_path / "data"
        data.mkdir()
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # an agent killed: its socket, nobody behind it
        with _address(data / "agent.sock") as addr:
            stale.bind(addr)
        stale.close()
        env = tmp_path / "agent.env"
        env.write_text(f"POPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA={data}\n")
        r = popkit("kit", "up", str(manifest), "--env", str(env))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Control kit: READY" in r.stdout and "test label printed" in r.stdout
        assert printer.roll.cuts == 1  # the test label, printed by kit up itself
        assert (data / "ck-outbox.db").exists()  # its outbox is the one in the file's data folder
    finally:
        printer.stop()


def test_kit_down_reads_the_data_folder_named_in_the_env_file(tmp_path, broker):
    from agent.hub import ClaimBook

    manifest = tmp_path / "kit.toml"
    manifest.write_text('id = "ck"\nname = "Control kit"\nagent = "ck-agent"\n')
    data = tmp_path / "lib"
    data.mkdir()
    book = ClaimBook(data / "ck-claims.db")
    for n in range(3):
        book.claim("NIGHT-1", f"T{n}", "door-a", 1000 + n)
    book.close()
    env = tmp_path / "agent.env"
    env.write_text(f"POPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA={data}\n")
    r = popkit("kit", "down", str(manifest), "--env", str(env), "--wait", "0")
    assert "check-ins   3  (door-a 3)" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("line, field", [
    ("POPKIT_MQTT_URL=http://ck-agent:s3cret@127.0.0.1:8883", "POPKIT_MQTT_URL"),
    ("POPKIT_MQTT_URL=mqtts://ck-agent:s3cret@127.0.0.1:88x3", "POPKIT_MQTT_URL"),
    ("POPKIT_MQTT_URL mqtts://ck-agent:s3cret@127.0.0.1:8883", "POPKIT_MQTT_URL"),
])
@pytest.mark.parametrize("command", [["kit", "up"], ["kit", "down"], ["agent", "run", "--kit"]])
def test_a_bad_env_file_is_refused_naming_the_file_the_line_and_the_field(tmp_path, line, field, command):
    manifest = tmp_path / "kit.toml"
    manifest.write_text('id = "ck"\nname = "Control kit"\nagent = "ck-agent"\n')
    data = tmp_path / "data"
    env = tmp_path / "agent.env"
    env.write_text(f"# the agent's settings\n\nPOPKIT_AGENT_DATA={data}\n{line}\n")
    r = popkit(*command, str(manifest), "--env", str(env))
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"{env} line 4" in r.stderr and field in r.stderr, r.stderr
    assert "s3cret" not in r.stderr + r.stdout  # the password in the URL is never echoed
    assert not data.exists()  # refused before anything was opened or written


def test_a_missing_env_file_named_on_the_command_line_is_refused(tmp_path):
    manifest = tmp_path / "kit.toml"
    manifest.write_text('id = "ck"\nname = "Control kit"\nagent = "ck-agent"\n')
    r = popkit("kit", "up", str(manifest), "--env", str(tmp_path / "nope.env"))
    assert r.returncode == 3 and f"{tmp_path / 'nope.env'}: no such settings file" in r.stderr, r.stderr


def test_a_second_agent_on_the_same_data_folder_is_refused(site, agent):
    manifest, env, data, _ = site
    r = popkit("agent", "run", "--kit", str(manifest), "--env", str(env), "--simulate", timeout=60)
    assert r.returncode == 3 and "another agent runs on this data folder" in r.stderr, r.stderr
    assert agent.poll() is None and (data / "agent.sock").exists()


def test_the_control_socket_is_for_its_owner_and_group_only(site, agent):
    _manifest, _env, data, _ = site
    assert (data / "agent.sock").stat().st_mode & 0o777 == 0o660


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to try the socket as another user")
def test_a_user_the_socket_refuses_is_told_so_and_is_not_sent_to_the_hardware(site, agent):
    """Working alone beside the agent would open the ports it holds: a refused user gets advice instead."""
    _manifest, _env, data, _ = site
    code = ("import os, sys\nfrom agent import control\nos.setgid(65534); os.setuid(65534)\n"
            f"try:\n    list(control.request(control.socket_path({str(data)!r}), 'ck', 'selftest'))\n"
            "except control.NoAgent:\n    print('NO AGENT')\nexcept control.ControlError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=Path(__file__).resolve().parent.parent)
    assert "may not talk to it" in r.stdout and "popkit group" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: root running kit down with the service stopped")
def test_root_working_alone_leaves_the_services_data_folder_to_its_owner(tmp_path, broker):
    """With the service stopped, root's kit down writes the outbox and its baseline into the service's
    folder: they go back to the folder's owner, or the service could not open its own outbox next start."""
    manifest = tmp_path / "kit.toml"
    manifest.write_text('id = "ck"\nname = "Control kit"\nagent = "ck-agent"\n')
    data = tmp_path / "lib"
    data.mkdir()
    os.chown(data, 65534, 65534)  # as StateDirectory= leaves it: the service's user owns it
    env = tmp_path / "agent.env"
    env.write_text(f"POPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA={data}\n")
    r = popkit("kit", "down", str(manifest), "--env", str(env), "--wait", "0")
    assert "check-ins   0" in r.stdout, r.stdout + r.stderr
    made = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in data.iterdir()}
    assert "ck-outbox.db" in made and "ck-last-down.json" in made
    assert set(made.values()) == {(65534, 65534)}, made


def test_the_agent_answers_a_garbled_or_silent_client_and_keeps_serving(site, agent):
    manifest, env, data, _ = site
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, _address(data / "agent.sock") as addr:
        s.settimeout(30)
        s.connect(addr)
        s.sendall(b"selftest please\n")
        assert b"a request is one JSON line" in s.makefile("rb").readline()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s, _address(data / "agent.sock") as addr:
        s.settimeout(30)
        s.connect(addr)
        s.sendall(b'{"op": "reboot", "kit": "ck"}\n')
        assert b"unknown op; this agent takes kitdown, selftest" in s.makefile("rb").readline()
    r = popkit("kit", "up", str(manifest), "--env", str(env))
    assert r.returncode == 0 and "Control kit: READY" in r.stdout, r.stdout + r.stderr
