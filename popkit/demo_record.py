"""The running demo's record in its data folder (``demo.pid``), so that the next ``popkit demo`` on
that folder tells a demo that still runs (it refuses, naming its pid and how to stop it) from one
that was killed (it stops what that one left running, and says so).

Rules that shape it:
- A pid alone is no identity: pids are reused. Every pid is recorded with its start time
  (``/proc/PID/stat`` field 22, clock ticks since boot), and a process counts only when both match.
- The record is claimed with ``os.link`` of a complete file and rewritten with ``os.replace``: it
  exists whole or not at all, and of two demos started together on one folder only one claims it.
- Demos from before the record (or a record someone deleted) left parts no record names. Those are
  found by their command lines, which name files in the data folder (``mosquitto -c
  DATA/broker/mosquitto.conf``, ``fleet serve --db sqlite:///DATA/fleet.db``, ``agent run --data
  DATA/agent``, the firmware's ``DATA/devices/ID/...``). A part whose parent is still a ``popkit
  demo`` belongs to a live demo; the others are leftovers.
- Only this user's processes are looked at, and only verified parts are ever signalled.
- Linux only (``/proc``); elsewhere the record is still written and read, and start times are None.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

RECORD = "demo.pid"
STOP_WAIT_S = 10.0  # a leftover fleet finishes its requests on SIGTERM; then SIGKILL
_KINDS = {("fleet", "serve"): "fleet", ("agent", "run"): "agent", ("device", "run"): "device",
          ("sim", "devices"): "devices"}


class DemoRunning(RuntimeError):
    """A live demo already uses the data folder (the message says which and how to stop it)."""


@dataclass(frozen=True)
class Part:
    name: str  # "broker", "fleet", "agent", "devices" or a device id
    pid: int
    start: int | None  # start time in clock ticks since boot (None: not known here)


# ---------------------------------------------------------------- processes, from /proc

def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first); None: gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields


def start_time(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[19]) if fields else None


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def alive(pid: int, start: int | None) -> bool:
    """``pid`` is still the process that started at ``start`` (None: any process with that pid)."""
    if not os.path.isdir("/proc"):
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    now = start_time(pid)
    return now is not None and (start is None or now == start)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def shown(pid: int, width: int = 90) -> str:
    line = " ".join(cmdline(pid)) or "?"
    return line if len(line) <= width else line[: width - 1] + "…"


def _is_demo(args: list[str]) -> bool:
    """``popkit demo ...`` or ``python -m popkit.cli demo ...``."""
    return any(a == "demo" and i and (args[i - 1] == "popkit.cli" or os.path.basename(args[i - 1]) == "popkit")
               for i, a in enumerate(args))


def part_kind(args: list[str]) -> str | None:
    """What of a demo this command line is: broker, fleet, agent, device, devices, or None."""
    if not args:
        return None
    exe = os.path.basename(args[0])
    if exe.startswith("mosquitto"):
        return "broker"
    if exe == "micropython":
        return "device"
    if "popkit.cli" not in args and not any(os.path.basename(a) == "popkit" for a in args[:2]):
        return None
    return next((kind for i in range(len(args) - 1) for words, kind in _KINDS.items()
                 if (args[i], args[i + 1]) == words), None)


def _paths_in(args: list[str], cwd: str, data: str) -> list[str]:
    """The arguments that name something in ``data``, relative to it."""
    found = []
    for a in args:
        a = a.removeprefix("sqlite:///")
        if not a or a.startswith("-") or "\n" in a:
            continue
        p = os.path.realpath(os.path.join(cwd, a))  # join keeps an absolute ``a`` as it is
        if p == data or p.startswith(data + os.sep):
            found.append(os.path.relpath(p, data))
    return found


def parts_of(data_dir: Path) -> list[tuple[Part, int | None]]:
    """Every process of this user that is a part of a demo on ``data_dir``, with its parent's pid."""
    data = os.path.realpath(data_dir)
    me, uid, found = os.getpid(), os.getuid(), []
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return []
    for entry in entries:
        pid = int(entry)
        try:
            if pid == me or os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            args, cwd = cmdline(pid), os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        kind = part_kind(args)
        inside = kind and _paths_in(args[1:], cwd, data)
        if not inside:
            continue
        if kind == "device":  # named as the demo names it: by the folder of its config
            kind = next((p.split(os.sep)[1] for p in inside if p.startswith("devices" + os.sep)), kind)
        start = start_time(pid)
        if start is not None:
            found.append((Part(kind, pid, start), parent_of(pid)))
    return found


def stop(parts: list[Part], wait_s: float = STOP_WAIT_S) -> list[Part]:
    """SIGTERM each part still alive (its pid and start time), SIGKILL what is left after
    ``wait_s``; returns the parts that were alive."""
    live = [p for p in parts if alive(p.pid, p.start)]
    for sig, wait in ((signal.SIGTERM, wait_s), (signal.SIGKILL, 5.0)):
        for p in live:
            if alive(p.pid, p.start):
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + wait
        while any(alive(p.pid, p.start) for p in live) and time.monotonic() < deadline:
            time.sleep(0.1)
    return live


def port_holder(port: int) -> str | None:
    """Who listens on TCP ``port`` here, as "pid N (command line)" and what it is; None: not found
    (nobody, or another user's process, whose sockets we cannot see)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        inodes |= {r[9] for r in rows if r[3] == "0A" and int(r[1].rsplit(":", 1)[1], 16) == port}
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in (e.name for e in os.scandir("/proc") if e.name.isdigit()):
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    return _whose(int(entry))
            except OSError:
                continue
    return None


def _whose(pid: int) -> str:
    said = f"pid {pid} ({shown(pid)})"
    kind, parent = part_kind(cmdline(pid)), parent_of(pid)
    if kind is None:
        return said
    if parent and _is_demo(cmdline(parent)):
        return f"{said}, the {kind} of the demo running as pid {parent}: `kill {parent}` stops that demo"
    return f"{said}, the {kind} left by a demo that was killed: `kill {pid}` stops it"


# ---------------------------------------------------------------- the record

def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class DemoRecord:
    """This demo's ``demo.pid``: claimed at start, each part noted as it starts, removed at a clean stop."""

    def __init__(self, path: Path, body: dict):
        self.path, self.body = path, body

    @classmethod
    def claim(cls, data_dir: Path, http: str) -> tuple["DemoRecord", list[str]]:
        """Claim ``data_dir`` for this demo, after stopping what a killed demo left there. Returns
        the record and what the crew should be told; raises DemoRunning if a demo still runs there."""
        path = data_dir / RECORD
        notes: list[str] = []
        prev = _read(path, notes)
        if prev and alive(prev["pid"], prev["start"]):
            raise DemoRunning(_running(data_dir, prev))
        # The parts the record names (pid and start time), and any a record-less demo left.
        left = {p.pid: p for p in (prev or {}).get("parts", []) if alive(p.pid, p.start)}
        for part, parent in parts_of(data_dir):
            if parent and parent != os.getpid() and _is_demo(cmdline(parent)):
                raise DemoRunning(_running(data_dir, {"pid": parent, "since": None, "http": None}))
            left.setdefault(part.pid, part)
        who = f"the last demo on {data_dir}" + (f" (pid {prev['pid']})" if prev else "")
        if left:
            stopped = stop(list(left.values()))
            notes.append(f"{who} was killed and left parts running; stopped "
                         + ", ".join(f"{p.name} (pid {p.pid})" for p in stopped))
        elif prev:
            notes.append(f"{who} ended without stopping cleanly; none of its parts were left running")
        if prev or path.exists():
            path.unlink(missing_ok=True)
        me = os.getpid()
        record = cls(path, {"pid": me, "start": start_time(me), "since": _iso(time.time()), "http": http,
                            "parts": []})
        tmp = path.with_name(f".{RECORD}.{me}")
        record._write(tmp)
        try:
            os.link(tmp, path)  # only if nobody claimed it since we looked
        except FileExistsError:
            raise DemoRunning(f"another popkit demo claimed {data_dir} just now ({path})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return record, notes

    def note(self, name: str, pid: int) -> None:
        """A part started (or started again): recorded with its start time."""
        parts = [p for p in self.body["parts"] if p["name"] != name]
        self.body["parts"] = [*parts, asdict(Part(name, pid, start_time(pid)))]
        tmp = self.path.with_name(f".{RECORD}.{os.getpid()}")
        self._write(tmp)
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Every part stopped: the folder is free (only if the record is still ours)."""
        current = _read(self.path, [])
        if current and current["pid"] == self.body["pid"] and current["start"] == self.body["start"]:
            self.path.unlink(missing_ok=True)

    def _write(self, path: Path) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.body, indent=1) + "\n")


def _read(path: Path, notes: list[str]) -> dict | None:
    """The record at ``path`` (its parts as Part), or None: none there, or unreadable (said in ``notes``)."""
    try:
        body = json.loads(path.read_text())
        body["pid"], body["start"] = int(body["pid"]), body.get("start")
        body["parts"] = [Part(str(p["name"]), int(p["pid"]), p.get("start")) for p in body.get("parts", [])]
        return body
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        what = f"field {exc}" if isinstance(exc, KeyError) else str(exc)
        notes.append(f"{path}: unreadable demo record ({what}); replaced")
        return None


def _running(data_dir: Path, rec: dict) -> str:
    since = f" since {rec['since']}" if rec.get("since") else ""
    at = f", its fleet at http://{rec['http']}/" if rec.get("http") else ""
    pid = rec["pid"]
    return (f"a demo is already running on {data_dir}: pid {pid}{since}{at}. Stop it with Ctrl-C in its "
            f"terminal or `kill {pid}` (it stops its parts in order), or give this one its own --data and --http")
