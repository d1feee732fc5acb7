# lighting_hw.py for the unix port: the lighting controller's outputs on a PC.
#
# PWM: each channel's duty goes to a local TCP socket as a 4-byte record
#   b"P" channel:u8 duty:u16be        channel 0..3 = r, g, b, w; duty 0..65535 (duty_u16)
# one record per duty write (scene.Outputs writes only channels whose duty changed),
# read back by simulators/pwm.py (PwmReceiver). A fresh connection per boot.
# DMX: dmx.StreamPort records (docs/lighting-timeline.md) on a second socket to
# simulators/dmx.py (DmxReceiver).
# A receiver that is absent or goes away costs nothing but the output: writes are
# dropped, the controller's loop never stops for it.
import socket

import dmx
from scene import Outputs

BITS = 16  # machine.PWM.duty_u16 on the unix stand-in


class _Line:
    """A blocking local TCP stream whose failures drop the bytes instead of raising."""

    def __init__(self, host, port):
        self.s = None
        self.lost = 0
        try:
            s = socket.socket()
            s.connect(socket.getaddrinfo(host, port)[0][-1])
            self.s = s
        except OSError:
            self.lost = 1

    def write(self, b):
        s = self.s
        if s is None:
            return 0
        try:
            return s.write(b)
        except OSError:
            self.s = None
            self.lost += 1
            try:
                s.close()
            except OSError:
                pass
            return 0


class _Pwm:
    """machine.PWM's duty_u16, reported on the PWM line."""

    def __init__(self, line, ch):
        self._line = line
        self._rec = bytearray((0x50, ch, 0, 0))

    def duty_u16(self, d):
        r = self._rec
        r[2] = d >> 8
        r[3] = d & 0xFF
        self._line.write(r)


def outputs(cfg):
    """scene.Outputs from the role's config: "pwm" [host, port], "dmx" [host, port] (either may be
    absent: no such output), "dmx_slots", "gamma" (default 2.2; null for linear)."""
    pwm = cfg.get("pwm")
    line = _Line(pwm[0], pwm[1]) if pwm else None
    pwms = [_Pwm(line, ch) if line else None for ch in range(4)]
    out = None
    d = cfg.get("dmx")
    if d:
        out = dmx.DmxOut(dmx.StreamPort(_Line(d[0], d[1])), cfg["dmx_slots"])
    return Outputs(pwms, out, BITS, cfg.get("gamma", 2.2))
