# DMX512 output: one universe, one preallocated frame, sent as break + MAB + frame.
#
# A DMX512 packet on the RS-485 line (ANSI E1.11):
#   BREAK  line low  >= 92 us sent (receivers accept >= 88 us)
#   MAB    line high >= 12 us sent (receivers accept >= 8 us), < 1 s
#   frame  start code (0 = dimmer levels) + 1..512 slots, each byte 250 kbaud 8N2
#
# How the break is made on the ESP32 (machine.UART), and why not uart.sendbreak():
# MicroPython's esp32 sendbreak() drops the baud rate to 6/15 of the current one
# and sends one 0x00, which at 250 kbaud 8N2 is 9 bit-times at 100 kbaud = 90 us
# low: inside what a receiver must accept (88) but below what a transmitter must
# send (92), and older firmware (even-parity trick) gave only 40 us. So UartPort
# makes its own: init(baudrate=50000) (init waits for the previous frame to
# drain), write one 0x00 = start bit + 8 data bits low = 9 x 20 us = 180 us BREAK,
# its two stop bits = 40 us high, then init(baudrate=250000) (waits for the 0x00
# to drain) and the frame follows: MAB = 40 us + the re-init time. 180 us is the
# break most consoles send. The RS-485 transceiver's DE pin is held high by the
# board layer (transmit only).
#
# DmxOut takes any "port" with write(buf) and sendbreak(): UartPort on the ESP32,
# StreamPort on the unix board (records on a socket, parsed back into frames by
# simulators/dmx.py), a fake in tests. machine.UART itself fits too, with its
# own (shorter) break.
from micropython import const

BAUD = const(250000)
MAX_SLOTS = const(512)
START_CODE = const(0)  # dimmer data; RDM (0xCC) and text (0x17) are not sent here
_BREAK_BAUD = const(50000)
BREAK_US = const(180)  # 9 bit-times of 0x00 at _BREAK_BAUD
MAB_US = const(40)  # the 0x00's two stop bits at _BREAK_BAUD (at least)

# StreamPort records (the simulator link; simulators/dmx.py is the other end):
#   b"B" break_us:u16be mab_us:u16be   a BREAK then MAB on the line
#   b"D" length:u16be data             bytes on the line at 250 kbaud 8N2
_REC_BREAK = const(0x42)
_REC_DATA = const(0x44)
_ZERO = b"\x00"


class DmxError(ValueError):
    pass


class DmxOut:
    """One universe: ``frame[0]`` is the start code, ``frame[n]`` is slot n (1-based)."""

    def __init__(self, port, slots=MAX_SLOTS):
        if not 1 <= slots <= MAX_SLOTS:
            raise DmxError("slots must be 1..512, not %r" % (slots,))
        self.port = port
        self.slots = slots
        self.frame = bytearray(1 + slots)  # start code 0, slots dark
        self.sent = 0  # frames sent since boot

    def set(self, slot, level):
        if not 1 <= slot <= self.slots:
            raise DmxError("slot %d is outside 1..%d" % (slot, self.slots))
        if not 0 <= level <= 255:
            raise DmxError("slot %d: level %d is outside 0..255" % (slot, level))
        self.frame[slot] = level

    def get(self, slot):
        return self.frame[slot]

    def load(self, levels):
        """Copy all slots from ``levels`` (any buffer of exactly ``slots`` bytes; no allocation)."""
        if len(levels) != self.slots:  # a bytearray slice store of another size would resize the frame
            raise DmxError("%d levels for %d slots" % (len(levels), self.slots))
        self.frame[1:] = levels

    def clear(self):
        self.frame[1:] = bytes(self.slots)  # allocates: only for tests and blackout, not the loop

    def send(self):
        """BREAK, MAB, then start code and slots. On the ESP32 the frame drains from the UART's
        TX buffer (txbuf >= 514) while the loop goes on; the next send waits for it."""
        self.port.sendbreak()
        self.port.write(self.frame)
        self.sent += 1


class UartPort:
    """The ESP32's machine.UART (250 kbaud 8N2) with a break DMX transmitters may send."""

    def __init__(self, uart):
        self._uart = uart

    def sendbreak(self):
        u = self._uart
        u.init(baudrate=_BREAK_BAUD)  # waits until the previous frame has left
        u.write(_ZERO)
        u.init(baudrate=BAUD)  # waits until the 0x00 (and its stop bits) has left

    def write(self, buf):
        return self._uart.write(buf)


def open_uart(uart_id, tx, rx=None):
    """A UartPort on a hardware UART (ESP32); ``tx`` drives the RS-485 transceiver's DI."""
    from machine import UART  # lazily: the unix port has no UART

    if rx is None:
        u = UART(uart_id, baudrate=BAUD, bits=8, parity=None, stop=2, tx=tx, txbuf=1024)
    else:
        u = UART(uart_id, baudrate=BAUD, bits=8, parity=None, stop=2, tx=tx, rx=rx, txbuf=1024)
    return UartPort(u)


class StreamPort:
    """The line as records on a stream (a socket to simulators/dmx.py, a file in tests).

    ``break_us``/``mab_us`` are what the record claims the line did: by default what
    UartPort does on the ESP32, so the simulator checks the timing the real board makes.
    """

    def __init__(self, stream, break_us=BREAK_US, mab_us=MAB_US):
        self._stream = stream
        self._brk = bytearray((_REC_BREAK, break_us >> 8, break_us & 0xFF, mab_us >> 8, mab_us & 0xFF))
        self._hdr = bytearray(3)
        self._hdr[0] = _REC_DATA

    def sendbreak(self):
        self._stream.write(self._brk)

    def write(self, buf):
        n = len(buf)
        h = self._hdr
        h[1] = n >> 8
        h[2] = n & 0xFF
        self._stream.write(h)
        self._stream.write(buf)
        return n
