"""The README's first command: `popkit demo` brings a kit up within 30 s and Ctrl-C stops all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from popkit.broker import free_port
from tests.conftest import wait_until


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; only its parent's wait() is missing.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ")[1][0] != "Z"


@pytest.mark.parametrize("broker_kind", ["mosquitto", "amqtt"])
def test_demo_shows_the_kit_online_with_battery_and_stops_cleanly_on_ctrl_c(tmp_path, broker_kind):
    port = free_port()
    env = dict(os.environ, POPKIT_DEMO_BROKER=broker_kind)
    started = time.monotonic()
    demo = subprocess.Popen([sys.executable, "-m", "popkit.cli", "demo", "--http", f"127.0.0.1:{port}",
                             "--data", str(tmp_path / "demo")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True)
    reader.start()
    try:
        kits = wait_until(lambda: (k := get_json(f"http://127.0.0.1:{port}/api/v1/kits")) and
                          k[0]["devices_online"] == k[0]["devices_total"] and k[0]["battery"] and k,
                          timeout=30, interval=0.3, what="the demo kit online with a battery reading")
        assert time.monotonic() - started < 30
        kit = kits[0]
        assert kit["id"] == "demo" and kit["devices_total"] == 5
        assert 0 < kit["battery"]["soc"] <= 100 and 11 < kit["battery"]["v"] < 14
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
        assert "PopKit fleet" in page
        kids = children_of(demo.pid)
        assert len(kids) >= 3
        wait_until(lambda: any("is up" in line for line in lines), what="the demo telling the crew the kit is up")
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(30)
        reader.join(5)
    out = "".join(lines)
    assert demo.returncode == 0, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
    wait_until(lambda: not any(alive(p) for p in kids), timeout=10, what="every part of the demo stopped")
