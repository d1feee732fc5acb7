"""The lighting controller's firmware logic in the real MicroPython unix port with a 64 KB heap:
DMX frames as a fixture would see them, fades, the timeline and its safety floor, scene commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulators.dmx import (DmxFormatError, DmxReceiver, DmxStreamError, DmxStreamParser, encode_break,
                            encode_data, encode_frame, parse_stream)
from tests.device.firmware import firmware  # noqa: F401 - the compiled firmware, a session fixture
from tests.device.mpy import run_mpy

FAKES = Path(__file__).parent / "fakehw"
T = 1_795_280_400  # a Saturday in November 2026, 12:20 UTC: epoch seconds the tests start from


@pytest.fixture
def mpy(firmware):  # noqa: F811
    """Run code in the firmware as deployed (compiled libs) with the fake hardware; it prints what the test checks."""

    def run(code: str, cwd: Path) -> str:
        return run_mpy(code, firmware, FAKES, cwd=cwd, timeout=30).stdout

    return run


@pytest.fixture(scope="module")
def rom_mpy(tmp_path_factory):
    """Run code as the device does: the lighting role's modules and the fake hardware from a ROMFS
    image (bytecode in 'flash', popkit/romfs.py), in a heap of 64 KB plus the image."""
    from popkit.romfs import boot_code, build_image, heap_for

    image = build_image("lighting", "unix", tmp_path_factory.mktemp("romfs") / "lighting-logic.romfs",
                        extra=(FAKES / "fakehw.py",))

    def run(code: str, cwd: Path) -> str:
        return run_mpy(boot_code(image, "micropython") + code, heap=heap_for(64 * 1024, image, "lighting"), cwd=cwd,
                       timeout=30).stdout

    run.image_bytes = image.stat().st_size  # in gc.mem_alloc(): the flash stand-in, not the firmware's RAM
    return run


def results(out: str) -> list:
    """Lines the firmware printed as JSON (one result per line)."""
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def venue_timeline(**changes) -> dict:
    """Doors at 12:00, the set at 13:00 (higher priority inside the doors window), closing at 15:00;
    ingress/egress lights (w and DMX slots 23-24) must stay up while the venue is open, 11:30-15:30."""
    tl = {
        "format": 1,
        "scenes": {
            "dark": {"levels": {}},
            "doors": {"levels": {"r": 255, "g": 160, "b": 60, "w": 200, "dmx": {"1": [255, 128, 0], "9": [64]}},
                      "fade_ms": 2000},
            "set": {"levels": {"b": 255, "dmx": {"1": [0, 0, 255]}}, "fade_ms": 500},
            "house": {"levels": {"w": 255}, "fade_ms": 0},
        },
        "default": "dark",
        "windows": [
            [T - 20 * 60, T + 100 * 60, "doors", 10],   # 12:00 - 14:00
            [T + 40 * 60, T + 80 * 60, "set", 20],      # 13:00 - 13:40
            [T + 80 * 60, T + 100 * 60, "house", 20],   # 13:40 - 14:00, touches "set": no overlap
            [T + 100 * 60, T + 160 * 60, "dark", 10],   # 14:00 - 15:00: dark, venue still open
        ],
        "floor": {"levels": {"w": 90, "dmx": {"23": [255, 255]}}, "open": [[T - 50 * 60, T + 190 * 60]]},
        "meta": {"venue": "demo", "tz": "Europe/London"},
    }
    tl.update(changes)
    return tl


def config(version: int = 1, **changes) -> str:
    return json.dumps({"version": version, "ts": T * 1000, "data": venue_timeline(**changes)})


PRELUDE = """
import json, time
from fakehw import rig, NullStream
T = %d
""" % T


# ---------------------------------------------------------------- DMX


def test_dmx_frames_carry_break_mab_start_code_and_every_slot(mpy, tmp_path):
    mpy(PRELUDE + """
import dmx
with open('line.bin', 'wb') as f:
    out = dmx.DmxOut(dmx.StreamPort(f), 24)
    out.send()                       # all dark
    out.set(1, 255); out.set(24, 7)
    out.send()
    out.load(bytes(range(100, 124)))
    out.send()
""", tmp_path)
    frames = parse_stream((tmp_path / "line.bin").read_bytes())  # checks every rule
    assert len(frames) == 3
    for f in frames:
        assert (f.break_us, f.mab_us, f.start_code, len(f.slots)) == (180, 40, 0, 24)
    assert frames[0].slots == bytes(24)
    assert (frames[1].slot(1), frames[1].slot(2), frames[1].slot(24)) == (255, 0, 7)
    assert frames[2].slots == bytes(range(100, 124))


def test_dmx_out_refuses_slots_outside_the_universe(mpy, tmp_path):
    out = mpy("""
import dmx
for call in (lambda: dmx.DmxOut(None, 513), lambda: dmx.DmxOut(None, 0),
             lambda: dmx.DmxOut(None, 24).set(0, 1), lambda: dmx.DmxOut(None, 24).set(25, 1),
             lambda: dmx.DmxOut(None, 24).set(3, 256), lambda: dmx.DmxOut(None, 24).load(bytes(25))):
    try:
        call(); print('accepted')
    except dmx.DmxError as e:
        print(e)
""", tmp_path)
    assert out.splitlines() == [
        "slots must be 1..512, not 513", "slots must be 1..512, not 0",
        "slot 0 is outside 1..24", "slot 25 is outside 1..24",
        "slot 3: level 256 is outside 0..255", "25 levels for 24 slots",
    ]


def test_esp32_uart_port_sends_a_180us_break_and_a_40us_mab(mpy, tmp_path):
    """UartPort's break: the UART slowed to 50 kbaud sends one 0x00 (9 bit-times low, 2 stop bits high)."""
    out = mpy("""
import dmx
class Uart:
    def __init__(self): self.log = []
    def init(self, baudrate): self.log.append(('init', baudrate))
    def write(self, b): self.log.append(('write', bytes(b)))
u = Uart()
port = dmx.UartPort(u)
out = dmx.DmxOut(port, 4)
out.set(2, 9)
out.send()
print(u.log)
""", tmp_path)
    assert out.strip() == "[('init', 50000), ('write', b'\\x00'), ('init', 250000), ('write', b'\\x00\\x00\\t\\x00\\x00')]"
    bit_us = 1e6 / 50_000
    assert 9 * bit_us == 180 >= 92  # start bit + 8 zero data bits: BREAK, above the 92 us a transmitter must send
    assert 2 * bit_us == 40 >= 12  # the two stop bits: MAB (plus the re-init time), above the 12 us minimum


def test_dmx_checker_names_each_broken_rule():
    good = encode_frame(bytes(24))
    assert parse_stream(good)[0].slots == bytes(24)
    cases = {
        "BREAK 80 us < 88 us": encode_frame(bytes(24), break_us=80),
        "MAB 4 us < 8 us": encode_frame(bytes(24), mab_us=4),
        "start code 0x17 is not 0": encode_frame(bytes(24), start_code=0x17),
        "513 slots > 512": encode_frame(bytes(513)),
        "no start code after the BREAK": encode_break() + good,
    }
    for message, stream in cases.items():
        with pytest.raises(DmxFormatError, match=message):
            parse_stream(stream)
    with pytest.raises(DmxStreamError, match="unknown record 0x58 at offset 0"):
        parse_stream(b"X" + good)
    with pytest.raises(DmxStreamError, match="truncated record"):
        parse_stream(good + encode_data(b"\x00\x01")[:-1])
    p = DmxStreamParser()  # bytes before the first BREAK cannot be placed: counted, not guessed
    assert p.feed(encode_data(b"\x00\xff\xff") + good) == [] and p.lost == 3
    # records split anywhere still give the same frames
    stream = good + encode_frame(b"\x01" * 512) + good
    p = DmxStreamParser()
    frames = [f for i in range(0, len(stream), 7) for f in p.feed(stream[i:i + 7])] + [p.flush()]
    assert [len(f.slots) for f in frames] == [24, 512, 24]


def test_unix_board_streams_the_scene_to_a_dmx_fixture_over_a_socket(mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config())
    rx = DmxReceiver()
    try:
        mpy(PRELUDE + """
import socket
s = socket.socket()
s.connect(socket.getaddrinfo('127.0.0.1', %d)[0][-1])
light, pwms, out, _ = rig(24, '.', s)
light.power_up(T, 0)                      # doors (12:20) with the floor on top
for ms in range(0, 500, 5):               # the loop: 40 DMX frames a second
    light.tick(T, ms)
s.close()
""" % rx.port, tmp_path)
        assert rx.wait_frames(20)
        assert not rx.violations
        f = rx.last()
        assert f.slots[:3] == bytes([255, 128, 0]) and f.slot(9) == 64 and f.slot(23) == f.slot(24) == 255
        assert rx.count == 1 + 19  # one at power-up, then one every 25 ms of the 495 ms run
    finally:
        rx.close()


# ---------------------------------------------------------------- fades


def test_fade_reaches_its_target_on_time_across_a_ticks_wrap(mpy, tmp_path):
    out = mpy("""
import time, json
from scene import Fader
f = Fader(6)
f.cut(bytes([0, 255, 10, 0, 0, 0]))
t0 = time.ticks_add(0, -300)            # the ms clock wraps 300 ms into the fade
f.start(bytes([255, 0, 10, 100]), 1000, t0)
seen = []
for k in range(1, 111):                  # 10 ms loop steps
    f.step(time.ticks_add(t0, 10 * k))
    seen.append(list(f.levels))
print(json.dumps(seen))
f.cut(bytes([0, 255, 10, 0]))
f.start(bytes([255, 0, 10, 100]), 1000, t0)
f.step(time.ticks_add(t0, 500))
mid = list(f.levels)
f.start(bytes([0, 0, 0, 0]), 1000, time.ticks_add(t0, 500))  # a new scene mid-fade: on from where the levels are
f.step(time.ticks_add(t0, 501))
print(json.dumps([mid, list(f.levels)]))
""", tmp_path)
    seen, retarget = results(out)
    at = {10 * (k + 1): lv for k, lv in enumerate(seen)}
    target = [255, 0, 10, 100, 0, 0]
    first_on_target = min(t for t, lv in at.items() if lv == target)
    assert first_on_target == 1000  # exactly the fade time with 10 ms steps (never early)
    assert at[990] != target and at[990][0] >= 252 and at[990][1] <= 3
    assert abs(at[500][0] - 127.5) <= 1 and abs(at[500][1] - 127.5) <= 1 and abs(at[500][3] - 50) <= 1
    assert all(a[0] <= b[0] and a[1] >= b[1] for a, b in zip(seen, seen[1:]))  # monotonic, no overshoot
    assert all(lv[2] == 10 for lv in seen)  # an output not in the change stays put
    mid, after = retarget
    assert after == mid  # 1 ms into the new fade: where the old one left the lights, no jump


def test_pwm_duty_tables_map_levels_to_10_and_16_bits(mpy, tmp_path):
    out = mpy("""
from scene import duty_table
for bits, gamma in ((16, None), (10, None), (16, 2.2), (10, 2.2)):
    t = duty_table(bits, gamma)
    print(t[0], t[1], t[128], t[255], all(t[i] <= t[i + 1] for i in range(255)))
""", tmp_path)
    assert out.splitlines() == [
        "0 257 32896 65535 True",
        "0 4 514 1023 True",
        "0 0 14386 65535 True",   # gamma 2.2: half level is ~22 % duty
        "0 0 225 1023 True",
    ]


HEAP_RUN = PRELUDE + """
import gc, micropython
from array import array
from time import ticks_us, ticks_diff
gc.threshold(THRESHOLD)  # the app's gc policy from its first line, as main() sets it
light, pwms, out, line = rig(24, '.', NullStream())
light.power_up(T, 0)
scenes = [light.timeline.scenes[s] for s in ('doors', 'set', 'house', 'dark')]
hist = array('H', bytes(2 * 1001))  # command latency in 5 us buckets; the last one is 5 ms and over
stats = {'worst': 0, 'peak': 0, 'ms': 0}
def changes(now_s, ms):
    for i in range(10000):
        light.fader.start(scenes[i & 3].levels, 100, ms)
        for k in range(4):
            ms += 30
            light.tick(now_s, ms)
        if i % 50 == 0:
            now_s += 600
    return ms
def command(i):
    return '{"id":"c%d","ts":%d,"expires":%d,"action":"scene","args":{"scene":"%s","fade_ms":%d}}' % (
        i, T * 1000, T * 1000 + 60000, ('doors', 'set', 'house')[i % 3], (i % 4) * 250)
def run(n, first):
    for i in range(first, first + n):
        raw = command(i)
        t0 = ticks_us()
        ack = light.on_cmd(raw, False, T * 1000 + 1000, stats['ms'])
        dt = ticks_diff(ticks_us(), t0)
        hist[min(dt // 5, 1000)] += 1
        if dt > stats['worst']:
            stats['worst'] = dt
        if ack[1] != 'ok':
            raise AssertionError(ack)
        for k in range(3):
            stats['ms'] += 20
            light.tick(T, stats['ms'])
        a = gc.mem_alloc()
        if a > stats['peak']:
            stats['peak'] = a
def pct(p, n):
    c = 0
    for b in range(1001):
        c += hist[b]
        if c * 100 >= p * n:
            return (b + 1) * 5
def in_ram(cid, ids=light._gate.ids):
    ids.append(cid)
    del ids[0]
to_flash = light._gate.remember
light._gate.remember = in_ram   # phase 2 keeps the id log in RAM (its flash write is phase 3)
gc.collect()
live0 = gc.mem_alloc()
# 1. 10,000 scene changes through the fader and the loop, the timeline crossing window boundaries:
#    with the heap locked, any allocation raises MemoryError
micropython.heap_lock()
stats['ms'] = changes(T, 0)
micropython.heap_unlock()
# 2. 10,000 JSON scene commands (parse, checks, start the fade, first output write), the app's gc
#    policy on, heap sampled after each; the live heap compared after the first 100 (one-time warm-up:
#    the interpreter's own tables settle, ~128 bytes) and after all
run(100, 0)
gc.collect()
live1 = gc.mem_alloc()
run(9900, 100)
gc.collect()
live2 = gc.mem_alloc()
light._gate.remember = to_flash
r = {"live": live0, "peak": stats['peak'], "warmup": live1 - live0, "grown": live2 - live1,
     "p50_us": pct(50, 10000), "p99_us": pct(99, 10000), "max_us": stats['worst'],
     "heap": gc.mem_alloc() + gc.mem_free()}
# 3. with each id written to flash before the command runs
for b in range(1001):
    hist[b] = 0
stats['worst'] = 0
run(300, 10000)
r.update(flash_p50_us=pct(50, 300), flash_p99_us=pct(99, 300), flash_max_us=stats['worst'])
print(json.dumps(r))
"""


def test_ten_thousand_scene_changes_allocate_nothing_and_commands_do_not_grow_the_heap(rom_mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config())
    # The app's gc policy (collect after 4 KB of allocations) in the 64 KB heap: the sampled high-water mark.
    r = results(rom_mpy(HEAP_RUN.replace("THRESHOLD", "4096"), tmp_path))[0]
    r["live"] -= rom_mpy.image_bytes
    r["peak"] -= rom_mpy.image_bytes
    print(f"\nlighting heap/timing, 64 KB heap, gc threshold 4 KB: {r}")
    assert r["peak"] <= 48 * 1024, r
    assert r["warmup"] <= 256 and r["grown"] == 0, r  # 9,900 commands later the live heap has not grown a byte
    # Between two collections the heap holds at most the live set + the threshold + one allocation.
    assert r["live"] + 4096 + 4096 <= 48 * 1024, r


# ---------------------------------------------------------------- timeline


def test_timeline_picks_by_window_boundary_and_priority(mpy, tmp_path):
    cfg = config()
    out = mpy(PRELUDE + """
from timeline import Timeline
tl = Timeline(json.dumps(json.loads(%r)['data']), 24)
for m in (-21, -20, 0, 39, 40, 79, 80, 99, 100, 159, 160, 1000):
    print(json.dumps([m, tl.pick(T + m * 60).id]))
print(json.dumps(['edge', tl.pick(T + 40 * 60 - 1).id, tl.pick(T + 100 * 60 - 1).id]))
""" % cfg, tmp_path)
    got = {m: sid for m, sid in (r for r in results(out) if r[0] != "edge")}
    assert got == {-21: "dark", -20: "doors", 0: "doors", 39: "doors", 40: "set", 79: "set", 80: "house",
                   99: "house", 100: "dark", 159: "dark", 160: "dark", 1000: "dark"}
    assert results(out)[-1] == ["edge", "doors", "house"]  # a window ends at its end second, exclusive


def test_safety_floor_lifts_a_dark_scene_while_the_venue_is_open(mpy, tmp_path):
    out = mpy(PRELUDE + """
from timeline import Timeline
tl = Timeline(json.dumps(json.loads(%r)['data']), 24)
def show(t):
    s = tl.active(t)
    print(json.dumps([s.id, s.floored, list(s.levels)[:4], list(s.levels)[4 + 22:4 + 24] if len(s.levels) > 26 else []]))
show(T + 120 * 60)     # 14:20: the dark window, venue open
show(T + 200 * 60)     # 15:40: closed, dark
show(T)                # doors: its w (200) is above the floor (90), kept
show(None)             # clock not set: the floor holds
show(0)                # a clock at 1970 is not set either
""" % config(), tmp_path)
    assert results(out) == [
        ["dark", True, [0, 0, 0, 90], [255, 255]],
        ["dark", False, [0, 0, 0, 0], []],
        ["doors", True, [255, 160, 60, 200], [255, 255]],
        ["dark", True, [0, 0, 0, 90], [255, 255]],
        ["dark", True, [0, 0, 0, 90], [255, 255]],
    ]


def test_power_up_in_the_middle_of_a_window_shows_its_scene_at_once(mpy, tmp_path):
    first = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.')
print(json.dumps(light.on_config(%r)))
""" % config(version=7), tmp_path)
    assert results(first) == [[True, None]]
    # The controller loses power; it comes back at 13:10, in the middle of "set", with no network.
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
light.power_up(T + 50 * 60, 12345)
print(json.dumps([light.version, light.scene, light.fader.fading, [p.value for p in pwms]]))
open('line.bin', 'wb').write(line.getvalue())
""", tmp_path)
    version, scene, fading, duties = results(out)[0]
    assert (version, scene, fading) == (7, "set", False)
    assert duties == [0, 0, 65535, 90 * 257]  # b full, w at the floor: no fade up from dark
    (frame,) = parse_stream((tmp_path / "line.bin").read_bytes())
    assert frame.slots[:3] == bytes([0, 0, 255]) and frame.slot(23) == 255 and frame.slot(9) == 0


def test_window_boundary_fades_to_the_next_scene_and_a_late_clock_catches_up(mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config())
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
def show():
    print(json.dumps([light.scene, list(light.fader.levels[:4])]))
light.power_up(T + 40 * 60 - 1, 0)      # 12:59:59, doors
show()
light.tick(T + 40 * 60, 1000)           # 13:00:00, the set begins: a 500 ms fade
show()
light.tick(T + 40 * 60, 1250)
show()
light.tick(T + 40 * 60, 1500)
show()
light2, pwms2, out2, line2 = rig(24, '.', gamma=None)
light2.power_up(None, 0)                # no clock yet: default with the floor
print(json.dumps([light2.scene, list(light2.fader.levels[:4])]))
light2.tick(None, 10)
light2.tick(T + 40 * 60, 20)            # the clock is set: fade to the set
light2.tick(T + 40 * 60, 520)
print(json.dumps([light2.scene, list(light2.fader.levels[:4])]))
""", tmp_path)
    assert results(out) == [
        ["doors", [255, 160, 60, 200]],
        ["set", [255, 160, 60, 200]],
        ["set", [128, 80, 158, 145]],   # half way: w goes down to the floor (90), not to 0
        ["set", [0, 0, 255, 90]],
        ["dark", [0, 0, 0, 90]],
        ["set", [0, 0, 255, 90]],
    ]


def test_power_up_with_no_timeline_on_flash_stays_dark(mpy, tmp_path):
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(8, '.')
light.power_up(T, 0)
print(json.dumps([light.version, light.scene, [p.value for p in pwms], list(out.frame)]))
""", tmp_path)
    assert results(out) == [[None, None, [0, 0, 0, 0], [0] * 9]]


FALLBACK = {"levels": {"r": 30, "w": 40, "dmx": {"1": [200, 0, 50]}}, "floor": {"w": 60, "dmx": {"23": [255, 255]}}}


def test_power_up_with_no_timeline_shows_the_fallback_at_its_floor_until_a_timeline_runs(mpy, tmp_path):
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
def show():
    print(json.dumps([light.scene, light.fader.fading, [p.value // 257 for p in pwms], list(out.frame[1:4]),
                      list(out.frame[23:25])]))
print(json.dumps(light.power_up(None, 0, %r)))   # freshly flashed, clock in 2000: no timeline
show()
for i in range(1, 4):
    light.tick(None, i * 1000)                # no clock, no timeline: the fallback holds
light.tick(T, 5000)                           # the kit's time, still no timeline: it holds
show()
print(json.dumps(light.on_config(%r)))       # a timeline arrives: its schedule, with a fade
light.tick(T, 6000)
light.tick(T, 8000)
show()
""" % (FALLBACK, config(version=2)), tmp_path)
    lines = results(out)
    assert lines[0] is None
    # w raised from 40 to its floor of 60, r and DMX slots 1-3 as the fallback says, slots 23-24 at the
    # floor: cut to at once (no fade up from dark), before anything touches the network
    assert lines[1] == ["fallback", False, [30, 0, 0, 60], [200, 0, 50], [255, 255]]
    assert lines[2] == lines[1]
    assert lines[3] == [True, None]
    assert lines[4] == ["doors", False, [255, 160, 60, 200], [255, 128, 0], [255, 255]]  # 12:20: doors


def test_a_timeline_on_flash_wins_over_the_fallback_and_a_bad_fallback_keeps_its_floor(mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config())
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
print(json.dumps([light.power_up(None, 0, %r), light.scene, [p.value // 257 for p in pwms]]))
import os
os.remove('timeline.json')
for fb in (%r, %r, 'warm'):
    light, pwms, out, line = rig(24, '.', gamma=None)
    print(json.dumps([light.power_up(None, 0, fb), light.scene, [p.value // 257 for p in pwms]]))
""" % (FALLBACK, {"levels": {"r": 300}, "floor": {"w": 60}}, {"levels": {"w": 10}, "floor": {"dmx": {"24": [1, 2]}}}),
              tmp_path)
    assert results(out) == [
        [None, "dark", [0, 0, 0, 90]],  # no clock: the timeline's default with its own floor, as ever
        ["fallback.levels.r: level must be an integer 0..255, not 300", "fallback", [0, 0, 0, 60]],
        ["fallback.floor.dmx.24: 2 levels run past slot 24", "fallback", [0, 0, 0, 10]],
        ["fallback: must be an object {levels, floor}", None, [0, 0, 0, 0]],
    ]


def fortnight(days: int = 14, per_day: int = 6, looks: int = 4) -> dict:
    """A rolling horizon as the fleet compiles it: ``per_day`` windows a day, ``looks`` more 24-slot scenes."""
    tl = venue_timeline()
    tl["scenes"].update({f"look-{i}": {"levels": {"r": 20 * i, "dmx": {"1": [i] * 24}}, "fade_ms": 1500}
                         for i in range(looks)})
    names = list(tl["scenes"])
    tl["windows"] = [[T + d * 86400 + k * 3600, T + d * 86400 + (k + 1) * 3600, names[(d + k) % len(names)], 10]
                     for d in range(days) for k in range(per_day)]
    tl["floor"]["open"] = [[T + d * 86400 - 1800, T + d * 86400 + per_day * 3600 + 1800] for d in range(days)]
    return tl


def test_a_fortnight_timeline_replaces_another_and_one_too_big_is_refused_without_a_crash(mpy, tmp_path):
    # compiled as the fleet sends it: compact JSON
    payloads = {v: json.dumps({"version": v, "ts": T * 1000, "data": fortnight(looks=2)}, separators=(",", ":"))
                for v in (2, 3, 4)}
    assert len(payloads[2]) <= 4096
    for v, raw in payloads.items():
        (tmp_path / f"v{v}.json").write_text(raw)
    out = mpy(PRELUDE + """
import gc, os
light, pwms, out, line = rig(24, '.', NullStream())
def receive(name):                  # as the MQTT client does: one buffer of the payload's length
    buf = bytearray(os.stat(name)[6])
    with open(name, 'rb') as f:
        f.readinto(buf)
    return buf
def offer(name):
    raw = receive(name)
    print(json.dumps(light.on_config(raw)))
gc.collect()
free0 = gc.mem_free()
offer('v2.json')
gc.collect()
free1 = gc.mem_free()
offer('v3.json')                                   # replaces the running fortnight
offer('v3.json')                                   # the retained copy again
print(json.dumps(light.on_config(b' ' * 4097)))    # over the size limit: not even parsed
raw = receive('v4.json')
gc.collect()
ballast = None                                     # the heap nearly full (1.5 KB left): v4 cannot fit
for size in (100, 24, 4):                          # a chain, not a list: a growing list leaves garbage;
    try:                                           # smaller links fill the holes the bigger ones leave
        while gc.mem_free() > 1500:
            ballast = (bytearray(size), ballast)
    except MemoryError:
        pass
    gc.collect()
print(json.dumps(["free", gc.mem_free()]))
print(json.dumps(light.on_config(raw)))
ballast = raw = None
tl = light.timeline
print(json.dumps([light.version, tl.windows, tl.pick(T + 13 * 86400 + 2 * 3600 + 5).id,
                  tl.pick(T + 13 * 86400 + 7 * 3600).id, free0, free1]))
""", tmp_path)
    r = results(out)
    assert r[0] == [True, None] and r[1] == [True, None]
    assert r[2] == [True, "version 3 already applied"]
    assert r[3] == [False, "config: 4097 bytes, this controller takes at most 4096"]
    assert r[4][0] == "free" and r[4][1] <= 1600, r[4]
    assert r[5] == [False, "config: %d bytes do not fit in memory" % len(payloads[4])]
    version, windows, on_day_14, after_hours, free0, free1 = r[6]
    names = list(fortnight(looks=2)["scenes"])
    assert (version, windows, on_day_14, after_hours) == (3, 84, names[(13 + 2) % len(names)], "dark")
    assert json.loads((tmp_path / "timeline.json").read_text())["version"] == 3
    print(f"\nfortnight timeline: {len(payloads[2])} bytes, 84 windows, {len(names)} scenes; "
          f"heap free {free0} before, {free1} with it running")


def _bad(**changes) -> dict:
    return venue_timeline(**changes)


INVALID = [
    ({"format": 2}, "format: this controller reads timeline format 1, not 2"),
    ({"windows": "soon"}, "windows: must be a list of [start, end, scene, priority]"),
    ({"windows": [[str(T), T + 60, "doors", 1]]}, "windows[0] start: must be an integer, not '%d'" % T),
    ({"windows": [[T, T + 60, "doors", 1.5]]}, "windows[0] priority: must be an integer, not 1.5"),
    ({"windows": [[T, T + 60, "doors"]]}, "windows[0]: must be [start, end, scene, priority]"),
    ({"windows": [[T, T, "doors", 1]]}, "windows[0]: end %d is not after start %d" % (T, T)),
    ({"windows": [[T, T + 60, "disco", 1]]}, "windows[0]: unknown scene 'disco'"),
    ({"windows": [[T, T + 60, "doors", 300]]}, "windows[0]: priority must be 0..255, not 300"),
    ({"windows": [[T + 60, T + 120, "doors", 1], [T, T + 30, "set", 2]]},
     "windows[1] (start %d) comes before windows[0] (start %d): windows must be sorted by start" % (T, T + 60)),
    ({"windows": [[T, T + 600, "doors", 5], [T + 60, T + 90, "set", 9], [T + 300, T + 900, "house", 5]]},
     "windows[0] and windows[2] overlap at priority 5 (0 ends at %d, 2 starts at %d)" % (T + 600, T + 300)),
    ({"scenes": {"doors": {"levels": {"r": 256}}}}, "scenes.doors.levels.r: level must be an integer 0..255, not 256"),
    ({"scenes": {"doors": {"levels": {"x": 1}}}}, "scenes.doors.levels: unknown output 'x' (r, g, b, w or dmx)"),
    ({"scenes": {"doors": {"levels": {"dmx": {"23": [1, 2, 3]}}}}}, "scenes.doors.levels.dmx.23: 3 levels run past slot 24"),
    ({"scenes": {"doors": {"levels": {"dmx": {"1": [1, 2, 3], "3": [9]}}}}}, "scenes.doors.levels.dmx: slot 3 is set twice"),
    ({"scenes": {"doors": {"levels": {}, "fade_ms": -1}}}, "scenes.doors.fade_ms: fade_ms must be an integer 0..3600000, not -1"),
    ({"default": "black"}, "default: unknown scene 'black'"),
    ({"floor": {"levels": {"w": 90}, "open": [[T, T - 1]]}}, "floor.open[0]: end %d is not after start %d" % (T - 1, T)),
    ({"floor": {"levels": {"w": 90}}}, "floor.open: must be a list of [start, end] windows"),
    ({"sceens": {}}, "timeline: unknown field 'sceens'"),
]


def test_invalid_timelines_are_rejected_with_the_reason_and_the_old_one_keeps_running(mpy, tmp_path):
    payloads = []
    for changes, _ in INVALID:
        data = venue_timeline()
        if "scenes" in changes:  # keep the other scenes the windows name
            data["scenes"] = {**data["scenes"], **changes["scenes"]}
            changes = {k: v for k, v in changes.items() if k != "scenes"}
        data.update(changes)
        payloads.append(json.dumps({"version": 9, "ts": T * 1000, "data": data}))
    payloads += ["{not json", json.dumps({"version": "9", "data": {}}), json.dumps({"version": 9, "ts": 0, "data": []})]
    (tmp_path / "payloads.txt").write_text("\n".join([config(version=8)] + payloads) + "\n")
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.')
with open('payloads.txt') as f:
    for raw in f:               # the good version 8, then each bad one
        print(json.dumps(light.on_config(raw)))
light.tick(T, 0)
print(json.dumps([light.version, light.scene]))
""", tmp_path)
    r = results(out)
    assert r[0] == [True, None]
    got = [detail for _, detail in r[1:-1]]
    assert [ok for ok, _ in r[1:-1]] == [False] * len(payloads)
    assert got[:len(INVALID)] == [message for _, message in INVALID]
    assert got[len(INVALID):] == ["config: not JSON", "config: must be {version, ts, data}", "timeline: must be an object"]
    assert r[-1] == [8, "doors"]  # version 8 still applied and running
    assert json.loads((tmp_path / "timeline.json").read_text())["version"] == 8


def _mutations(n: int, seed: int = 7) -> list[str]:
    """Valid timelines with one value somewhere replaced by junk of another shape."""
    import random

    rng = random.Random(seed)
    junk = [None, True, -1, 1.5, 10**12, "x", "", [], [1], {}, {"r": 1}, [[1, 2]]]
    out = []
    for _ in range(n):
        data = venue_timeline()
        node = data
        while True:  # walk to a random container, then replace one of its values
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            k = rng.choice(keys)
            if isinstance(node[k], (dict, list)) and node[k] and rng.random() < 0.7:
                node = node[k]
                continue
            node[k] = rng.choice(junk)
            break
        out.append(json.dumps({"version": 1, "ts": 0, "data": data}))
    return out


def test_no_corrupted_timeline_crashes_the_controller(mpy, tmp_path):
    (tmp_path / "bad.txt").write_text("\n".join(_mutations(300)) + "\n")
    out = mpy(PRELUDE + """
from timeline import Timeline, TimelineError
kinds = {}
with open('bad.txt') as f:
    for raw in f:
        try:
            Timeline(json.dumps(json.loads(raw)['data']), 24)
            k = 'accepted'
        except TimelineError:
            k = 'TimelineError'
        kinds[k] = kinds.get(k, 0) + 1
print(json.dumps(kinds))
""", tmp_path)
    kinds = results(out)[0]
    assert set(kinds) <= {"accepted", "TimelineError"} and kinds["TimelineError"] >= 150, kinds


def test_the_timeline_reads_the_same_from_any_json_layout(mpy, tmp_path):
    """The controller reads its timeline from the text, one window at a time (jscan.py): layout, member
    order and what a scene id may hold (brackets, quotes, escapes) must not change what it sees."""
    odd = 'a "]},[{\\ \u00e9'  # every byte the scanner treats specially, inside a string
    data = venue_timeline()
    data["scenes"][odd] = data["scenes"].pop("house")
    data["windows"][2][2] = odd
    texts = [json.dumps(data, separators=(",", ":")),                      # as the fleet sends it
             json.dumps(data, indent=2),                                    # pretty, newlines and all
             json.dumps(dict(reversed(list(data.items())))),                # windows before scenes
             json.dumps(data, ensure_ascii=False)]                          # UTF-8, not \u escapes
    (tmp_path / "texts.txt").write_text("\n".join(json.dumps(t) for t in texts) + "\n")
    out = mpy(PRELUDE + """
from timeline import Timeline
with open('texts.txt') as f:
    for line in f:
        tl = Timeline(json.loads(line).encode(), 24)
        print(json.dumps([tl.windows, sorted(tl.scenes), [tl.pick(T + m * 60).id for m in (-20, 0, 40, 85, 120, 400)],
                          tl.floor_on(T + 180 * 60), tl.floor_on(T + 200 * 60)]))
""", tmp_path)
    got = results(out)
    assert len(got) == len(texts)
    assert all(g == got[0] for g in got), got
    assert got[0][2] == ["doors", "doors", "set", odd, "dark", "dark"] and got[0][3:] == [True, False]


def test_truncated_or_corrupted_config_text_is_refused_and_the_running_timeline_stays(mpy, tmp_path):
    """What a broken link or a bad flash page could hand over: every cut of a good payload, and bytes
    flipped at random. Each is refused with a reason (or, where the damage is harmless, taken); none
    raises, and what runs afterwards is a timeline that was offered whole."""
    import random

    good = config(version=8)
    rng = random.Random(11)
    bad = [good[:n] for n in range(0, len(good), 7)]
    for _ in range(300):
        b = bytearray(good.encode())
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.choice(b'[]{}",:0123456789 \\x')
        bad.append(b.decode("latin-1"))
    (tmp_path / "bad.txt").write_text("\n".join(json.dumps(x) for x in bad) + "\n")
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.')
print(json.dumps(light.on_config(%r)))
kinds = {}
with open('bad.txt') as f:
    for row in f:
        raw = json.loads(row)
        ok, detail = light.on_config(raw)
        k = 'taken' if ok else detail.split(':')[0]
        kinds[k] = kinds.get(k, 0) + 1
        if not ok:
            light.on_config(%r)  # the good one back, for the next
print(json.dumps(kinds))
light.tick(T, 0)
print(json.dumps([light.version, light.scene]))
""" % (good, good), tmp_path)
    r = results(out)
    assert r[0] == [True, None]
    kinds = r[1]
    assert sum(kinds.values()) == len(bad) and kinds.get("config", 0) > 50, kinds  # "config: not JSON", ...
    assert r[2][1] == "doors"


# ---------------------------------------------------------------- commands


def cmd(cid: str, scene: str | None = None, expires_in_s: int = 60, action: str = "scene", **args) -> str:
    if scene is not None:
        args["scene"] = scene
    return json.dumps({"id": cid, "ts": T * 1000, "expires": (T + expires_in_s) * 1000, "action": action, "args": args})


def test_scene_commands_run_once_within_their_expiry(mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config())
    cases = [
        (cmd("c-1", "set", fade_ms=0), False, 10),          # runs
        (cmd("c-1", "set", fade_ms=0), False, 11),          # the same id again: silence
        (cmd("c-2", "house", expires_in_s=5), False, 6),    # past its expiry: not run
        (cmd("c-3", "house"), True, 12),                    # retained: never run
        (cmd("c-4", "disco"), False, 13),
        (cmd("c-5", levels={"r": 10, "dmx": {"2": [77]}}, fade_ms=0), False, 14),
        (cmd("c-6", action="reboot"), False, 15),
        (cmd("c-7", "set", colour="red"), False, 16),
        (cmd("c-10", ["set"]), False, 16),
        (cmd("c-11", levels=[1, 2]), False, 16),
        ("[]", False, 17),
        (json.dumps({"id": "c 8", "ts": 0, "expires": 0, "action": "scene"}), False, 18),
    ]
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
light.power_up(T, 0)
for raw, retained, dt in json.loads(%r):
    ack = light.on_cmd(raw, retained, (T + dt) * 1000, dt * 1000)
    print(json.dumps([ack, light.scene, list(light.fader.levels[:4]), light.fader.levels[4 + 1]]))
print(json.dumps(light.on_cmd(%r, False, None, 0)))
""" % (json.dumps(cases), cmd("c-9", "set")), tmp_path)
    r = results(out)
    assert r[0] == [["c-1", "ok", None], "set", [0, 0, 255, 90], 0]       # floor (w 90) on top
    assert r[1] == [None, "set", [0, 0, 255, 90], 0]
    assert r[2] == [["c-2", "expired", None], "set", [0, 0, 255, 90], 0]
    assert r[3] == [["c-3", "rejected", "retained cmd ignored: commands are never retained"], "set", [0, 0, 255, 90], 0]
    assert r[4] == [["c-4", "rejected", "args.scene: unknown scene 'disco'"], "set", [0, 0, 255, 90], 0]
    assert r[5] == [["c-5", "ok", None], "manual", [10, 0, 0, 90], 77]
    assert r[6][0] == ["c-6", "rejected", "unknown action 'reboot'"]
    assert r[7][0] == ["c-7", "rejected", "args: unknown field 'colour'"]
    assert r[8][0] == ["c-10", "rejected", "args.scene: unknown scene ['set']"]
    assert r[9][0][:2] == ["c-11", "rejected"] and r[9][0][2].startswith("args.levels: must be an object")
    assert r[10][0] is None and r[11][0] is None  # not a command / no valid id: nothing to answer to
    assert r[12] == ["c-9", "rejected", "clock not set: cannot check expires"]
    assert all(row[1:] == r[5][1:] for row in r[6:12])  # nothing refused changed the lights


def test_a_timeline_of_scenes_only_serves_commands_and_shows_its_default(mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config(windows=[], floor=None, default="house"))
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
light.power_up(T, 0)
print(json.dumps([light.scene, list(light.fader.levels[:4])]))
print(json.dumps(light.on_cmd(%r, False, T * 1000, 0)))
print(json.dumps([light.scene, list(light.fader.levels[:4])]))
""" % cmd("c-1", "set", fade_ms=0), tmp_path)
    assert results(out) == [["house", [0, 0, 0, 255]], ["c-1", "ok", None], ["set", [0, 0, 255, 0]]]


def test_a_command_that_ran_before_a_reboot_is_not_run_again(mpy, tmp_path):
    (tmp_path / "timeline.json").write_text(config())
    run = PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
light.power_up(T, 0)
for raw in json.loads(%r):
    print(json.dumps([light.on_cmd(raw, False, (T + 1) * 1000, 5), light.scene]))
"""
    before = mpy(run % json.dumps([cmd("c-1", "house", fade_ms=0)]), tmp_path)
    assert results(before) == [[["c-1", "ok", None], "house"]]
    # Reboot (a new process); the broker delivers c-1 again, then a new command.
    after = mpy(run % json.dumps([cmd("c-1", "house", fade_ms=0), cmd("c-2", "set", fade_ms=0)]), tmp_path)
    assert results(after) == [[None, "doors"], [["c-2", "ok", None], "set"]]
    assert (tmp_path / "cmd_ids.txt").read_text().split() == ["c-1", "c-2"]


def test_the_command_id_log_stays_small(mpy, tmp_path):
    out = mpy("""
from commands import CommandGate
g = CommandGate('ids.txt', keep=8)
for i in range(100):
    g.remember('c-%d' % i)
print(' '.join(CommandGate('ids.txt').ids))
""", tmp_path)
    assert out.split() == ["c-%d" % i for i in range(92, 100)]


def test_a_window_boundary_to_a_cut_scene_reaches_the_outputs_at_once(mpy, tmp_path):
    """"house" has fade_ms 0: the change is a cut, and the PWM and DMX outputs show it on that tick."""
    (tmp_path / "timeline.json").write_text(config())
    out = mpy(PRELUDE + """
light, pwms, out, line = rig(24, '.', gamma=None)
light.power_up(T + 80 * 60 - 1, 0)       # 13:39:59, the set
light.tick(T + 80 * 60, 1000)            # 13:40:00, house: a cut
print(json.dumps([light.scene, [p.value for p in pwms], out.frame[1], out.frame[23]]))
""", tmp_path)
    assert results(out) == [["house", [0, 0, 0, 255 * 257], 0, 255]]  # w full, set's DMX slot 1 out, floor on 23
