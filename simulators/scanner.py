"""A GM65/GM861-class UART QR module, and the scanner's verdict lamps and buzzer, for the unix-port firmware.

Transport: one local TCP socket standing in for the UART wires. The simulator
listens on 127.0.0.1 (a free port by default); the firmware's unix board layer
(``device/boards/unix/scanner_hw.py``) connects to it as the ESP32 would be
wired to the module. One client at a time: a new connection (the firmware
restarted) replaces the old one.

Simulator -> firmware (the module's TX): exactly the bytes the module sends at
9600 8N1, i.e. each decoded code as ASCII text ended by CR (``\\r``; CR LF when
``crlf`` is set). A 1D barcode (a product label's EAN-13 or Code128) comes the
same way as a QR code: its digits or text and the terminator, no symbology
prefix (the module's default), so ``scan("0400000000015")`` is a label
scanned. ``scan()`` paces the bytes at the line rate when ``paced`` is set
(~1.04 ms a byte); ``write()`` sends raw bytes (partial writes, noise,
over-long lines).

Firmware -> simulator (what the crew sees; not on a real UART, on the ESP32
these are GPIO and PWM pins): ASCII lines ended by LF:

    LED green|red|off          the verdict lamp
    BUZZ <freq_hz> <ms>         one beep

Each received signal is kept with the monotonic time it arrived, so tests can
wait for the verdict of a scan and measure scan-to-lamp latency.

For the demo (``popkit demo``): :class:`Crowd` walks people up to the door, a scan
every few seconds (mostly good tickets, now and then a repeat or a bad one), and
:class:`ScanFeed` opens a local port where anyone can hold up a ticket of their own::

    python -m simulators.scanner 127.0.0.1:PORT 'PK1:DEMO-NIGHT:...'    # prints the lamp: green / red
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
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
        self._door = threading.Lock()  # one person at the module at a time (see show())
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

    def show(self, payload: str | bytes, timeout: float = 5.0) -> str | None:
        """One person holds up a code: scan it and wait for the lamp ("green"/"red"; None: no lamp).

        Holds the door, so scans from several threads (the crowd, the feed port) never
        interleave on the wire nor take each other's lamp.
        """
        with self._door:
            mark = self.mark()
            self.scan(payload)
            try:
                return self.wait_signal("LED", after=mark, timeout=timeout).args[0]
            except TimeoutError:
                return None

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


# ---------------------------------------------------------------- the demo's door

class Crowd:
    """People at the door: a scan every ``every_s`` seconds (jittered) through ``sim``.

    Most hold a good ticket of their own, issued on the spot with the event key (as
    the box office would have); now and then someone comes back with a ticket already
    used, holds up a tampered one, a revoked one, or scans a poster's URL.
    """

    MIX = (("fresh", 0.76), ("repeat", 0.10), ("tampered", 0.05), ("revoked", 0.04), ("malformed", 0.05))
    POSTERS = ("https://example.com/lineup", "WIFI:S:venue-guest;T:WPA;P:letmein;;")
    ID_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

    def __init__(self, sim: ScannerSim, key, every_s: float = 3.0, revoked: str | None = None,
                 rng: random.Random | None = None, first_after_s: float = 1.0):
        self.sim = sim
        self.key = key  # kits.tickets.EventKey
        self.every_s = every_s
        self.first_after_s = first_after_s
        self.revoked = revoked
        self.rng = rng or random.Random()
        self.admitted: list[str] = []
        self.shown: list[tuple[str, str | None]] = []  # (what, lamp) per person
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scanner-crowd", daemon=True)

    def start(self) -> "Crowd":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def next_code(self) -> tuple[str, str]:
        """(what, payload) for the next person."""
        from kits.tickets import issue

        r = self.rng.random()
        what = "fresh"
        for name, weight in self.MIX:
            if r < weight:
                what = name
                break
            r -= weight
        if what == "repeat" and not self.admitted:
            what = "fresh"
        if what == "revoked" and self.revoked is None:
            what = "fresh"
        if what == "repeat":
            return what, self.rng.choice(self.admitted)
        if what == "revoked":
            return what, self.revoked
        if what == "malformed":
            return what, self.rng.choice(self.POSTERS)
        now = int(time.time())
        tier = "VIP" if self.rng.random() < 0.1 else "GA"
        ticket_id = "W" + "".join(self.rng.choice(self.ID_CHARS) for _ in range(7))  # W: a walk-up
        payload = issue(self.key, self.key.event, ticket_id, tier, now - 3600, now + 6 * 3600)
        if what == "tampered":  # GA changed to VIP by hand: the signature no longer matches
            parts = payload.split(":")
            parts[3] = "VIP" if parts[3] == "GA" else "GA"
            return what, ":".join(parts)
        return what, payload

    def _run(self) -> None:
        wait = self.first_after_s
        while not self._stop.wait(wait):
            wait = self.every_s * self.rng.uniform(0.6, 1.4)
            what, payload = self.next_code()
            try:
                lamp = self.sim.show(payload)
            except ConnectionError:  # the firmware is not (yet, or any more) on the UART
                continue
            if what == "fresh" and lamp == "green":
                self.admitted.append(payload)
            self.shown.append((what, lamp))


class ScanFeed:
    """A local TCP port where each line received is a code held up to the module; the lamp goes back.

    ``python -m simulators.scanner HOST:PORT PAYLOAD...`` is its client.
    """

    def __init__(self, sim: ScannerSim, host: str = "127.0.0.1", port: int = 0):
        self.sim = sim
        self._srv = socket.create_server((host, port))
        self.host, self.port = self._srv.getsockname()[:2]
        self._closed = False
        threading.Thread(target=self._accept, name="scanner-feed", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as f:
            for raw in f:
                line = raw.strip()
                if not line:
                    continue
                try:
                    lamp = self.sim.show(line[:200]) or "no lamp"
                except ConnectionError:
                    lamp = "no scanner on the UART"
                try:
                    f.write(lamp.encode() + b"\n")
                    f.flush()
                except OSError:
                    return

    def close(self) -> None:
        self._closed = True
        self._srv.close()


def feed(address: str, payloads: list[str], timeout: float = 10.0) -> list[str]:
    """Hold each payload up to a :class:`ScanFeed` at ``host:port``; the lamp for each."""
    host, port = address.rsplit(":", 1)
    out = []
    with socket.create_connection((host, int(port)), timeout=timeout) as s, s.makefile("rwb") as f:
        for p in payloads:
            f.write(p.strip().encode() + b"\n")
            f.flush()
            out.append(f.readline().decode().strip() or "no answer")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.scanner",
                                 description="Hold tickets up to a simulated scanner (the feed port popkit demo prints).")
    ap.add_argument("address", help="the feed port, HOST:PORT")
    ap.add_argument("payload", nargs="+", help="ticket payloads (the CSV's payload column), or - to read lines from stdin")
    args = ap.parse_args(argv)
    payloads = [line for line in sys.stdin.read().splitlines() if line.strip()] if args.payload == ["-"] else args.payload
    try:
        lamps = feed(args.address, payloads)
    except OSError as exc:
        print(f"simulators.scanner: cannot reach the feed port {args.address}: {exc}", file=sys.stderr)
        return 2
    for p, lamp in zip(payloads, lamps):
        print(f"{lamp:6} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
