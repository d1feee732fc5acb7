# A scanner's firmware reduced to its link: check-ins emitted through link.Link.
#
#   micropython scanner.py HOST PORT FLASH_DIR FIRST LAST PACE_MS [TELEMETRY_EVERY] [RESEND_MS] [stop]
#
# Emits check-in events n = FIRST..LAST (ticket "T<n, 5 digits>"), one
# every PACE_MS, and device telemetry every TELEMETRY_EVERY events; answers
# commands "ok" and applies any config. Then keeps the link up until killed,
# or with "stop": waits for the outbox to drain and leaves gracefully.
# Prints, one per line:
#   BOOT <boot> <started> <unreceipted> | EMIT <n> <seq> <ts> | DONE <last> | OUTBOX <count>
#   DRAINED (done, and the outbox is empty)
#   CMD <id> <action> | CONFIG <version> | MEM <alloc after collect> <peak> <conns> | STOPPED <count>
#   CODE <heap after imports> (the .mpy modules: frozen into flash on a device)
import asyncio
import gc
import sys

import board
import link

gc.collect()
print("CODE", gc.mem_alloc())

host, port, flash = sys.argv[1], int(sys.argv[2]), sys.argv[3]
first, last, pace = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
tele_every = int(sys.argv[7]) if len(sys.argv) > 7 else 25
resend_ms = int(sys.argv[8]) if len(sys.argv) > 8 else 3000
stop = len(sys.argv) > 9 and sys.argv[9] == "stop"
peak = 0
done = False


def on_cmd(cmd):
    print("CMD", cmd["id"], cmd["action"])
    return "ok"


def on_config(cfg):
    print("CONFIG", cfg["version"])
    return True


lk = link.Link("demo", "demo-scanner-1", "scanner", lambda: board.connect_tcp(host, port), board.epoch_ms, flash,
               fw="pk-test-0.1", on_cmd=on_cmd, on_config=on_config, resend_ms=resend_ms,
               keepalive=5, response_ms=1500, backoff_ms=200, backoff_max_ms=1000)
t0 = board.epoch_ms()


async def emitter():
    global done
    scans = 0
    for n in range(first, last + 1):
        ts = board.epoch_ms()
        seq = lk.emit("event", "checkin", {"data": {"event": "DEMO-1", "ticket": "T%05d" % n, "verdict": "admitted"}}, ts)
        scans += 1
        print("EMIT", n, seq, ts)
        if not n % 100:
            sample()
        if tele_every and scans % tele_every == 0:
            lk.emit("telemetry", "device", {"uptime_s": (board.epoch_ms() - t0) // 1000, "heap_free": gc.mem_free(),
                                            "outbox": lk.outbox.count, "dropped": lk.outbox.dropped, "scans": scans})
        await asyncio.sleep_ms(pace)
    done = True
    print("DONE", last)


def sample():
    """The live heap (after a collection) and its high-water mark."""
    global peak
    gc.collect()
    a = gc.mem_alloc()
    if a > peak:
        peak = a
    print("MEM", a, peak, lk.mqtt.conns)


async def monitor():
    shown = -1
    drained = False
    while True:
        sample()
        n = lk.outbox.count
        if n != shown:
            shown = n
            print("OUTBOX", n)
        if done and not n and not drained:
            drained = True
            print("DRAINED")
        await asyncio.sleep_ms(200)


async def main():
    print("BOOT", lk.boot.decode(), lk.started, lk.outbox.count)
    lk.start()
    asyncio.create_task(monitor())
    await emitter()
    if stop:
        await lk.stop(10000)
        print("STOPPED", lk.outbox.count)
        return
    while True:
        await asyncio.sleep(1)


asyncio.run(main())
