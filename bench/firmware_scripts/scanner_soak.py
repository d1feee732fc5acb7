# bench/firmware.py's scanner soak, run in the MicroPython unix port (compiled next to the role's
# firmware): every line of scans.txt through verdict.Gate.decide, as the door would.
#   micropython -m scanner_soak CONFIG NOW SCANS TICKETS
# (TICKETS: valid tickets, one a line, for the bare HMAC baseline)
# Prints (the bench parses them):
#   CODE <bytes the firmware modules take in the heap once imported> BASE <heap before them>
#   HMAC <us> ...                 bare HMAC-SHA256 of one ticket's signed part, per line of TICKETS
#   T <verdict index> <us> ...    one decide() per pair, 100 scans a line
#   L <scan> <live>               live heap after gc.collect(), every 100 scans
#   DONE <peak> <scans> <verdict counts as JSON>
import gc

gc.collect()
base = gc.mem_alloc()
import verdict
from binascii import unhexlify
from hmac256 import HMAC256

gc.collect()
code = gc.mem_alloc() - base
print("CODE", code, "BASE", base)

import json
import sys
import time
from array import array

VERDICTS = ("admitted", "already_admitted", "malformed", "wrong_event", "bad_signature", "not_yet_valid",
            "expired", "revoked")


def main():
    cfg_path, now, scans_path, tickets_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    with open(cfg_path) as f:
        cfg = json.load(f)
    gate = verdict.Gate(cfg, ".")
    key = HMAC256(unhexlify(cfg["events"][0]["key"]))
    cfg = None

    # the floor: the bare HMAC of a ticket's signed part (all but ":" and the 16-character MAC)
    line = "HMAC"
    with open(tickets_path, "rb") as f:
        for p in f:
            p = p[:-1]
            t = time.ticks_us()
            key.digest(memoryview(p)[:len(p) - 17])
            line += " %d" % time.ticks_diff(time.ticks_us(), t)
    print(line)
    line = None
    us = array("I", range(100))
    f = open(scans_path, "rb")

    kinds = array("B", range(100))
    gc.collect()
    gc.threshold(4096)  # collect often and small, as the app does: mem_alloc() tracks live data
    peak = gc.mem_alloc()
    n = 0
    k = 0
    for p in f:
        p = p[:-1]
        t = time.ticks_us()
        v, _ = gate.decide(p, now)
        d = time.ticks_diff(time.ticks_us(), t)
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        us[k] = d
        kinds[k] = VERDICTS.index(v)
        k += 1
        n += 1
        if k == 100:
            print("T", " ".join("%d %d" % (kinds[i], us[i]) for i in range(100)))
            k = 0
            gc.collect()
            print("L", n, gc.mem_alloc())
    if k:
        print("T", " ".join("%d %d" % (kinds[i], us[i]) for i in range(k)))
    f.close()
    gate.close()
    print("DONE", peak, n, json.dumps(gate.counts))


main()
