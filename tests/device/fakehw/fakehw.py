# Stand-ins for the lighting controller's hardware in the unix port (tests only).
import io

import dmx
from lighting import Lighting
from scene import Outputs


class FakePwm:
    """machine.PWM's duty API; remembers the last duty and counts writes."""

    def __init__(self):
        self.value = -1
        self.writes = 0

    def duty_u16(self, d):
        self.value = d
        self.writes += 1

    def duty(self, d):
        self.value = d
        self.writes += 1


class NullStream:
    """A stream that only counts bytes (for long runs that must not grow memory)."""

    def __init__(self):
        self.n = 0

    def write(self, b):
        self.n += len(b)
        return len(b)


def rig(dmx_slots=24, state_dir=".", stream=None, bits=16, gamma=None):
    """A Lighting controller on fake PWM channels and a DMX StreamPort (BytesIO by default)."""
    pwms = [FakePwm() for _ in range(4)]
    if stream is None:
        stream = io.BytesIO()
    out = dmx.DmxOut(dmx.StreamPort(stream), dmx_slots)
    light = Lighting(Outputs(pwms, out, bits, gamma), dmx_slots, state_dir)
    return light, pwms, out, stream
