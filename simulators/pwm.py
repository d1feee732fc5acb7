"""The far end of the unix board's PWM outputs (``device/boards/unix/lighting_hw.py``), for tests.

The board reports every PWM duty write as a 4-byte record on a local TCP socket::

    b"P" channel:u8 duty:u16be      channel 0..3 = r, g, b, w; duty 0..65535 (duty_u16)

One connection per firmware boot. The receiver timestamps each record on arrival
(``time.monotonic()``) and keeps them per connection, so a test can read the fade
a controller drew, and when a boot first showed its scene. A long run (the demo)
passes ``keep`` to hold only the last writes of each connection.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

REC_PWM = 0x50  # b"P"
CHANNELS = ("r", "g", "b", "w")


@dataclass
class PwmSession:
    """One boot's connection: when it came, and every (t, channel, duty) it sent."""

    opened: float
    writes: list[tuple[float, int, int]] | deque[tuple[float, int, int]] = field(default_factory=list)
    duty: list[int | None] = field(default_factory=lambda: [None] * 4)


class PwmReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: int | None = None) -> None:
        self._server = socket.create_server((host, port))
        self.keep = keep  # writes kept per connection (None: all of them)
        self.address = self._server.getsockname()
        self.sessions: list[PwmSession] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._serve, name="pwm-receiver", daemon=True).start()

    @property
    def port(self) -> int:
        return self.address[1]

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        s = PwmSession(time.monotonic())
        if self.keep is not None:
            s.writes = deque(maxlen=self.keep)
        with self._lock:
            self.sessions.append(s)
            if self.keep is not None:
                del self.sessions[:-2]  # a restarted firmware's old connections
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                t = time.monotonic()
                buf += chunk
                n = len(buf) // 4 * 4
                for i in range(0, n, 4):
                    kind, ch, duty = struct.unpack_from(">BBH", buf, i)
                    with self._lock:
                        if kind != REC_PWM or ch > 3:
                            self.errors.append(f"bad record {buf[i:i + 4].hex()}")
                            continue
                        s.writes.append((t, ch, duty))
                        s.duty[ch] = duty
                buf = buf[n:]

    def current(self) -> PwmSession | None:
        with self._lock:
            return self.sessions[-1] if self.sessions else None

    def duties(self) -> list[int | None]:
        s = self.current()
        with self._lock:
            return list(s.duty) if s else [None] * 4

    def writes(self, session: PwmSession | None = None) -> list[tuple[float, int, int]]:
        s = session or self.current()
        with self._lock:
            return list(s.writes) if s else []

    def close(self) -> None:
        self._closed = True
        self._server.close()
