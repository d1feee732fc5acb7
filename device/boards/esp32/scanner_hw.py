# scanner_hw.py for the ESP32: the GM65/GM861 QR module on a UART, two lamps, a buzzer.
#
# Wiring (defaults; override by keyword from the scanner's config "hw" object):
#   module TX -> GPIO16 (UART2 RX), module RX <- GPIO17 (UART2 TX), 9600 8N1
#   green lamp GPIO25, red lamp GPIO26 (active high, through a transistor)
#   piezo buzzer on GPIO27, driven by PWM at the beep's frequency
#
# Same interface as boards/unix/scanner_hw.py:
#   hw.readinto(buf) -> bytes read (0 when none is waiting; never blocks)
#   hw.led("green" | "red" | None); hw.buzz(freq_hz, ms)  (0 Hz or 0 ms: silent)
# buzz() starts the tone and returns; the app's next buzz(0, 0) (or the next led())
# ends it, so the verdict never waits for the beep.
from machine import PWM, UART, Pin


class ScannerHW:
    def __init__(self, uart=2, rx=16, tx=17, green=25, red=26, buzzer=27, rxbuf=512, **_):
        # timeout=0: readinto() returns what the FIFO holds at once; rxbuf: a burst of codes fits
        self._uart = UART(uart, 9600, bits=8, parity=None, stop=1, rx=rx, tx=tx, timeout=0, rxbuf=rxbuf)
        self._green = Pin(green, Pin.OUT, value=0)
        self._red = Pin(red, Pin.OUT, value=0)
        self._pwm = PWM(Pin(buzzer, Pin.OUT), freq=2000, duty=0)
        self.reconnects = 1

    def readinto(self, buf):
        if not self._uart.any():
            return 0
        n = self._uart.readinto(buf)
        return n or 0

    def led(self, color):
        self._green.value(1 if color == "green" else 0)
        self._red.value(1 if color == "red" else 0)

    def buzz(self, freq, ms):
        if freq and ms:
            self._pwm.freq(freq)
            self._pwm.duty(512)  # 50 %: the loudest square wave
        else:
            self._pwm.duty(0)

    def close(self):
        self.led(None)
        self._pwm.duty(0)
