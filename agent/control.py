"""The running agent's local control channel: how ``popkit kit up`` and ``kit down`` talk to it.

Beside the agent service, a second process must not drive the kit: the daemon holds the serial
ports, the Bluetooth links and the GPIO pins (one port with two readers crosses the printer's
replies), and it alone speaks for the agent on the broker (a second link publishing the agent's
``state`` would, on leaving, mark the agent and everything it hosts offline while the service
runs). So the commands ask the daemon, and the daemon does the work with what it holds.

The rules that shape this module:

* **Local only.** A Unix stream socket, ``<data folder>/agent.sock`` (the service's
  ``/var/lib/popkit/agent.sock``); no network listener, ever. Mode 0660, group ``popkit``: root
  and members of the popkit group may use it, nobody else (the folder is 0750 popkit:popkit).
* **One request a connection, line-delimited JSON.** The client writes one line,
  ``{"op": ..., "kit": <manifest id>, ...}``; the daemon answers with lines and closes. The last
  line carries ``"end": true``; an ``"error"`` line ends it too. An agent for another kit
  refuses, so a crew with the wrong manifest is told, not shown another kit's verdict.
* **Ops.** ``selftest``: a ``{"step": ...}`` line as each step starts and ends, then
  ``{"verdict": ...}``. ``kitdown`` (``wait_s``): ``{"summary": ...}`` at once, then
  ``{"left": <outbox>}`` when the outbox is empty or ``wait_s`` is up.
* **No agent is a normal answer.** No socket, or a socket nobody listens on (an agent that was
  killed leaves one behind): :class:`NoAgent`, and the command works alone, as it does on a
  laptop. A socket this user may not open is not "no agent": that is refused, since working
  alone would open the hardware the daemon holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from agent.errors import AgentError
from agent.powerup import Report, Step, StepResult
from agent.readiness import Problem

log = logging.getLogger("popkit.agent.control")

SOCKET_NAME = "agent.sock"
GROUP = "popkit"
MODE = 0o660
MAX_LINE = 64 * 1024
REQUEST_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 90.0  # a self-test waits for one already running (each step gives up at 8 s)

Reply = Callable[[dict], None]
Handler = Callable[[dict, Reply], Awaitable[None]]


class ControlError(AgentError):
    """The agent's control channel is there but cannot be used (the message says why)."""


class NoAgent(ControlError):
    """No agent listens on this data folder: the caller works on its own."""


def socket_path(data: Path) -> Path:
    return Path(data) / SOCKET_NAME


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """``path`` as a socket address. Unix socket paths end at 107 bytes; a deeper one (a test's
    temporary folder) is reached through its folder's /proc/self/fd entry."""
    if len(os.fsencode(str(path))) < 100:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _connect(path: Path, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with _address(path) as addr:
            sock.connect(addr)
    except (FileNotFoundError, NotADirectoryError, ConnectionRefusedError) as exc:
        sock.close()
        raise NoAgent(f"no agent listens at {path} ({exc.strerror})") from None
    except PermissionError:
        sock.close()
        raise ControlError(f"{path}: the agent is running, but this user may not talk to it: run as a member of "
                           "the popkit group (sudo usermod -aG popkit $USER, then log in again) or as root") from None
    except OSError:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- the client


def request(path: Path, kit: str, op: str, timeout: float = ANSWER_TIMEOUT_S, **args) -> Iterator[dict]:
    """Connect at once (raising :class:`NoAgent` or :class:`ControlError` here, before any
    output), then iterate over the agent's answer lines up to the last."""
    sock = _connect(path, timeout)
    try:
        sock.sendall(json.dumps({"op": op, "kit": kit, **args}).encode() + b"\n")
    except OSError as exc:
        sock.close()
        raise ControlError(f"{path}: the agent closed the channel ({exc})") from None
    return _answers(sock, path, timeout)


def _answers(sock: socket.socket, path: Path, timeout: float) -> Iterator[dict]:
    with sock, sock.makefile("rb") as lines:
        while True:
            try:
                line = lines.readline(MAX_LINE)
            except TimeoutError:
                raise ControlError(f"{path}: no answer from the agent in {timeout:.0f} s") from None
            if not line:
                raise ControlError(f"{path}: the agent closed the channel before it answered (did it restart? "
                                   "journalctl -u popkit-agent)")
            try:
                msg = json.loads(line)
            except ValueError:
                raise ControlError(f"{path}: the agent sent a line that is not JSON") from None
            if "error" in msg:
                raise ControlError(f"the agent refused: {msg['error']}")
            yield msg
            if msg.get("end"):
                return


# ---------------------------------------------------------------- the daemon's side


class ControlServer:
    """The daemon's listener: ``handlers`` by op, each given the request and a ``reply`` that
    queues one answer line. Runs on the daemon's asyncio loop."""

    def __init__(self, path: Path, kit: str, handlers: dict[str, Handler]):
        self.path, self.kit, self.handlers = Path(path), kit, handlers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> "ControlServer":
        sock = _listen(self.path)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=MAX_LINE)
        log.info("control channel at %s (mode %o, group %s)", self.path, MODE, _group_name(self.path))
        return self

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def reply(msg: dict) -> None:
            if not writer.is_closing():
                writer.write(json.dumps(msg).encode() + b"\n")

        try:
            try:  # a client that never says anything must not hold a task of ours for ever
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT_S)
            except ValueError:  # longer than MAX_LINE
                raise _Refused("a request is one JSON line") from None
            except asyncio.TimeoutError:
                raise _Refused(f"no request in {REQUEST_TIMEOUT_S:.0f} s") from None
            req = self._request(line)
            log.info("control: %s asked by %s", req["op"], _peer(writer))
            await self.handlers[req["op"]](req, reply)
        except _Refused as exc:
            reply({"error": str(exc), "end": True})
        except ConnectionError as exc:
            log.debug("control: the client went away: %s", exc)
        except Exception as exc:  # noqa: BLE001 - one failed request must not take the channel down
            log.exception("control: request failed")
            reply({"error": f"{type(exc).__name__}: {exc}"[:200], "end": True})
        finally:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()

    def _request(self, line: bytes) -> dict:
        try:
            req = json.loads(line)
        except ValueError:
            raise _Refused("a request is one JSON line") from None
        if not isinstance(req, dict) or req.get("op") not in self.handlers:
            raise _Refused(f"unknown op; this agent takes {', '.join(sorted(self.handlers))}")
        if req.get("kit") != self.kit:
            raise _Refused(f"this agent runs kit {self.kit!r}, not {req.get('kit')!r}: check the manifest you named")
        return req


class _Refused(Exception):
    pass


def ensure_free(path: Path) -> None:
    """Raise ControlError when another agent answers at ``path`` (or something not a socket sits
    there); remove a socket left by an agent that was killed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path}: is there, and is not a socket: move it away")
    try:
        _connect(path, 2.0).close()
    except NoAgent:
        os.unlink(path)
        return
    raise ControlError(f"{path}: another agent runs on this data folder already (two would share its "
                       "outbox and hardware)")


def _listen(path: Path) -> socket.socket:
    ensure_free(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _address(path) as addr:
            sock.bind(addr)
        os.chmod(path, MODE)  # the folder (0750) keeps others out while it is briefly wider
        _give_to_group(path)
        sock.listen(8)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _give_to_group(path: Path) -> None:
    """Group popkit, so its members may connect (the service runs as popkit:popkit and needs
    nothing; an agent run as root hands it over)."""
    try:
        gid = grp.getgrnam(GROUP).gr_gid
    except KeyError:
        return  # a laptop or a test machine: owner only, and root
    if os.stat(path).st_gid != gid:
        try:
            os.chown(path, -1, gid)
        except PermissionError:
            log.warning("%s: cannot give it to group %s: only its owner and root may use it", path, GROUP)


def _group_name(path: Path) -> str:
    gid = os.stat(path).st_gid
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _peer(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                             struct.calcsize("3i")))
    except (OSError, AttributeError):
        return "a local client"
    return f"uid {uid} (pid {pid})"


# ---------------------------------------------------------------- the self-test on the wire


def _result(res: StepResult) -> dict:
    # Whole texts: the fleet's event cuts them to its field sizes (Problem.as_dict), the terminal need not.
    return {"detail": res.detail, "problems": [{k: v for k, v in vars(p).items() if v is not None} for p in res.problems]}


def _result_from(d: dict) -> StepResult:
    return StepResult(str(d.get("detail", "")), [Problem(**p) for p in d.get("problems", [])])


def step_message(step: Step, res: StepResult | None) -> dict:
    return {"step": {"device": step.device, "label": step.label, **({"result": _result(res)} if res else {})}}


def step_from(msg: dict) -> tuple[Step, StepResult | None]:
    s = msg["step"]

    async def remote() -> StepResult:  # the daemon ran it; here it is only drawn
        raise RuntimeError("a step shown from the agent's channel does not run here")

    return Step(s["device"], s["label"], remote), (_result_from(s["result"]) if "result" in s else None)


def verdict_message(report: Report) -> dict:
    return {"verdict": {"status": report.status, "took_ms": int(report.took_s * 1000),
                        "results": {d: _result(r) for d, r in report.results.items()}}, "end": True}


def report_from(msg: dict) -> Report:
    v = msg["verdict"]
    return Report(v["status"], {d: _result_from(r) for d, r in v["results"].items()}, v["took_ms"] / 1000)


class ChannelView:
    """The view interface of agent/kitview.py, sending each step and the verdict to a client."""

    def __init__(self, reply: Reply):
        self.reply = reply

    def __enter__(self) -> "ChannelView":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def progress(self, step: Step, res: StepResult | None) -> None:
        self.reply(step_message(step, res))

    def verdict(self, report: Report) -> None:
        self.reply(verdict_message(report))


class Views:
    """Several views as one: the daemon's log, and the client that asked."""

    def __init__(self, *views):
        self.views = views

    def __enter__(self) -> "Views":
        for v in self.views:
            v.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for v in self.views:
            v.__exit__(*exc)

    def progress(self, step: Step, res: StepResult | None) -> None:
        for v in self.views:
            v.progress(step, res)

    def verdict(self, report: Report) -> None:
        for v in self.views:
            v.verdict(report)
