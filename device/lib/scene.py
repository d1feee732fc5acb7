# Scenes, fades and the outputs they drive.
#
# Every output has a level 0..255, kept in one bytearray laid out as
#   [0] r  [1] g  [2] b  [3] w      the four PWM channels (MOSFET-driven RGBW strip)
#   [4 + k - 1]                     DMX slot k (1-based), up to the controller's slot count
# A scene is such a bytearray (trimmed after its last DMX slot; missing slots are 0)
# plus the fade time to reach it. The Fader moves the live levels towards a target
# from the app's loop, on the monotonic ms clock, without allocating; Outputs
# writes live levels to the PWM duty registers (through a gamma table built once)
# and into the DMX frame.
from micropython import const
from time import ticks_diff

N_PWM = const(4)
PWM_NAMES = ("r", "g", "b", "w")
MAX_FADE_MS = const(3600000)  # one hour
_Q_BITS = const(10)  # fade progress in 1/1024ths
_HALF = const(512)
_E_MAX = const(0xFFFFF)  # elapsed ms kept below 2**20 so (e << 10) stays a small int on 32-bit ports


class SceneError(ValueError):
    pass


def n_outputs(dmx_slots):
    return N_PWM + dmx_slots


def _level(v, where):
    if type(v) is not int or not 0 <= v <= 255:
        raise SceneError("%s: level must be an integer 0..255, not %r" % (where, v))
    return v


def parse_levels(obj, dmx_slots, where="levels"):
    """{"r":255,"g":0,"b":0,"w":40,"dmx":{"1":[255,128,0],"17":[200]}} -> bytearray.

    Missing outputs are 0. "dmx" maps a first slot ("1".."512") to the levels of
    consecutive slots from there. The result stops after the last DMX slot set.
    """
    if type(obj) is not dict:
        raise SceneError("%s: must be an object like {\"r\": 255, \"dmx\": {\"1\": [255]}}" % where)
    last = 0  # highest DMX slot set
    for k in obj:
        if k == "dmx":
            runs = obj[k]
            if type(runs) is not dict:
                raise SceneError("%s.dmx: must map a first slot to a list of levels" % where)
            for first in runs:
                vals = runs[first]
                try:
                    slot = int(first)
                except ValueError:
                    slot = 0
                if not 1 <= slot <= dmx_slots:
                    raise SceneError("%s.dmx.%s: slot must be 1..%d" % (where, first, dmx_slots))
                if type(vals) is not list or not vals:
                    raise SceneError("%s.dmx.%s: must be a non-empty list of levels" % (where, first))
                end = slot + len(vals) - 1
                if end > dmx_slots:
                    raise SceneError("%s.dmx.%s: %d levels run past slot %d" % (where, first, len(vals), dmx_slots))
                if end > last:
                    last = end
        elif k not in PWM_NAMES:
            raise SceneError("%s: unknown output %r (r, g, b, w or dmx)" % (where, k))
    out = bytearray(N_PWM + last)
    seen = bytearray(last + 1)  # which DMX slots a run has set, to refuse overlapping runs
    for k in obj:
        if k == "dmx":
            runs = obj[k]
            for first in runs:
                slot = int(first)
                for i, v in enumerate(runs[first]):
                    s = slot + i
                    if seen[s]:
                        raise SceneError("%s.dmx: slot %d is set twice" % (where, s))
                    seen[s] = 1
                    out[N_PWM - 1 + s] = _level(v, "%s.dmx.%s[%d]" % (where, first, i))
        else:
            out[PWM_NAMES.index(k)] = _level(obj[k], "%s.%s" % (where, k))
    return out


def parse_fade(v, where):
    if type(v) is not int or not 0 <= v <= MAX_FADE_MS:
        raise SceneError("%s: fade_ms must be an integer 0..%d, not %r" % (where, MAX_FADE_MS, v))
    return v


class Scene:
    """A named set of levels and the fade (ms) that brings them on."""

    floored = False  # True on the timeline's copy with the safety floor applied

    def __init__(self, sid, levels, fade_ms):
        self.id = sid
        self.levels = levels
        self.fade_ms = fade_ms


def parse_scene(sid, obj, dmx_slots, where=None):
    """{"levels": {...}, "fade_ms": 1500} -> Scene (fade_ms defaults to 0: a cut)."""
    where = where or "scenes.%s" % sid
    if type(obj) is not dict:
        raise SceneError("%s: must be an object with levels and fade_ms" % where)
    for k in obj:
        if k not in ("levels", "fade_ms"):
            raise SceneError("%s: unknown field %r" % (where, k))
    if "levels" not in obj:
        raise SceneError("%s: levels missing" % where)
    return Scene(sid, parse_levels(obj["levels"], dmx_slots, where + ".levels"),
                 parse_fade(obj.get("fade_ms", 0), where + ".fade_ms"))


class Fader:
    """Live levels for ``n`` outputs, moving linearly to a target over a fade time.

    ``start()`` and ``step()`` take ``time.ticks_ms()`` values (wrap-safe through
    ticks_diff) and allocate nothing: call step() every loop pass and write the
    levels out when it returns True.
    """

    def __init__(self, n):
        self.levels = bytearray(n)  # what the outputs show now
        self._from = bytearray(n)
        self._to = bytearray(n)
        self.zero = bytes(n)  # every output dark (read only: the controller clears its buffers with it)
        self._t0 = 0
        self._ms = 0
        self._sh = 0  # elapsed and duration are shifted right by this to keep integer math small
        self._lo = 0  # outputs [lo, hi) are the ones that change in this fade
        self._hi = 0
        self.fading = False

    def start(self, target, fade_ms, now_ms):
        """Fade from the live levels to ``target`` (a bytearray up to n long; the rest go to 0).
        A fade of 0 is a cut: the levels are the target when this returns."""
        to = self._to
        m = len(target)
        if m > len(to):
            raise SceneError("%d levels for %d outputs" % (m, len(to)))
        to[:] = self.zero
        to[:m] = target
        cur = self.levels
        self._from[:] = cur
        lo = -1
        hi = 0
        for i in range(len(to)):
            if cur[i] != to[i]:
                if lo < 0:
                    lo = i
                hi = i + 1
        if lo < 0 or fade_ms <= 0:
            cur[:] = to  # nothing to fade, or a cut
            self.fading = False
            return
        sh = 0
        while (fade_ms >> sh) > _E_MAX:
            sh += 1
        self._t0 = now_ms
        self._ms = fade_ms
        self._sh = sh
        self._lo = lo
        self._hi = hi
        self.fading = True

    def step(self, now_ms):
        """Advance the fade to ``now_ms``; True when the levels changed (write them out)."""
        if not self.fading:
            return False
        e = ticks_diff(now_ms, self._t0)
        if e >= self._ms:
            self.levels[:] = self._to
            self.fading = False
            return True
        if e <= 0:
            return False
        sh = self._sh
        q = ((e >> sh) << _Q_BITS) // (self._ms >> sh)
        cur = self.levels
        frm = self._from
        to = self._to
        for i in range(self._lo, self._hi):
            f = frm[i]
            cur[i] = f + (((to[i] - f) * q + _HALF) >> _Q_BITS)  # rounded: no first-ms step either way
        return True

    def cut(self, target):
        """Show ``target`` at once (power-up: what should be on now, no fade up from dark)."""
        self.start(target, 0, 0)


def duty_table(bits=16, gamma=None):
    """Level 0..255 -> PWM duty 0..2**bits-1, built once. ``gamma`` (e.g. 2.2) makes fades
    look even to the eye; None or 1 is linear. Level 0 is always fully off, 255 fully on."""
    from array import array

    top = (1 << bits) - 1
    t = array("H", bytes(512))
    for i in range(256):
        if gamma is None or gamma == 1:
            t[i] = (top * i + 127) // 255
        else:
            t[i] = int(top * (i / 255) ** gamma + 0.5)
    return t


class Outputs:
    """Writes a levels bytearray to the hardware: four PWM channels and a DMX universe.

    ``pwms``: four objects (r, g, b, w; None where a channel is not fitted) with
    ``duty_u16(v)`` when ``bits`` is 16 (machine.PWM on any port) or ``duty(v)`` when
    it is 10 (the esp32 port's 0..1023 API). ``dmx``: a dmx.DmxOut or None.
    """

    def __init__(self, pwms, dmx=None, bits=16, gamma=2.2):
        from array import array

        if len(pwms) != N_PWM:
            raise SceneError("4 PWM channels (r, g, b, w), not %d" % len(pwms))
        if bits not in (10, 16):
            raise SceneError("PWM duty is 10 or 16 bits, not %r" % (bits,))
        self.pwms = pwms
        self.dmx = dmx
        self.table = duty_table(bits, gamma)
        self._u16 = bits == 16
        self._last = array("l", (-1, -1, -1, -1))  # duty last written per channel
        self._slots = None  # a view of the levels' DMX part, made on the first write
        self._src = None

    def write(self, levels):
        """Set PWM duties that changed and copy DMX levels into the frame (no allocation
        after the first call with a given levels buffer). Sending the frame is send_dmx()."""
        t = self.table
        last = self._last
        for ch in range(N_PWM):
            p = self.pwms[ch]
            d = t[levels[ch]]
            if p is not None and d != last[ch]:
                if self._u16:
                    p.duty_u16(d)
                else:
                    p.duty(d)
                last[ch] = d
        if self.dmx is not None:
            v = self._slots
            if v is None or self._src is not levels:
                self._src = levels
                v = self._slots = memoryview(levels)[N_PWM:N_PWM + self.dmx.slots]
            self.dmx.load(v)

    def send_dmx(self):
        if self.dmx is not None:
            self.dmx.send()
