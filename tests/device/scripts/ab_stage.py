# Test driver for device/lib/update.py, run in the flash tree's folder (cwd) as the firmware would run
# the update: the release from a bundle folder, in chunks, into the spare slot, then the switch.
#   micropython ab_stage.py BUNDLE RUNNING_FW [stop] [mode] [rollback]
# stop: a step at which to hang (the test SIGKILLs it there: a power cut): opened, midchunk (half a
# chunk appended to the file by hand, as a write cut short leaves it), files (every file written,
# before the check), midswitch (tried, trial marker and slot.tmp written, before the rename).
# The switch names offer "ab-offer" (data/update.failed): a rollback of its trial fails it there.
# Prints CODE <bytes> (update.py and hmac256.py loaded) and HEAP <bytes>: the most the staging held
# live (after a collection) between chunks, code and the device's config aside: the manifest, the tag,
# the hash context, the buffers.
# mode: normal | repeat (a chunk sent twice) | gap (a chunk skipped) | short (a file's last chunk never sent)
import sys

sys.path.insert(0, "")
import abboot

sys.path.insert(0, abboot.current())  # the running slot's update.py, as the app would import it
import gc
import json
import time

gc.collect()
base = gc.mem_alloc()
import hmac256  # noqa: F401 - update.py's, imported here to be counted as code
import update

gc.collect()
print("CODE", gc.mem_alloc() - base)  # update.py and hmac256.py loaded into the heap (a ROMFS or frozen build: flash)

CHUNK = 256
bundle, running = sys.argv[1], sys.argv[2]
stop = sys.argv[3] if len(sys.argv) > 3 else "-"
mode = sys.argv[4] if len(sys.argv) > 4 else "normal"
rollback = len(sys.argv) > 5 and sys.argv[5] == "rollback"


def step(name):
    print("STEP", name)
    if name == stop:
        while True:
            time.sleep(1)


with open("scanner.json") as f:
    cfg = json.load(f)  # the device's config (the app reads update_key from it for an update)
gc.collect()
base = gc.mem_alloc()
with open(bundle + "/manifest.json", "rb") as f:
    mj = f.read()
with open(bundle + "/tag") as f:
    tag = f.read().strip()
try:
    st = update.Stage(mj, tag, cfg, running, rollback, None)
    step("opened")
    sent = 0
    peak = 0
    for path, size, _h in update.entries(st._man, False):
        off = st.have(path)
        print("RESUME", path, off)
        with open(bundle + "/files/" + path, "rb") as f:
            f.seek(off)
            while off < size:
                data = f.read(CHUNK)
                sent += 1
                if mode == "short" and off + len(data) >= size:
                    break
                if mode == "gap" and sent == 2:
                    off += len(data)
                    continue
                if stop == "midchunk" and sent == 3:
                    with open(st.slot + "/" + path, "ab") as out:
                        out.write(data[: len(data) // 2])
                    step("midchunk")
                st.write(path, off, data)
                if mode == "repeat" and sent == 2:
                    st.write(path, off, data)
                off += len(data)
                data = None
                gc.collect()
                peak = max(peak, gc.mem_alloc() - base)
    step("files")
    tried = ("data/update.failed", "ab-offer")  # as fetch.py names the offer that installs the slot
    if stop == "midswitch":
        for p, n, h in update.entries(st._man, False):  # switch()'s check, without its switch
            st.check(p, n, h)
        abboot._put("tried", "%s\n%s\n%s" % (st.slot, tried[0], tried[1]))
        abboot._put("trial", st.slot + " 0")
        with open("slot.tmp", "w") as f:
            f.write(st.slot)
        step("midswitch")
    print("HEAP", peak)  # the live heap the staging held beyond its code and the config
    print("SWITCHED", st.switch(False, tried))
except update.Refused as e:
    print("REFUSED", e)
