# The compiled timeline a lighting controller runs from its own clock
# (format: docs/lighting-timeline.md). The fleet compiles venue schedules (time
# zones, recurrences, overrides) into flat UTC windows; the controller only has
# to find which window holds "now".
#
# Windows are kept as offsets (s) from the first window's start in compact arrays,
# so a lookup reads small ints (epoch seconds need a long int on a 32-bit port) and
# a timeline of a few hundred windows costs a few KB instead of a tuple per window.
# The text is read one window at a time (jscan.py): decoding a 4 KB timeline whole
# would need ~12 KB of heap beside the running one.
from array import array

from micropython import const
from jscan import JsonScan
from scene import N_PWM, Scene, SceneError, parse_levels, parse_scene

FORMAT = const(1)
MAX_WINDOWS = const(1024)
MAX_SCENES = const(255)
MAX_PRIORITY = const(255)
_MAX_ID = const(40)  # a scene id goes into telemetry's `scene` (at most 40 characters)
_MAX_SPAN = const(0x3FFFFFFF)  # ~34 years of seconds: offsets stay small ints on 32-bit ports
CLOCK_VALID = 1704067200  # 2024-01-01 UTC: an epoch clock before this has not been set
_KEYS = ("format", "scenes", "default", "windows", "floor", "meta")


class TimelineError(ValueError):
    pass


def clock_ok(now):
    """False for an unset clock (None, or a time before 2024): the timeline cannot say what is on."""
    return now is not None and now >= CLOCK_VALID


def _int(v, where):
    if type(v) is not int:
        raise TimelineError("%s: must be an integer, not %r" % (where, v))
    return v


def _span(w, where):
    if type(w) is not list or len(w) < 2:
        raise TimelineError("%s: must be a list [start, end, ...]" % where)
    start = _int(w[0], where + " start")
    end = _int(w[1], where + " end")
    if start < 0:
        raise TimelineError("%s: start must be epoch seconds >= 0, not %d" % (where, start))
    if end <= start:
        raise TimelineError("%s: end %d is not after start %d" % (where, end, start))
    return start, end


def _offsets(rows, col, base):
    a = array("i", bytes(4 * len(rows)))
    for i in range(len(rows)):
        a[i] = rows[i][col] - base
    return a


class Timeline:
    """A validated timeline for a controller with ``dmx_slots`` DMX slots, read from its JSON
    text (bytes, bytearray, a memoryview into a bigger payload, or str) one window at a time:
    the heap holds the compact arrays and one window's objects, never the whole decoded text.

    Raises TimelineError with a message naming the offending field (and both windows when two
    windows of one priority overlap) for a timeline of the wrong shape; ValueError for text
    that is not JSON.
    """

    def __init__(self, text, dmx_slots):
        if type(text) is str:
            text = text.encode()
        try:
            self._parse(JsonScan(text), dmx_slots)
        except SceneError as e:
            raise TimelineError(str(e))

    def _parse(self, js, dmx_slots):
        if js.peek() != 123:  # {
            js.value()  # text that is not JSON is a ValueError, not a wrong shape
            raise TimelineError("timeline: must be an object")
        at = {}  # member -> where its value starts in the text
        for k in js.members():
            if k not in _KEYS:
                raise TimelineError("timeline: unknown field %r" % (k,))
            at[k] = js.i
            js.skip()
            if k == "windows":
                n = js.items  # counted on the way past: the windows are read once more, not twice
        js.end()

        def member(k, shape):
            """Position the scanner at member k's value; true when it is there and has ``shape``
            (the value's first byte: { or [)."""
            if k not in at:
                return False
            js.i = at[k]
            return js.peek() == shape

        fmt = None
        if "format" in at:
            js.i = at["format"]
            fmt = js.value()
        if fmt != FORMAT:
            raise TimelineError("format: this controller reads timeline format %d, not %r" % (FORMAT, fmt))
        # scenes
        if not member("scenes", 123):
            raise TimelineError("scenes: must be an object of scene id -> {levels, fade_ms}")
        js.skip()
        if not js.items:
            raise TimelineError("scenes: must be an object of scene id -> {levels, fade_ms}")
        if js.items > MAX_SCENES:
            raise TimelineError("scenes: %d scenes, at most %d" % (js.items, MAX_SCENES))
        self.scenes = {}
        self._list = []  # scene objects by index, for the windows' scene column
        index = {}
        js.i = at["scenes"]
        for sid in js.members():
            if not 1 <= len(sid) <= _MAX_ID:
                raise TimelineError("scenes: scene id %r must be 1..%d characters" % (sid, _MAX_ID))
            sc = parse_scene(sid, js.value(), dmx_slots)
            index[sid] = len(self._list)
            self._list.append(sc)
            self.scenes[sid] = sc
        longest = 0
        for sc in self._list:
            if len(sc.levels) > longest:
                longest = len(sc.levels)
        # default: what is on outside every window (all outputs off when absent)
        d = None
        if "default" in at:
            js.i = at["default"]
            d = js.value()
        if d is None:
            self.default = Scene(None, bytearray(N_PWM), 0)
        elif type(d) is str and d in self.scenes:
            self.default = self.scenes[d]
        else:
            raise TimelineError("default: unknown scene %r" % (d,))
        # windows, straight into the compact arrays (10 bytes a window), offsets from the first start
        if "windows" not in at:
            n = 0
        elif not member("windows", 91):  # [
            raise TimelineError("windows: must be a list of [start, end, scene, priority]")
        if n > MAX_WINDOWS:
            raise TimelineError("windows: %d windows, at most %d" % (n, MAX_WINDOWS))
        self.windows = n
        self._start = st = array("i", bytes(4 * n))
        self._end = en = array("i", bytes(4 * n))
        self._prio = pr = bytearray(n)
        self._scene = bytearray(n)
        base = None  # the first window's start
        first = 0  # the earliest start of anything (windows and open windows) ...
        last = 0  # ... and the latest end: their span must stay below _MAX_SPAN
        prev = None
        latest = {}  # priority -> index of the window with the latest end so far at that priority
        i = 0
        if n:
            js.i = at["windows"]
            for _ in js.elements():
                w = js.value()
                where = "windows[%d]" % i
                start, end = _span(w, where)
                if len(w) != 4:
                    raise TimelineError("%s: must be [start, end, scene, priority]" % where)
                if type(w[2]) is not str or w[2] not in index:
                    raise TimelineError("%s: unknown scene %r" % (where, w[2]))
                p = _int(w[3], where + " priority")
                if not 0 <= p <= MAX_PRIORITY:
                    raise TimelineError("%s: priority must be 0..%d, not %d" % (where, MAX_PRIORITY, p))
                if prev is not None and start < prev:
                    raise TimelineError("windows[%d] (start %d) comes before windows[%d] (start %d): "
                                        "windows must be sorted by start" % (i, start, i - 1, prev))
                if base is None:
                    base = first = last = start
                if end - base > _MAX_SPAN:
                    raise TimelineError("windows: span more than 34 years (%d..%d)" % (base, end))
                j = latest.get(p)
                if j is not None and start < en[j] + base:
                    raise TimelineError("windows[%d] and windows[%d] overlap at priority %d "
                                        "(%d ends at %d, %d starts at %d)" % (j, i, p, j, en[j] + base, i, start))
                st[i] = start - base
                en[i] = end - base
                pr[i] = p
                self._scene[i] = index[w[2]]
                if j is None or end - base > en[j]:
                    latest[p] = i
                prev = start
                if end > last:
                    last = end
                i += 1
        # safety floor (small: its levels and a few open windows, decoded whole)
        fl = None
        if "floor" in at:
            js.i = at["floor"]
            fl = js.value()
        self.floor = None
        op = ()
        if fl is not None:
            if type(fl) is not dict:
                raise TimelineError("floor: must be an object {levels, open}")
            for k in fl:
                if k not in ("levels", "open"):
                    raise TimelineError("floor: unknown field %r" % (k,))
            self.floor = parse_levels(fl.get("levels"), dmx_slots, "floor.levels")
            op = fl.get("open")
            if type(op) is not list:
                raise TimelineError("floor.open: must be a list of [start, end] windows")
            if len(op) > MAX_WINDOWS:
                raise TimelineError("floor.open: %d windows, at most %d" % (len(op), MAX_WINDOWS))
            for i in range(len(op)):
                where = "floor.open[%d]" % i
                start, end = _span(op[i], where)
                if len(op[i]) != 2:
                    raise TimelineError("%s: must be [start, end]" % where)
                if base is None:
                    base = first = last = start
                if start < first:
                    first = start
                if end > last:
                    last = end
            if len(self.floor) > longest:
                longest = len(self.floor)
        if base is None:
            base = 0
        elif last - first > _MAX_SPAN:
            raise TimelineError("windows: span more than 34 years (%d..%d)" % (first, last))
        self.base = base
        # open windows may start before the first window: negative offsets, within the span
        self._open_start = _offsets(op, 0, base)
        self._open_end = _offsets(op, 1, base)
        # the floored scene active() hands out: one buffer, refilled on each call
        self._lit = Scene(None, bytearray(longest), 0)
        self._lit.floored = True
        self._zeros = bytes(longest)

    def pick(self, now):
        """The scene a window asks for at ``now`` (epoch s): the highest-priority window
        with start <= now < end (equal priorities cannot overlap; the earlier window
        in the list would win); the default scene outside every window or with no clock."""
        if not clock_ok(now):
            return self.default
        t = now - self.base
        st = self._start
        lo = 0
        hi = len(st)
        while lo < hi:  # windows [0, lo) start at or before t
            mid = (lo + hi) >> 1
            if st[mid] <= t:
                lo = mid + 1
            else:
                hi = mid
        best = -1
        bp = -1
        en = self._end
        pr = self._prio
        for i in range(lo):
            if en[i] > t and pr[i] > bp:
                best = i
                bp = pr[i]
        if best < 0:
            return self.default
        return self._list[self._scene[best]]

    def floor_on(self, now):
        """Whether the safety floor holds at ``now``: inside an open window, or the clock is not set
        (unknown time fails lit: ingress and egress stay at the floor until the clock is set)."""
        if self.floor is None:
            return False
        if not clock_ok(now):
            return True
        t = now - self.base
        st = self._open_start
        en = self._open_end
        for i in range(len(st)):
            if st[i] <= t < en[i]:
                return True
        return False

    def apply_floor(self, levels, now):
        """Raise ``levels`` (a bytearray at least as long as the floor) to the floor, in place,
        if it holds at ``now``. True when the floor held."""
        if not self.floor_on(now):
            return False
        fl = self.floor
        for i in range(len(fl)):
            if levels[i] < fl[i]:
                levels[i] = fl[i]
        return True

    def active(self, now):
        """The scene that should be on at ``now``, with the safety floor applied on top.

        Without the floor this is the scene itself; with it, a shared Scene (``floored``
        True, same id and fade as the window's scene) whose levels are refilled on each
        call: use it before the next call.
        """
        sc = self.pick(now)
        if not self.floor_on(now):
            return sc
        lit = self._lit
        buf = lit.levels
        buf[:] = self._zeros
        buf[:len(sc.levels)] = sc.levels
        fl = self.floor
        for i in range(len(fl)):
            if buf[i] < fl[i]:
                buf[i] = fl[i]
        lit.id = sc.id
        lit.fade_ms = sc.fade_ms
        return lit
