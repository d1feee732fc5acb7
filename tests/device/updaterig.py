"""A kit for the ESP32's field update, from real parts: the scanner flashed as `popkit device flash`
stages it (popkit/flashtree.py), a newer release of it built and signed as kits/release.py lays one
out, the kit's cache (agent/updates/cache.py) and the agent's kit-network server
(agent/updates/server.py) serving it, and the retained offer the agent publishes at the kit broker.

Between the door and the server sits a small HTTP-aware TCP relay (``Relay``). It stands for the
kit's Wi-Fi: it records every request (path, Range) and the body bytes it carried to the device, so
a test can count what was served, it paces the bytes (``rate``, bytes a second: an ESP32 on the kit's
Wi-Fi, writing its flash, is not a loopback interface) and it can cut every connection at once.

Used by tests/device/test_device_update.py and bench/update_device.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.updates.cache import UpdateCache
from agent.updates.keys import DeviceKeys
from agent.updates.server import UpdateServer
from kits.release import new_private_key, public_key_of, write_bundle
from kits.tickets import EventKey, issue
from popkit import flashtree
from popkit.broker import free_port
from popkit.romfs import build_image
from tests.device.firmware import Device, mpy_cross
from tests.device.mpy import DEVICE, micropython_binary

KIT = "demo"
DOOR = "upd-door-1"
EVENT = "UPD-NIGHT"
RUNNING = "scanner-0.3.1"  # FW in device/apps/scanner/main.py
KEY = bytes(range(32))  # the door's update_key (provisioned: in its scanner.json and the Pi's keys file)
TREE_HEAP = "256k"  # a flashed tree loads its .mpy into the heap (tests/device/test_flash_root.py)
BUDGET = 64 * 1024  # the ROMFS runs: 64 KB for everything the firmware allocates
PEAK_TARGET = 48 * 1024  # and the live peak within 48 KB (issue 18, docs/updates.md)


def mpy_abi() -> int:
    r = subprocess.run([micropython_binary(), "-c", "import sys; print(sys.implementation._mpy)"],
                       capture_output=True, text=True, timeout=10)
    return int(r.stdout)


def compile_app(src_text: str, out: Path) -> bytes:
    src = out.with_suffix(".py")
    src.write_text(src_text)
    subprocess.run([mpy_cross(), "-o", str(out), str(src)], check=True, timeout=60)
    return out.read_bytes()


def scanner_release(tmp: Path, version: str, tree: Path, pem: bytes, role: str = "scanner",
                    app: str | None = None) -> Path:
    """A release of the real scanner at ``version``: the flashed slot's modules, its app compiled with
    FW set to the new version (what the device then reports). ``role``: what the manifest says.
    ``app``: another app_main's source instead (a bad release: one that fails its trial)."""
    files = {p.name: p.read_bytes() for p in sorted((tree / "a").iterdir()) if p.suffix == ".mpy"}
    if app is not None:
        files["app_main.mpy"] = compile_app(app, tmp / f"app-bad-{version}-{os.urandom(2).hex()}.mpy")
        return write_bundle(tmp / f"bundles-{os.urandom(3).hex()}", role, version, mpy_abi(), files, pem, 1)
    app = (DEVICE / "apps" / "scanner" / "main.py").read_text()
    assert f'FW = "{RUNNING}"' in app, "the running scanner's FW moved: update tests/device/updaterig.py RUNNING"
    files["app_main.mpy"] = compile_app(app.replace(f'FW = "{RUNNING}"', f'FW = "scanner-{version}"'),
                                        tmp / f"app-{role}-{version}.mpy")
    return write_bundle(tmp / f"bundles-{os.urandom(3).hex()}", role, version, mpy_abi(), files, pem, 1)


@dataclass
class Req:
    path: str
    start: int  # -1: no Range
    end: int
    body: int = 0  # bytes of body carried to the device


class Relay:
    """The kit's network between a door and the agent's update server (see the module's text)."""

    def __init__(self, upstream_port: int, rate: int = 0):
        self.upstream_port = upstream_port
        self.rate = rate  # body bytes a second to the device, 0: as fast as they come
        self.port = free_port()
        self.reqs: list[Req] = []
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stop = False
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", self.port))
        self._srv.listen(16)
        self._srv.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def served(self, path_part: str = "/files/") -> int:
        with self._lock:
            return sum(r.body for r in self.reqs if path_part in r.path)

    def requests(self) -> list[Req]:
        with self._lock:
            return list(self.reqs)

    def cut(self) -> None:
        """Every open connection dropped (the Wi-Fi gone for a moment)."""
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._stop = True
        self._srv.close()
        self.cut()

    def _accept(self) -> None:
        while not self._stop:
            try:
                c, _ = self._srv.accept()
            except OSError:
                continue
            threading.Thread(target=self._pump, args=(c,), daemon=True).start()

    def _pump(self, c: socket.socket) -> None:
        up = None
        with self._lock:
            self._socks.append(c)
        try:
            c.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(4096)
                if not d:
                    return
                head += d
            line = head.split(b"\r\n", 1)[0].decode()
            rng = re.search(rb"\r\nRange: bytes=(\d+)-(\d*)", head)
            req = Req(line.split(" ")[1], int(rng.group(1)) if rng else -1,
                      int(rng.group(2)) if rng and rng.group(2) else -1)
            with self._lock:
                self.reqs.append(req)
            up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            with self._lock:
                self._socks.append(up)
            up.sendall(head)
            resp = b""
            while b"\r\n\r\n" not in resp:
                d = up.recv(4096)
                if not d:
                    return
                resp += d
            cut = resp.index(b"\r\n\r\n") + 4
            c.sendall(resp[:cut])
            rest = resp[cut:]
            t0 = time.monotonic()
            sent = 0
            while True:
                while rest:
                    piece, rest = (rest[:1024], rest[1024:]) if self.rate else (rest, b"")  # paced a KB at a time
                    if self.rate:
                        ahead = t0 + (sent + len(piece)) / self.rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                    c.sendall(piece)
                    sent += len(piece)
                    with self._lock:
                        req.body += len(piece)
                r, _, _ = select.select([up], [], [], 10)
                if not r:
                    return
                d = up.recv(1024 if self.rate else 65536)
                if not d:
                    return
                rest = d
        except OSError:
            pass
        finally:
            for s in (c, up):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass


class ServerThread:
    """The agent's update server (agent/updates/server.py) in an asyncio loop of its own, as the agent
    runs it; stop() and start() again on the same port (the agent restarted)."""

    def __init__(self, cache: UpdateCache, keys: Path):
        self.cache, self.keys = cache, keys
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = 0
        self.server: UpdateServer | None = None

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def start(self) -> "ServerThread":
        self.server = self._run(UpdateServer(self.cache, DeviceKeys(self.keys), "127.0.0.1", self.port).start())
        self.port = self.server.port
        return self

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.close())
            self.server = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)


@dataclass
class Kit:
    """A door's flashed tree, the kit's cache and server, and the relay between them."""

    tmp: Path
    broker_port: int
    sim_port: int
    trial_s: int = 2
    rate: int = 0
    safe_boots: int = 5
    pem: bytes = field(default_factory=new_private_key)

    def __post_init__(self):
        self.key = EventKey.generate(EVENT)
        cfg = {"kit": KIT, "device": DOOR, "update_key": KEY.hex(), "trial_s": self.trial_s,
               "safe_boots": self.safe_boots, "telemetry_s": 60, "hub_ms": 50,
               # a test's bounds on the download's retries (the firmware's defaults are for a venue)
               "update": {"timeout_ms": 3000, "tries": 4, "backoff_ms": 300},
               "broker": {"host": "127.0.0.1", "port": self.broker_port, "keepalive": 5, "response_ms": 1500,
                          "backoff_ms": 200, "backoff_max_ms": 1000, "resend_ms": 3000},
               "uart": ["127.0.0.1", self.sim_port],
               "gate": {"leeway": 0, "events": [{"event": EVENT, "key": self.key.secret.hex(), "capacity": 1000}]}}
        self.tree = flashtree.stage("scanner", "unix", cfg, self.tmp / "tree")
        self.cache = UpdateCache(self.tmp / "agent" / "updates", public_key_of(self.pem))
        self.keys = self.tmp / "agent" / "update-keys.json"
        self.keys.parent.mkdir(parents=True, exist_ok=True)
        self._n = 0
        self.set_key(KEY)
        self.server = ServerThread(self.cache, self.keys).start()
        self.relay = Relay(self.server.port, self.rate)

    def set_key(self, key: bytes) -> None:
        """The door's key in the Pi's keys file (re-read by the server when it changes)."""
        self.keys.write_text(json.dumps({DOOR: key.hex()}))
        self.keys.chmod(0o600)
        self._n += 1
        t = time.time() + self._n
        os.utime(self.keys, (t, t))  # a new mtime even within the same second: the server re-reads it

    def release(self, version: str, role: str = "scanner", app: str | None = None) -> tuple[str, int]:
        """Build, sign and cache a release; (its name, its files' total bytes). ``app``: its app_main's
        source, when not the real scanner's (see scanner_release)."""
        folder = scanner_release(self.tmp, version, self.tree, self.pem, role, app)
        self.cache.add(folder)
        m = json.loads((folder / "manifest.json").read_bytes())
        return f"{role}-{version}", m["total_size"]

    def offer(self, release: str, rollback: bool = False, id: str | None = None) -> bytes:
        """The agent's offer (kits/contract.py UpdateOffer), as published retained on the door's topic."""
        self._n += 1
        return json.dumps({"id": id or f"o{self._n}-{os.urandom(2).hex()}", "release": release, "fw": release,
                           "host": "127.0.0.1", "port": self.relay.port, "rollback": rollback,
                           "ts": int(time.time() * 1000)}).encode()

    def ticket(self, n: int) -> str:
        now = int(time.time())
        return issue(self.key, EVENT, f"T{n:05d}", "GA", now - 3600, now + 86400)

    def image(self) -> Path:
        """The scanner's ROMFS image, with the boot stage's abboot beside its modules: a build that keeps
        its code in flash (frozen, or ROMFS) keeps the never-updated boot stage there too."""
        out = self.tmp.parent / "scanner-ab.romfs"
        return build_image("scanner", "unix", out, extra=(DEVICE / "boot" / "abboot.py",))

    def door_from_rom(self) -> Device:
        """The door running from its ROMFS image (the heap as the budget counts it), in its flashed
        tree's folder (its config, data/, slots and the boot stage's files)."""
        return Device.from_rom(self.image(), "scanner.json", budget=BUDGET, cwd=self.tree, role="scanner")

    def door_from_tree(self) -> Device:
        """The flashed tree booted as a board does (main.py: the boot stage picks the slot)."""
        return Device.from_tree(self.tree, TREE_HEAP)

    def close(self) -> None:
        self.relay.close()
        self.server.close()


def topic(channel: str) -> str:
    return f"popkit/v1/{KIT}/{DOOR}/{channel}"


def slot_bytes(tree: Path, slot: str = "b") -> int:
    """What the spare slot holds of a release's files, on "flash" (its manifest aside)."""
    d = tree / slot
    if not d.is_dir():
        return 0
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name != "manifest.json")
