"""The far end of a DMX512 line, for the unix board and tests: records back into frames, with the rules checked.

A real line has no bytes for BREAK and MAB, only time with the line low then high,
so the unix board (``dmx.StreamPort`` in ``device/lib/dmx.py``) sends the line as
records over a local socket (or into a file):

``B`` break_us:u16be mab_us:u16be
    the line went low for ``break_us`` (BREAK), then high for ``mab_us`` (MAB).
``D`` length:u16be data
    ``length`` bytes on the line at 250 kbaud 8N2.

A frame is a BREAK and every byte after it up to the next BREAK: the start code,
then the slots. As on a real receiver, a frame is complete when the next BREAK
arrives (``flush()`` takes the last one at the end of a capture). Bytes before
the first BREAK cannot be placed in a frame and are counted in ``lost``.

The rules checked (ANSI E1.11, receiver side): BREAK >= 88 us, 8 us <= MAB < 1 s,
start code 0 (dimmer levels; the only start code PopKit sends), 1..512 slots.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass, field

REC_BREAK = 0x42  # b"B"
REC_DATA = 0x44  # b"D"
BREAK_MIN_US = 88
MAB_MIN_US = 8
MAB_MAX_US = 1_000_000
MAX_SLOTS = 512


class DmxStreamError(ValueError):
    """The record stream itself is broken (not a DMX rule: the link to the board)."""


class DmxFormatError(ValueError):
    """A frame breaks a DMX512 timing or format rule."""


def encode_break(break_us: int = 180, mab_us: int = 40) -> bytes:
    return struct.pack(">BHH", REC_BREAK, break_us, mab_us)


def encode_data(data: bytes) -> bytes:
    return struct.pack(">BH", REC_DATA, len(data)) + bytes(data)


def encode_frame(slots: bytes, start_code: int = 0, break_us: int = 180, mab_us: int = 40) -> bytes:
    return encode_break(break_us, mab_us) + encode_data(bytes([start_code]) + bytes(slots))


@dataclass
class DmxFrame:
    break_us: int
    mab_us: int
    data: bytearray = field(default_factory=bytearray)  # start code + slots as they came

    @property
    def start_code(self) -> int | None:
        return self.data[0] if self.data else None

    @property
    def slots(self) -> bytes:
        return bytes(self.data[1:])

    def slot(self, n: int) -> int:
        """Level of slot ``n`` (1-based)."""
        return self.data[n]

    def problems(self) -> list[str]:
        out = []
        if self.break_us < BREAK_MIN_US:
            out.append(f"BREAK {self.break_us} us < {BREAK_MIN_US} us")
        if self.mab_us < MAB_MIN_US:
            out.append(f"MAB {self.mab_us} us < {MAB_MIN_US} us")
        if self.mab_us >= MAB_MAX_US:
            out.append(f"MAB {self.mab_us} us >= 1 s")
        if not self.data:
            out.append("no start code after the BREAK")
        elif self.data[0] != 0:
            out.append(f"start code 0x{self.data[0]:02X} is not 0 (dimmer levels)")
        if len(self.data) - 1 > MAX_SLOTS:
            out.append(f"{len(self.data) - 1} slots > {MAX_SLOTS}")
        return out

    def check(self) -> DmxFrame:
        problems = self.problems()
        if problems:
            raise DmxFormatError("; ".join(problems))
        return self


class DmxStreamParser:
    """Feed it record bytes in any pieces; it hands back each frame once the next BREAK starts."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._frame: DmxFrame | None = None
        self.lost = 0  # bytes seen before any BREAK
        self.offset = 0  # stream offset of _buf[0], for error messages

    def feed(self, chunk: bytes) -> list[DmxFrame]:
        self._buf += chunk
        done: list[DmxFrame] = []
        while self._buf:
            kind = self._buf[0]
            if kind == REC_BREAK:
                if len(self._buf) < 5:
                    break
                _, brk, mab = struct.unpack_from(">BHH", self._buf)
                self._consume(5)
                if self._frame is not None:
                    done.append(self._frame)
                self._frame = DmxFrame(brk, mab)
            elif kind == REC_DATA:
                if len(self._buf) < 3:
                    break
                (n,) = struct.unpack_from(">H", self._buf, 1)
                if len(self._buf) < 3 + n:
                    break
                data = self._buf[3:3 + n]
                self._consume(3 + n)
                if self._frame is None:
                    self.lost += n
                else:
                    self._frame.data += data
            else:
                raise DmxStreamError(f"unknown record 0x{kind:02X} at offset {self.offset}")
        return done

    def flush(self) -> DmxFrame | None:
        """The frame in progress (end of capture); a half record left over is a stream error."""
        if self._buf:
            raise DmxStreamError(f"{len(self._buf)} bytes of a truncated record at offset {self.offset}")
        frame, self._frame = self._frame, None
        return frame

    def _consume(self, n: int) -> None:
        del self._buf[:n]
        self.offset += n


def parse_stream(data: bytes, check: bool = True) -> list[DmxFrame]:
    """All frames in a complete capture; with ``check`` the first rule broken raises DmxFormatError."""
    p = DmxStreamParser()
    frames = p.feed(data)
    last = p.flush()
    if last is not None:
        frames.append(last)
    if check:
        for i, f in enumerate(frames):
            if f.problems():
                raise DmxFormatError(f"frame {i}: " + "; ".join(f.problems()))
    return frames


class DmxReceiver:
    """A DMX 'fixture' on a local TCP socket: the unix board connects and streams records.

    Keeps the last ``keep`` complete frames, counts frames and rule violations; the
    board reconnecting (a restarted firmware process) starts a new stream.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: int = 100) -> None:
        self._server = socket.create_server((host, port))
        self.address = self._server.getsockname()
        self.frames: deque[DmxFrame] = deque(maxlen=keep)
        self.count = 0
        self.violations: list[str] = []
        self._lock = threading.Lock()
        self._got = threading.Condition(self._lock)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="dmx-receiver", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.address[1]

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                parser = DmxStreamParser()
                while True:
                    try:
                        chunk = conn.recv(4096)
                    except OSError:
                        break
                    if not chunk:
                        break
                    try:
                        frames = parser.feed(chunk)
                    except DmxStreamError as exc:
                        self._record([], [str(exc)])
                        break
                    self._record(frames, [])
                try:
                    last = parser.flush()
                except DmxStreamError as exc:
                    self._record([], [str(exc)])
                else:
                    if last is not None:
                        self._record([last], [])

    def _record(self, frames: list[DmxFrame], errors: list[str]) -> None:
        with self._got:
            for f in frames:
                self.frames.append(f)
                self.count += 1
                self.violations += f.problems()
            self.violations += errors
            self._got.notify_all()

    def wait_frames(self, n: int, timeout: float = 5.0) -> bool:
        with self._got:
            return self._got.wait_for(lambda: self.count >= n, timeout)

    def last(self) -> DmxFrame | None:
        with self._lock:
            return self.frames[-1] if self.frames else None

    def close(self) -> None:
        self._closed = True
        self._server.close()
