"""``popkit demo``: a broker, the fleet and one simulated kit on this machine, stopped cleanly by Ctrl-C.

Each part runs as its own process with the same command an operator would
use (``popkit fleet serve``, ``popkit agent run --simulate``, ``popkit sim
devices``), so the demo exercises the real entry points, not a shortcut.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from popkit.broker import AmqttBroker, MosquittoBroker, embedded_broker, free_port

READY_TIMEOUT_S = 30


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


def _start_broker(data_dir: Path):
    choice = os.environ.get("POPKIT_DEMO_BROKER", "auto")
    if choice == "amqtt":
        return AmqttBroker(port=free_port()).start()
    if choice == "mosquitto":
        return MosquittoBroker(data_dir=data_dir / "broker").start()
    broker = embedded_broker(data_dir=data_dir / "broker")
    return broker.start()


def _wait_ready(base: str, kit_id: str, procs: dict[str, subprocess.Popen]) -> dict | None:
    """Poll the API until the kit shows every device online and a battery reading."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}; see its output above")
        try:
            with urllib.request.urlopen(f"{base}/api/v1/kits/{kit_id}", timeout=2) as r:
                kit = json.load(r)
            if kit["devices_online"] == kit["devices_total"] and kit["battery"]:
                return kit
        except OSError:
            pass
        time.sleep(0.5)
    return None


def run_demo(mqtt_url: str | None, http: str, data_dir: Path, kit: str) -> int:
    from kits.manifest import load_manifest

    manifest = load_manifest(kit)
    host, port = http.rsplit(":", 1)
    if not _port_free(host, int(port)):
        print(f"popkit demo: {http} is already in use; pass --http 127.0.0.1:<free port>", file=sys.stderr)
        return 2
    data_dir.mkdir(parents=True, exist_ok=True)
    broker = None
    if mqtt_url is None:
        broker = _start_broker(data_dir)
        mqtt_url = broker.url
        print(f"broker   {broker.kind} on {mqtt_url}")
    else:
        print(f"broker   {mqtt_url} (given)")

    # `kill` or a service manager stops the demo as cleanly as Ctrl-C does; and SIGINT is
    # re-armed because a shell starting us in the background (`popkit demo &`) ignores it.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    procs: dict[str, subprocess.Popen] = {}
    # Own sessions: Ctrl-C reaches only us, and we stop the parts in order (producers first).
    spawn = dict(start_new_session=True)
    try:
        procs["fleet"] = subprocess.Popen(
            _popkit("fleet", "serve", "--mqtt", mqtt_url, "--db", f"sqlite:///{data_dir / 'fleet.db'}", "--http", http,
                    "--kit", kit, "--client-id", "popkit-demo-fleet"), **spawn)
        procs["agent"] = subprocess.Popen(
            _popkit("agent", "run", "--kit", kit, "--mqtt", mqtt_url, "--data", str(data_dir / "agent"), "--simulate"), **spawn)
        procs["devices"] = subprocess.Popen(
            _popkit("sim", "devices", "--kit", kit, "--mqtt", mqtt_url, "--data", str(data_dir / "sim")), **spawn)
        base = f"http://{http}"
        print(f"fleet    {base}/  (API {base}/api/v1/kits, OpenAPI {base}/docs, metrics {base}/metrics)")
        print(f"data     {data_dir.resolve()}")
        ready = _wait_ready(base, manifest.id, procs)
        if ready:
            b = ready["battery"]
            print(f"kit {manifest.id!r} is up: {ready['devices_online']}/{ready['devices_total']} devices online, "
                  f"battery {b.get('soc')} % at {b['v']:.2f} V.  Ctrl-C stops everything.")
        else:
            print(f"kit {manifest.id!r} not fully up after {READY_TIMEOUT_S}s; still running, see {base}/", file=sys.stderr)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        failed = [n for n, p in procs.items() if p.poll() is not None]
        print(f"popkit demo: {', '.join(failed)} stopped unexpectedly; shutting down", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…")
        return 0
    finally:
        for name in ("devices", "agent", "fleet"):
            proc = procs.get(name)
            if proc and proc.poll() is None:
                proc.send_signal(signal.SIGTERM if name != "fleet" else signal.SIGINT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        if broker is not None:
            broker.stop()
