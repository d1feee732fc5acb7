# bench/firmware.py's scanner soak, run in the MicroPython unix port from the scanner's ROMFS image
# (packed in beside the firmware, imported by popkit.romfs.boot_code): every line of scans.txt
# through verdict.Gate.decide, as the door would.
#   micropython -X heapsize=<64 KB + image> -c "<boot_code(image, 'scanner_soak')>" CONFIG NOW SCANS TICKETS
# (with -c, sys.argv[0] is '-c' and sys.argv[1:] are the arguments, as with -m;
#  TICKETS: valid tickets, one a line, for the bare HMAC baseline)
# Prints (the bench parses them):
#   qstr pool: ... n_total_bytes=<before the firmware's imports>   (micropython.qstr_info())
#   qstr pool: ... n_total_bytes=<after them>
#   CODE <heap the firmware's imports took> BASE <live heap before them (the image buffer included)>
#   HMAC <us> ...                 bare HMAC-SHA256 of one ticket's signed part, 100 tickets a line
#   T <verdict index> <us> ...    one decide() per pair, 100 scans a line
#   L <scan> <live>               live heap after gc.collect(), every 100 scans
#   DONE <live peak> <alloc peak> <scans> <verdict counts as JSON>
# The live peak is gc.mem_alloc() right after a gc.collect() that follows each decide() (outside
# its timing); the alloc peak is the gc.mem_alloc() high-water before that collect (garbage included).
import gc
import micropython
from array import array

# The harness's own buffers first, in one piece, before the firmware: growing them between the
# firmware's allocations would fragment the 64 KB and the bench would measure the harness.
us = array("I", bytes(4 * 100))
kinds = bytearray(100)
gc.collect()
base = gc.mem_alloc()
micropython.qstr_info()
import verdict
from binascii import unhexlify
from hmac256 import HMAC256

gc.collect()
code = gc.mem_alloc() - base
micropython.qstr_info()
print("CODE", code, "BASE", base)

import json
import sys
import time

VERDICTS = ("admitted", "already_admitted", "malformed", "wrong_event", "bad_signature", "not_yet_valid",
            "expired", "revoked")


def flush(tag, k, pairs):
    """One line of the k values in us (and kinds, if pairs), written piece by piece: no big string."""
    w = sys.stdout.write
    w(tag)
    for i in range(k):
        if pairs:
            w(" %d %d" % (kinds[i], us[i]))
        else:
            w(" %d" % us[i])
    w("\n")


def main():
    cfg_path, now, scans_path, tickets_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with open(cfg_path) as f:
        cfg = json.load(f)
    gate = verdict.Gate(cfg, ".")
    key = HMAC256(unhexlify(cfg["events"][0]["key"]))
    cfg = None

    # the floor: the bare HMAC of a ticket's signed part (all but ":" and the 16-character MAC)
    k = 0
    with open(tickets_path, "rb") as f:
        for p in f:
            p = p[:-1]
            t = time.ticks_us()
            key.digest(memoryview(p)[:len(p) - 17])
            us[k] = time.ticks_diff(time.ticks_us(), t)
            k += 1
            if k == 100:
                flush("HMAC", k, False)
                k = 0
    if k:
        flush("HMAC", k, False)
    f = open(scans_path, "rb")

    gc.collect()
    gc.threshold(4096)  # collect often and small, as the app does
    peak = alloc_peak = gc.mem_alloc()
    n = 0
    k = 0
    for p in f:
        p = p[:-1]
        t = time.ticks_us()
        v, _ = gate.decide(p, now)
        d = time.ticks_diff(time.ticks_us(), t)
        p = _ = None
        a = gc.mem_alloc()
        if a > alloc_peak:
            alloc_peak = a
        gc.collect()
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        us[k] = d
        kinds[k] = VERDICTS.index(v)
        k += 1
        n += 1
        if k == 100:
            flush("T", k, True)
            k = 0
            gc.collect()
            print("L", n, gc.mem_alloc())
    if k:
        flush("T", k, True)
    f.close()
    gate.close()
    print("DONE", peak, alloc_peak, n, json.dumps(gate.counts))


main()
