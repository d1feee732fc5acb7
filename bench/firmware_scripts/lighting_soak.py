# bench/firmware.py's lighting soak, run in the MicroPython unix port from the lighting role's ROMFS
# image (packed in beside the firmware, imported by popkit.romfs.boot_code): N scene commands through
# lighting.Lighting.on_cmd, with the loop's ticks between them, on stand-in outputs (PWM duties kept
# in RAM, DMX frames counted) and a simulated clock.
#   micropython -X heapsize=<64 KB + image> -c "<boot_code(image, 'lighting_soak')>" CONFIG STATE_DIR N T0_MS
# (with -c, sys.argv[0] is '-c' and sys.argv[1:] are the arguments, as with -m)
# Prints (the bench parses them):
#   qstr pool: ... n_total_bytes=<before the firmware's imports>   (micropython.qstr_info())
#   qstr pool: ... n_total_bytes=<after them>
#   CODE <heap the firmware's imports took> BASE <live heap before them (the image buffer included)>
#   CONFIG <ok> <detail>
#   T <us> ...                    one on_cmd() each, 100 commands a line
#   L <command> <live>            live heap after gc.collect(), every 100 commands
#   DONE <live peak> <alloc peak> <commands> <ok> <ticks> <dmx bytes> <last levels right 0/1>
# The live peak is gc.mem_alloc() right after a gc.collect() that follows each on_cmd() and each tick
# (outside the timing); the alloc peak is the gc.mem_alloc() high-water before it (garbage included).
import gc
import micropython
from array import array

# The harness's own buffer first, in one piece, before the firmware (see scanner_soak.py).
us = array("I", bytes(4 * 100))
gc.collect()
base = gc.mem_alloc()
micropython.qstr_info()
import dmx
import lighting
from scene import Outputs

gc.collect()
code = gc.mem_alloc() - base
micropython.qstr_info()
print("CODE", code, "BASE", base)

import sys
import time

L = 257  # linear duty_u16 per level (gamma None)


class Pwm:
    def __init__(self):
        self.value = -1

    def duty_u16(self, d):
        self.value = d


class Null:
    def __init__(self):
        self.n = 0

    def write(self, b):
        self.n += len(b)
        return len(b)


def flush(k):
    """One T line of the k times in us, written piece by piece: no big string."""
    w = sys.stdout.write
    w("T")
    for j in range(k):
        w(" %d" % us[j])
    w("\n")


CMD = '{"id":"s%d","ts":%d,"expires":%d,"action":"scene","args":%s}'


def args_for(i):
    """(args JSON, r, w) of command i: a timeline scene, a fade with DMX, or a cut."""
    m = i % 4
    if m == 0:
        return '{"scene":"warm","fade_ms":%d}' % (40 + i % 7 * 20), 90, 40
    if m == 1:
        r = i % 251
        return '{"levels":{"r":%d,"g":%d,"w":%d,"dmx":{"1":[%d,%d],"5":[%d]}},"fade_ms":%d}' % (
            r, (i * 7) % 256, 255 - r, i % 256, (i * 3) % 256, (i * 11) % 256, 50 + i % 5 * 30), r, 255 - r
    if m == 2:
        return '{"scene":"show"}', 200, 0
    return '{"levels":{"w":%d}}' % (1 + i % 254), 0, 1 + i % 254


def main():
    cfg_path, state_dir, n, t0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    pwms = [Pwm() for _ in range(4)]
    sink = Null()
    light = lighting.Lighting(Outputs(pwms, dmx.DmxOut(dmx.StreamPort(sink), 24), 16, None), 24, state_dir)
    now = t0  # the simulated board clock (epoch ms) and the ticks it drives
    ticks = 0
    light.power_up(now // 1000, ticks)
    with open(cfg_path, "rb") as f:
        raw = f.read()
    ok, detail = light.on_config(raw)
    raw = None
    print("CONFIG", 1 if ok else 0, detail)
    gc.collect()
    gc.threshold(4096)  # as the app: collect often and small
    peak = alloc_peak = gc.mem_alloc()
    good = 0
    k = 0
    n_ticks = 0
    r = w = 0
    for i in range(n):
        a, r, w = args_for(i)
        c = CMD % (i, now, now + 60000, a)
        a = None
        t = time.ticks_us()
        res = light.on_cmd(c, False, now, ticks)
        us[k] = time.ticks_diff(time.ticks_us(), t)
        c = None
        if res is not None and res[1] == "ok":
            good += 1
        res = None
        a = gc.mem_alloc()
        if a > alloc_peak:
            alloc_peak = a
        gc.collect()
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        for _ in range(2 + i % 29):  # 20..300 ms of the 10 ms loop: most fades finish, some are cut short
            now += 10
            ticks = time.ticks_add(ticks, 10)
            light.tick(now // 1000, ticks)
            n_ticks += 1
            a = gc.mem_alloc()
            if a > alloc_peak:
                alloc_peak = a
            gc.collect()
            a = gc.mem_alloc()
            if a > peak:
                peak = a
        k += 1
        if k == 100:
            flush(100)
            k = 0
            gc.collect()
            print("L", i + 1, gc.mem_alloc())
    if k:
        flush(k)
    for _ in range(40):  # let the last fade finish
        now += 10
        ticks = time.ticks_add(ticks, 10)
        light.tick(now // 1000, ticks)
    right = pwms[0].value == r * L and pwms[3].value == w * L
    print("DONE", peak, alloc_peak, n, good, n_ticks, sink.n, 1 if right else 0)


main()
