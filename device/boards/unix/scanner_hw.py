# scanner_hw.py for the unix port: the scanner's hardware, on a PC.
#
# The QR module's UART is a TCP connection to simulators/scanner.py (host, port):
# its bytes are the module's TX (decoded text ended by CR, 9600 8N1). The lamps and
# the buzzer, GPIO and PWM on the ESP32, are reported back over the same connection
# as text lines: "LED green|red|off" and "BUZZ <freq_hz> <ms>".
#
# Same interface as boards/esp32/scanner_hw.py:
#   hw = ScannerHW(uart=(host, port))
#   hw.readinto(buf) -> bytes read (0 when none is waiting; never blocks)
#   hw.led("green" | "red" | None); hw.buzz(freq_hz, ms)  (0 Hz: silent)
import socket
from errno import EAGAIN

from micropython import const

_RETRY_MS = const(500)


class ScannerHW:
    def __init__(self, uart=("127.0.0.1", 9600), **_):
        self._addr = socket.getaddrinfo(uart[0], uart[1], 0, socket.SOCK_STREAM)[0][-1]
        self._s = None
        self.reconnects = 0
        self._open()

    def _open(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect(self._addr)  # local, immediate: the module is wired or it is not
        except OSError:
            s.close()
            return False
        try:  # each lamp change goes out at once (Nagle would hold it behind the last one's ACK)
            s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY
        except OSError:
            pass
        s.setblocking(False)
        self._s = s
        self.reconnects += 1
        return True

    def _drop(self):
        if self._s is not None:
            try:
                self._s.close()
            except OSError:
                pass
            self._s = None

    def readinto(self, buf):
        if self._s is None and not self._open():
            return 0
        try:
            n = self._s.readinto(buf)
        except OSError as e:
            if e.errno == EAGAIN:
                return 0
            self._drop()
            return 0
        if n is None:  # nothing waiting
            return 0
        if n == 0:  # the other end went away
            self._drop()
        return n

    def _send(self, line):
        if self._s is None and not self._open():
            return
        try:
            self._s.write(line)
        except OSError:
            self._drop()

    def led(self, color):
        self._send(b"LED %s\n" % (color or "off"))

    def buzz(self, freq, ms):
        self._send(b"BUZZ %d %d\n" % (freq, ms))

    def close(self):
        self._drop()
