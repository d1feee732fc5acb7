# The lighting controller's behaviour, with no MQTT in it: the timeline it runs
# from its own clock, the scene commands it takes, the fades and outputs.
# The app feeds it: power_up() once, tick() every loop pass, on_config() and
# on_cmd() with what arrives on the `config` and `cmd` channels; it answers
# with what the app should publish (the config version applied, the ack).
#
# Rules:
#   - power-up shows what should be on now, at once (no fade up from dark): the
#     timeline is read back from flash, so this holds with no network;
#   - a window boundary (or the venue opening/closing) fades to the timeline's
#     scene with that scene's fade_ms; a scene command holds until the next such
#     change;
#   - the safety floor is applied on top of everything, commands included;
#   - with no timeline (freshly flashed, or the one on flash no longer loads) power-up
#     shows the device file's fallback look raised to its own floor, and keeps it until a
#     timeline arrives (or a command, which needs the clock set, replaces it).
import gc

from micropython import const
from time import ticks_diff

import atomic
from commands import DUPLICATE, CommandGate
from jscan import JsonScan
from scene import SceneError, Fader, n_outputs, parse_fade, parse_levels
from timeline import Timeline, TimelineError

DMX_PERIOD_MS = const(25)  # 40 frames/s; a full 512-slot frame is 22.6 ms on the line
# The whole payload is parsed in RAM beside the running timeline: 4 KB (a fortnight of six windows a
# day and a handful of scenes, compact JSON) replaces a running one of that size within the 64 KB
# test heap on the 64-bit unix port; an ESP32 board with more room may pass a larger max_config.
MAX_CONFIG_BYTES = const(4096)
TIMELINE_FILE = "timeline.json"
CMDS_FILE = "cmd_ids.txt"
_UNSET = "\x00"  # a scene id no timeline can pick: forces the next tick to re-evaluate


class Lighting:
    """The controller. Time comes in as arguments: ``now_s`` is epoch seconds (UTC) from the
    board's clock and ``now_ms`` epoch milliseconds, each None while that clock is not set;
    ``ticks`` is time.ticks_ms(), the monotonic clock fades run on."""

    def __init__(self, outputs, dmx_slots, state_dir=".", max_config=MAX_CONFIG_BYTES):
        """``outputs``: a scene.Outputs whose DMX universe (if any) has ``dmx_slots`` slots;
        ``state_dir``: where the timeline and the command id log live on flash;
        ``max_config``: the largest `config` payload taken (bytes)."""
        if outputs.dmx is not None and outputs.dmx.slots != dmx_slots:
            raise SceneError("the DMX universe has %d slots, not %d" % (outputs.dmx.slots, dmx_slots))
        n = n_outputs(dmx_slots)
        self.outputs = outputs
        self.dmx_slots = dmx_slots
        self.max_config = max_config
        self.fader = Fader(n)
        self.timeline = None
        self.version = None  # config version applied (reported in `state`)
        self.offered = None  # version of the last config offered to on_config (None: unreadable)
        self.scene = None  # id of the scene on now (telemetry)
        self._dir = state_dir
        self._gate = CommandGate(state_dir + "/" + CMDS_FILE)
        self._buf = bytearray(n)  # a command's levels with the floor applied (the fallback's first)
        self._pick = _UNSET  # what the timeline last asked for: scene id ...
        self._floored = False  # ... and whether the floor held
        self._last_s = _UNSET  # the epoch second last evaluated (None is a value: no clock)
        self._dmx_at = 0

    # ---------------------------------------------------------------- loop

    def power_up(self, now_s, ticks, fallback=None):
        """Load the timeline kept on flash and show what should be on now, without a fade. With
        no timeline: ``fallback``, the device file's {"levels": {...}, "floor": {...}} (levels
        objects), each output at the higher of the two. Returns None, or what was wrong with the
        fallback (a bad part is left out: the floor alone still lights the exits)."""
        self._load()
        err = None
        if self.timeline is not None:
            self._follow(now_s, ticks, True)
        elif type(fallback) is dict:  # parsed into the command buffer: nothing of it is kept but the levels
            buf = self._buf  # (dark: no command ran yet)
            for k in fallback:
                try:
                    if k not in ("levels", "floor"):
                        raise SceneError("fallback: unknown field %r" % (k,))
                    lv = parse_levels(fallback[k], self.dmx_slots, "fallback." + k)
                except SceneError as e:
                    err = str(e)
                    continue
                for i in range(len(lv)):
                    if buf[i] < lv[i]:
                        buf[i] = lv[i]
            self.scene = "fallback"
            self.fader.start(buf, 0, ticks)
        elif fallback is not None:
            err = "fallback: must be an object {levels, floor}"
        self.outputs.write(self.fader.levels)
        self.outputs.send_dmx()
        self._dmx_at = ticks
        return err

    def tick(self, now_s, ticks):
        """One loop pass: follow the timeline (once per second), step the fade, refresh DMX."""
        if now_s != self._last_s and self._follow(now_s, ticks, False) and not self.fader.fading:
            self.outputs.write(self.fader.levels)  # a cut (fade_ms 0): step() has nothing to do
        if self.fader.step(ticks):
            self.outputs.write(self.fader.levels)
        if ticks_diff(ticks, self._dmx_at) >= DMX_PERIOD_MS:
            self._dmx_at = ticks
            self.outputs.send_dmx()

    def _follow(self, now_s, ticks, cut):
        self._last_s = now_s
        tl = self.timeline
        if tl is None:
            return False
        sc = tl.active(now_s)
        if not cut and sc.id == self._pick and sc.floored == self._floored:
            return False
        self._pick = sc.id
        self._floored = sc.floored
        self.scene = sc.id
        self.fader.start(sc.levels, 0 if cut else sc.fade_ms, ticks)
        return True

    # ---------------------------------------------------------------- config

    def on_config(self, raw):
        """A `config` payload ({version, ts, data: timeline}). Returns (ok, detail): on success
        the timeline is on flash and runs from the next tick; on error (including a timeline too
        big for the heap) the running one runs on, untouched.

        The retained copy of what already runs, arriving again at each reconnect, is recognised
        by comparing it with the file on flash: no parse, no flash write."""
        self.offered = None
        if len(raw) > self.max_config:
            return False, "config: %d bytes, this controller takes at most %d" % (len(raw), self.max_config)
        if type(raw) is str:
            raw = raw.encode()
        if self.timeline is not None and self._on_flash(raw):
            self.offered = self.version
            return True, "version %d already applied" % self.version
        gc.collect()  # the new timeline is parsed beside the running one: start from a clean heap
        ok, detail = self._take(raw)
        gc.collect()  # the parse's garbage, at once: the heap has room for one parse at a time
        return ok, detail

    def _take(self, raw):
        try:
            version, tl = self._read(raw)
            if tl is None:
                return False, "config: must be {version, ts, data}"
            atomic.write(self._dir + "/" + TIMELINE_FILE, raw)
        except TimelineError as e:
            return False, str(e)
        except ValueError:
            return False, "config: not JSON"
        except MemoryError:
            return False, "config: %d bytes do not fit in memory" % len(raw)
        except OSError as e:
            return False, "config: could not keep it on flash (%s)" % e
        self.timeline = tl
        self.version = version
        self._pick = _UNSET
        self._last_s = _UNSET
        return True, None

    def _read(self, raw):
        """A config payload -> (version, Timeline); (version or None, None) when it is not
        {version, ts, data}. The timeline is read from its place in ``raw``, never copied."""
        js = JsonScan(raw)
        if js.peek() != 123:  # {
            js.value()  # not JSON: ValueError
            return None, None
        version = data = None
        for k in js.members():
            if k == "version":
                version = js.value()
            elif k == "data":
                data = js.skip()
            else:
                js.skip()
        js.end()
        if type(version) is not int:
            return None, None
        self.offered = version
        if data is None:
            return version, None
        return version, Timeline(js.b[data[0]:data[1]], self.dmx_slots)

    def _load(self):
        """The timeline kept on flash (none, or one that no longer loads: run without)."""
        self.timeline = None
        self.version = None
        raw = atomic.read(self._dir + "/" + TIMELINE_FILE)
        if not raw:
            return
        try:
            version, tl = self._read(raw)
        except (ValueError, MemoryError):
            return
        if tl is not None:
            self.timeline = tl
            self.version = version

    def _on_flash(self, raw):
        """Whether ``raw`` is byte for byte the timeline file (read in small pieces)."""
        try:
            f = open(self._dir + "/" + TIMELINE_FILE, "rb")
        except OSError:
            return False
        with f:
            pos = 0
            n = len(raw)
            try:
                while True:
                    piece = f.read(256)
                    if not piece:
                        return pos == n
                    if raw[pos:pos + len(piece)] != piece:
                        return False
                    pos += len(piece)
            except MemoryError:  # a nearly full heap: treat it as new, and the parse says it does not fit
                return False

    # ---------------------------------------------------------------- commands

    def on_cmd(self, raw, retained, now_ms, ticks):
        """A `cmd` payload. Returns (cmd_id, status, detail) to acknowledge, or None to say nothing
        (a command that ran before, or one without an id)."""
        cmd, status, detail = self._gate.admit(raw, retained, now_ms)
        if cmd is None or status == DUPLICATE:
            return None
        cid = cmd["id"]
        if status is not None:
            return cid, status, detail
        if cmd["action"] != "scene":
            return cid, "rejected", "unknown action %r" % (cmd["action"],)
        try:
            self._scene_cmd(cmd.get("args", {}), now_ms // 1000, ticks)
        except SceneError as e:
            return cid, "rejected", str(e)
        return cid, "ok", None

    def _scene_cmd(self, args, now_s, ticks):
        """args: {"scene": id} or {"levels": {...}}, and "fade_ms" (default: the scene's, or 0)."""
        for k in args:
            if k not in ("scene", "levels", "fade_ms"):
                raise SceneError("args: unknown field %r" % (k,))
        tl = self.timeline
        if ("scene" in args) == ("levels" in args):
            raise SceneError("args: give scene or levels")
        if "scene" in args:
            sid = args["scene"]
            sc = tl.scenes.get(sid) if tl is not None and type(sid) is str else None
            if sc is None:
                raise SceneError("args.scene: unknown scene %r" % (args["scene"],))
            levels = sc.levels
            fade = sc.fade_ms
            name = sc.id
        else:
            levels = parse_levels(args["levels"], self.dmx_slots, "args.levels")
            fade = 0
            name = "manual"
        if "fade_ms" in args:
            fade = parse_fade(args["fade_ms"], "args.fade_ms")
        buf = self._buf
        buf[:] = self.fader.zero
        buf[:len(levels)] = levels
        if tl is not None:
            tl.apply_floor(buf, now_s)
        self.scene = name
        self.fader.start(buf, fade, ticks)
        self.outputs.write(self.fader.levels)
