# A stand-in for the ESP32 port's `machine` module, for the board layer's tests under the unix port:
# every pin, PWM channel and UART the firmware sets up is recorded in `log`, in order.
log = []


class Pin:
    OUT = 3
    IN = 1

    def __init__(self, n, mode=None, value=None):
        self.n = n
        log.append(("Pin", n, mode, value))


class PWM:
    def __init__(self, pin, freq=None, duty_u16=None, duty=None):
        self.pin = pin.n
        log.append(("PWM", pin.n, freq))

    def duty_u16(self, d):
        log.append(("duty", self.pin, d))

    def freq(self, f=None):
        pass

    def duty(self, d=None):
        pass


class UART:
    def __init__(self, uart_id, baudrate=9600, tx=None, rx=None, **_):
        self.id = uart_id
        log.append(("UART", uart_id, tx, baudrate))

    def init(self, baudrate=None, **_):
        pass

    def write(self, buf):
        log.append(("UART.write", self.id, len(buf)))
        return len(buf)
