"""`popkit demo` killed outright (SIGKILL, a closed terminal) leaves nothing behind: its parts die with
it, the next demo on the folder starts (on the same port), a demo still running is named and left
alone, and what a killed demo left running (by its record, or by older demos without one) is stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from popkit import lifeline
from popkit.broker import free_port, mosquitto_binary
from popkit.demo_record import RECORD, start_time
from tests.conftest import DEMO_KIT, REPO, wait_until
from tests.test_demo import Demo, alive, assert_stopped_cleanly, children_of, cmdline

pytestmark = pytest.mark.skipif(not lifeline.SUPPORTED, reason="PR_SET_PDEATHSIG and /proc are Linux's")


class DemoOn(Demo):
    """A demo on a port of our choosing: the one a killed demo held."""

    def __init__(self, data: Path, port: int, **env: str):
        self.port, self.base, self.data, self.session = port, f"http://127.0.0.1:{port}", data, None
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "demo", "--http", f"127.0.0.1:{port}",
                                      "--data", str(data)], env=dict(os.environ, **env), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def api(self, path: str):
        # The folder still holds the killed demo's login until this one writes its own: read it again.
        got = super().api(path)
        if got is None:
            self.session = None
        return got


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def demo_cli(data: Path, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "popkit.cli", "demo", "--http", f"127.0.0.1:{port}", "--data",
                           str(data)], capture_output=True, text=True, timeout=90, cwd=REPO)


def _end(demo: Demo | None) -> None:
    """A demo a failed test left running: stopped (it stops its parts)."""
    if demo is not None and demo.proc.poll() is None:
        demo.proc.send_signal(signal.SIGINT)
        try:
            demo.proc.wait(40)
        except subprocess.TimeoutExpired:
            demo.proc.kill()


def test_a_demo_killed_outright_leaves_nothing_running_and_the_next_one_starts_on_its_port(tmp_path):
    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    data = tmp_path / "demo"
    first = Demo(data, POPKIT_DEMO_BROKER="mosquitto")
    second = third = None
    try:
        first.wait_up()
        parts = children_of(first.proc.pid)
        record = json.loads((data / RECORD).read_text())
        assert record["pid"] == first.proc.pid and record["http"] == f"127.0.0.1:{first.port}"
        assert {p["name"]: p["pid"] for p in record["parts"]}.keys() == {
            "broker", "fleet", "agent", "demo-scanner-1", "demo-lights-1"}
        assert sorted(p["pid"] for p in record["parts"]) == sorted(parts)
        assert all(p["start"] == start_time(p["pid"]) for p in record["parts"])

        # A second demo on the same folder names the running one, says how to stop it, and leaves it be.
        second = Demo(data, POPKIT_DEMO_BROKER="mosquitto")
        assert second.proc.wait(60) == 2
        second._reader.join(5)
        assert f"a demo is already running on {data}: pid {first.proc.pid}" in second.out, second.out
        assert f"`kill {first.proc.pid}`" in second.out and f"http://127.0.0.1:{first.port}/" in second.out
        assert first.proc.poll() is None and all(alive(p) for p in parts)
        assert first.api("kits")["items"], "the running demo stopped answering"
        # Without its record (deleted, or a demo from before records), its parts still name it.
        record_bytes = (data / RECORD).read_bytes()
        (data / RECORD).unlink()
        r = demo_cli(data, free_port())
        (data / RECORD).write_bytes(record_bytes)
        assert r.returncode == 2 and f"a demo is already running on {data}: pid {first.proc.pid}." in r.stderr, r.stderr
        assert first.proc.poll() is None and all(alive(p) for p in parts)

        # SIGKILL: no finally, no signal handler runs in the supervisor. Its parts go all the same.
        first.proc.kill()
        first.proc.wait(10)
        wait_until(lambda: not any(alive(p) for p in parts), timeout=10,
                   what=f"every part of the killed demo gone (left: {[cmdline(p)[:60] for p in parts if alive(p)]})")
        wait_until(lambda: port_free(first.port), timeout=5, what="the killed demo's HTTP port free")

        # The next demo on the folder, on the same port, comes up and says what it found.
        third = DemoOn(data, first.port, POPKIT_DEMO_BROKER="mosquitto")
        third.wait_up()
        assert f"the last demo on {data} (pid {first.proc.pid})" in third.out, third.out[:2000]
        assert json.loads((data / RECORD).read_text())["pid"] == third.proc.pid

        # Its terminal closes (SIGHUP): it stops in order, as on Ctrl-C, and frees the folder.
        kids = children_of(third.proc.pid)
        third.proc.send_signal(signal.SIGHUP)
        third.proc.wait(40)
        third._reader.join(5)
        assert_stopped_cleanly(third, kids)
        assert "stopping" in third.out
        assert not (data / RECORD).exists()
    finally:
        for demo in (third, second, first):
            _end(demo)


def test_a_stale_record_is_cleaned_up_its_parts_stopped_a_reused_pid_spared_and_the_ports_holder_named(tmp_path):
    data = tmp_path / "demo"
    data.mkdir()
    supervisor = subprocess.Popen(["true"])  # the killed demo: its pid is free now
    supervisor.wait()
    left = subprocess.Popen(["sleep", "300"])  # a part it left running
    reused = subprocess.Popen(["sleep", "300"])  # has a recorded part's pid, but is not that part (not its start)
    try:
        wait_until(lambda: start_time(left.pid) and start_time(reused.pid), what="the two processes started")
        (data / RECORD).write_text(json.dumps({
            "pid": supervisor.pid, "start": 1, "since": datetime.now(timezone.utc).isoformat(), "http": "127.0.0.1:1",
            "parts": [{"name": "fleet", "pid": left.pid, "start": start_time(left.pid)},
                      {"name": "agent", "pid": reused.pid, "start": start_time(reused.pid) - 1}]}))
        with socket.socket() as held:  # and the port the demo wants is someone else's: ours
            held.bind(("127.0.0.1", 0))
            held.listen()
            r = demo_cli(data, held.getsockname()[1])
            port = held.getsockname()[1]
        assert r.returncode == 2, r.stderr
        assert (f"the last demo on {data} (pid {supervisor.pid}) was killed and left parts running; "
                f"stopped fleet (pid {left.pid})") in r.stderr, r.stderr
        assert left.wait(5) == -signal.SIGTERM
        assert reused.poll() is None, "a process with a reused pid was killed"
        assert f"127.0.0.1:{port} is already in use by pid {os.getpid()} (" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not (data / RECORD).exists(), "the refused demo left its record behind"
    finally:
        for p in (left, reused):
            p.kill()
            p.wait()


def test_an_unreadable_record_is_named_and_replaced(tmp_path):
    data = tmp_path / "demo"
    data.mkdir()
    (data / RECORD).write_text('{"since": "yesterday"}')
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        r = demo_cli(data, held.getsockname()[1])
    assert r.returncode == 2
    assert f"{data / RECORD}: unreadable demo record (field 'pid'); replaced" in r.stderr, r.stderr


def test_parts_an_older_demo_left_without_a_record_are_found_by_their_data_folder_and_stopped(tmp_path):
    data = tmp_path / "demo"
    data.mkdir()
    # As a demo from before the record leaves its agent when killed: in its own session, parent gone,
    # its folder named relative to where it was started (as `./dev demo` gives var/demo).
    sh = subprocess.run(["sh", "-c", f'setsid "{sys.executable}" -m popkit.cli agent run --kit "{DEMO_KIT}" '
                         f'--mqtt mqtt://127.0.0.1:{free_port()} --data demo/agent --simulate '
                         '>/dev/null 2>&1 & echo $!'], capture_output=True, text=True, cwd=tmp_path, check=True)
    orphan = int(sh.stdout)
    elsewhere = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(data / "agent")])  # no part
    try:
        wait_until(lambda: "agent run" in cmdline(orphan), what="the orphaned agent running")
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            r = demo_cli(data, held.getsockname()[1])
        assert r.returncode == 2, r.stderr
        assert f"the last demo on {data} was killed and left parts running; stopped agent (pid {orphan})" in r.stderr, \
            r.stderr
        assert not alive(orphan)
        assert elsewhere.poll() is None
    finally:
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)
        elsewhere.kill()
        elsewhere.wait()


# ---------------------------------------------------------------- the lifeline itself

def test_a_child_started_through_the_lifeline_dies_with_its_parent_even_by_sigkill(tmp_path):
    script = ("import os, signal, sys; from popkit import lifeline\n"
              "p = lifeline.popen(['sleep', '300'])\n"
              "print(p.pid, flush=True)\n"
              "sys.stdin.readline()\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    child = int(parent.stdout.readline())
    try:
        wait_until(lambda: cmdline(child).startswith("sleep "), what="the child exec'd (its pid kept)")
        assert alive(child)
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.wait(10) == -signal.SIGKILL
        wait_until(lambda: not alive(child), timeout=5, what="the child gone with its parent")
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_the_lifeline_refuses_a_thread_that_may_end_before_the_child():
    errors = []

    def start():
        try:
            lifeline.popen(["true"])
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=start, name="short-lived")
    t.start()
    t.join()
    assert errors and "main thread" in errors[0] and "'short-lived'" in errors[0]


def test_the_lifeline_does_not_start_a_command_whose_supervisor_is_already_gone(tmp_path):
    marker = tmp_path / "ran"
    # Parent pid 1 is not this test: as if the supervisor died between the fork and the prctl.
    r = subprocess.run(lifeline.command(["touch", str(marker)], parent=1), capture_output=True, text=True)
    assert r.returncode == lifeline.ORPHANED_EXIT
    assert "supervisor 1 is gone" in r.stderr
    assert not marker.exists()


def test_closing_the_demos_terminal_stops_it_in_order_and_frees_its_folder(tmp_path):
    """A real terminal hangup: the demo runs on a pseudo-terminal that is its controlling terminal,
    and the terminal goes away (the kernel sends SIGHUP; every later write to it fails)."""
    import fcntl
    import pty
    import termios

    if mosquitto_binary() is None:
        pytest.skip("mosquitto is not installed")
    data = tmp_path / "demo"
    master, slave = pty.openpty()
    demo = subprocess.Popen(
        [sys.executable, "-m", "popkit.cli", "demo", "--http", f"127.0.0.1:{free_port()}", "--data", str(data)],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0), env=dict(os.environ, POPKIT_DEMO_BROKER="mosquitto"))
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"is up" not in seen and time.monotonic() < deadline and demo.poll() is None:
            try:
                seen += os.read(master, 65536)
            except OSError:
                break
        assert b"is up" in seen, seen.decode(errors="replace")[-2000:]
        parts = [p["pid"] for p in json.loads((data / RECORD).read_text())["parts"]]
        assert len(parts) == 5 and all(alive(p) for p in parts)
        os.close(master)  # the terminal window closes
        master = None
        demo.wait(60)
        assert not any(alive(p) for p in parts), "a part outlived the demo whose terminal closed"
        assert not (data / RECORD).exists(), "the demo died on SIGHUP instead of stopping in order"
    finally:
        if master is not None:
            os.close(master)
        if demo.poll() is None:
            demo.kill()  # its parts follow it
            demo.wait()
