"""A GM65/GM861-class UART QR module, and the scanner's verdict lamps and buzzer, for the unix-port firmware.

Transport: one local TCP socket standing in for the UART wires. The simulator
listens on 127.0.0.1 (a free port by default); the firmware's unix board layer
(``device/boards/unix/scanner_hw.py``) connects to it as the ESP32 would be
wired to the module. One client at a time: a new connection (the firmware
restarted) replaces the old one.

Simulator -> firmware (the module's TX): exactly the bytes the module sends at
9600 8N1, i.e. each decoded code as ASCII text ended by CR (``\\r``; CR LF when
``crlf`` is set). ``scan()`` paces the bytes at the line rate when ``paced`` is
set (~1.04 ms a byte); ``write()`` sends raw bytes (partial writes, noise,
over-long lines).

Firmware -> simulator (what the crew sees; not on a real UART, on the ESP32
these are GPIO and PWM pins): ASCII lines ended by LF:

    LED green|red|off          the verdict lamp
    BUZZ <freq_hz> <ms>         one beep

Each received signal is kept with the monotonic time it arrived, so tests can
wait for the verdict of a scan and measure scan-to-lamp latency.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

BAUD = 9600
BYTE_S = 10 / BAUD  # 8N1: start + 8 data + stop bits


@dataclass
class Signal:
    t: float  # time.monotonic() when it arrived
    kind: str  # "LED" or "BUZZ"
    args: tuple[str, ...]


class ScannerSim:
    """The QR module's UART side, as a TCP server the firmware connects to."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, crlf: bool = False, paced: bool = False):
        self.crlf = crlf
        self.paced = paced
        self._srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind((host, port))
        self._srv.listen(2)
        self.host, self.port = self._srv.getsockname()[:2]
        self._conn: socket.socket | None = None
        self._cond = threading.Condition()
        self.signals: list[Signal] = []
        self.connections = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # ------------------------------------------------------------ the module's TX

    def wait_connected(self, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until the firmware has connected ``count`` times in all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.connections < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the firmware did not connect to the scanner UART ({self.connections})")
                self._cond.wait(left)

    def write(self, data: bytes) -> None:
        """Raw bytes on the wire, as they are (a partial line, noise, anything)."""
        with self._cond:
            conn = self._conn
        if conn is None:
            raise ConnectionError("no firmware connected to the scanner UART")
        if not self.paced:
            conn.sendall(data)
            return
        for i in range(len(data)):  # one byte per character time, as 9600 baud delivers them
            conn.sendall(data[i:i + 1])
            time.sleep(BYTE_S)

    def scan(self, payload: str | bytes) -> float:
        """The module decodes a code: its text and the terminator. Returns the time the terminator was sent."""
        if isinstance(payload, str):
            payload = payload.encode()
        self.write(payload + (b"\r\n" if self.crlf else b"\r"))
        return time.monotonic()

    def garbage(self, n: int = 8) -> None:
        """Line noise (power-up glitches, framing errors): non-printable bytes."""
        self.write(bytes([0x00, 0xFF, 0x1B, 0x80])[: n] * max(1, n // 4))

    def overlong(self, n: int = 200) -> float:
        """A code longer than any ticket (the firmware drops it whole)."""
        return self.scan(b"X" * n)

    # ------------------------------------------------------------ what the crew sees

    def mark(self) -> int:
        with self._cond:
            return len(self.signals)

    def wait_signal(self, kind: str = "LED", after: int = 0, timeout: float = 5.0, exclude=("off",)) -> Signal:
        """The first ``kind`` signal from index ``after`` on (LED off ignored by default)."""
        deadline = time.monotonic() + timeout
        i = after
        with self._cond:
            while True:
                while i < len(self.signals):
                    s = self.signals[i]
                    i += 1
                    if s.kind == kind and not (s.args and s.args[0] in exclude):
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} signal within {timeout}s")
                self._cond.wait(left)

    def since(self, after: int) -> list[Signal]:
        with self._cond:
            return list(self.signals[after:])

    def close(self) -> None:
        self._closed = True
        try:
            self._srv.close()
        except OSError:
            pass
        with self._cond:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "ScannerSim":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                old, self._conn = self._conn, conn
                self.connections += 1
                self._cond.notify_all()
            if old is not None:
                old.close()
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                data = conn.recv(1024)
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            now = time.monotonic()
            with self._cond:
                for line in lines:
                    parts = line.decode("ascii", "replace").split()
                    if parts:
                        self.signals.append(Signal(now, parts[0], tuple(parts[1:])))
                self._cond.notify_all()
        with self._cond:
            if self._conn is conn:
                self._conn = None
