# The device's download of a release from its kit's agent (docs/updates.md, "The ESP32's download").
#
# The agent's kit-network server (agent/updates/server.py) speaks plain HTTP/1.1, one request a
# connection. take() asks it for the manifest with this device's tag (X-Popkit-Device), opens
# update.Stage on it (tag, role, ABI, version, room: a refusal raises update.Refused), then asks for
# every file from what the spare slot already holds (stage.have: after a cut or a reboot nothing on
# flash is fetched again), a span at a time with Range, written to the stage a chunk at a time as it
# arrives; then every file is read back and checked and the pointer switches (the caller resets).
#
# Memory: one buffer, taken by the app at boot (link.py; a door lends its outbox's read buffer
# instead, which the outbox does without meanwhile), carries each response head, then the
# body (the manifest's to a file on flash, the files' to the stage), and is lent to the stage for
# what it reads back; nothing grows with the release. Sockets
# are non-blocking (the board's connect_tcp, as pkmqtt's) inside a Stream (tcp.py), every connect
# and read has a timeout, and the task yields between chunks: the app's loop (a door's UART) keeps
# turning. Network faults (the agent or the Wi-Fi gone, a refused connect, a cut body, a 503) are
# retried with a doubling backoff; the count starts over whenever bytes reach the flash, and past
# ``tries`` in a row without progress the download gives up with the last fault as its reason.
#
# Entry point (the apps, safe mode and an update mode at boot, through link.py's updates=): take(lk, o)
# with o the offer as link.py passes it, a tuple (id, release, fw, host, port, rollback); a decoded
# UpdateOffer dict is still taken (turned into that tuple).
# Heap (the 48 KB budget, docs/updates.md): no table of files (update.Stage reads the manifest back
# from flash), the offer as a tuple, one exception (update.Refused, ValueError itself: a download that
# cannot go on), the texts of its faults in one string (_TEXT), one coroutine (each function, frame
# and long string constant costs heap in a ROMFS run; a request's head is read in it, not in a helper
# of its own); the download waits for the boot's settle window, so the boot stage's abboot and the
# download are never on the heap together.
import asyncio
import json

from micropython import const

from tcp import Stream

_SPAN = const(16384)  # bytes asked for in one request: a cut costs at most what was in flight
_MAX_MANIFEST = const(8192)  # a role's manifest is ~2 KB
_BUF = const(512)  # the buffer when the app took none at boot
_BACKOFF_MAX_MS = const(15000)
_SETTLE_WAIT_MS = const(12000)  # the boot's settle window (abboot.FAST_S, 10 s), and a margin

# The texts of a download's faults, refusals and ends, one string split at use (_TEXT.split("|")[_HEAD]):
# in a ROMFS run each string constant over 10 characters is a heap object for as long as the module
# is loaded, and these are needed only before or after the transfer, or on the way into a retry.
_TEXT = ("update server: response head over %d bytes|closed in the response head|"
         "update server: bad status line %r|update server busy (503)|update server: %s for %s|"
         "403, this device is not one of the kit's (update keys)|update server: more bytes than Content-Length|"
         "update server: manifest of %d bytes, tag %r|manifest cut short|"
         "update server: %s for bytes %d-%d of %s (%d bytes)|%s cut at %d|"
         "update server %s:%d unreachable after %d tries: %s|FETCH retry|no A/B slots here: %s|"
         "/update.manifest|/update.failed|UPDATE switched")
_HEAD = const(0)
_CLOSED = const(1)
_STATUS = const(2)
_BUSY = const(3)
_HTTP = const(4)
_403 = const(5)
_LONG = const(6)
_MANIFEST = const(7)
_MCUT = const(8)
_RANGE = const(9)
_CUT = const(10)
_GONE = const(11)
_RETRY = const(12)
_NOAB = const(13)
_TMP = const(14)
_FAILED = const(15)
_SWITCHED = const(16)


async def take(lk, o):
    """The link's download of offer ``o`` (link.py, Link._offer) into the spare slot, then the reset
    into it, or the failure reported (lk.failed: the app untouched). This module and update.py leave
    sys.modules after, whatever happens (the app's own modules stay: hmac256 is the scanner's too).

    One request a connection; the manifest first (its body through the buffer to a file on flash,
    update.Stage checks it), then each file from what the slot holds, a span at a time, written to
    the stage a buffer at a time, yielding to the app between chunks. Network faults (OSError, a
    timeout) are tried again after ``backoff_ms``, doubling; ``tries`` of them in a row with no byte
    reaching the flash end it. The bounds come from the device config's "update" (tests, the bench)."""
    import sys

    if isinstance(o, dict):  # a decoded UpdateOffer (older callers)
        o = (o["id"], o["release"], o["fw"], o["host"], o["port"], o.get("rollback", False))
    for _ in range(_SETTLE_WAIT_MS // 500):  # the boot stage's settle window first (it holds abboot)
        if "abboot" not in sys.modules:
            break
        await asyncio.sleep_ms(500)
    drop = [n for n in ("fetch", "update", "hmac256", "abboot") if n not in sys.modules or n == "fetch"]
    import update  # local: let go once the download is over, while this coroutine still runs (lk.stop)

    dev, cfg, connect, reset, flash, buf = lk._upd
    why = stage = st = ob = None
    try:
        with open(cfg) as f:
            cfg = json.load(f)  # read again: the app keeps none of its config (its secrets among it)
        kw = cfg.get("update") or {}
        t = kw.get("timeout_ms", 10000)
        tries = kw.get("tries", 6)
        wait = backoff = kw.get("backoff_ms", 500)
        cfg = {"update_key": cfg.get("update_key")}
        kw = None
        if buf == -1:  # the outbox's read buffer, lent (link.py, updates=): one buffer resident, not two
            ob = lk.outbox
            buf, ob._buf = ob._buf, None
        elif not buf:
            buf = bytearray(_BUF)
        mv = memoryview(buf)
        chunk = len(buf)
        tmp = flash + _TEXT.split("|")[_TMP]
        got = asked = faults = fails = 0
        while True:
            path = "manifest.json"  # first the manifest, then the next span of the first file not whole
            off = size = 0
            if stage is not None:  # (the stage reads its manifest back from flash: no table held here)
                nxt = stage.next()  # that file's hash readied, a resumed prefix hashed, while the buffer is free
                if nxt is None:
                    break
                path, off, size = nxt
                nxt = None
            end = min(off + _SPAN, size) - 1
            moved = False
            asked += 1
            try:
                st = Stream(connect(o[3], o[4]))
                # queued, not written: the TCP connect may still be under way (drain waits for it)
                st.out_buf = (
                    "GET /updates/%s/%s%s HTTP/1.1\r\nHost: %s\r\nX-Popkit-Device: %s\r\n%sConnection: close\r\n\r\n" % (
                        o[1], "files/" if stage else "", path, o[3], dev,
                        "Range: bytes=%d-%d\r\n" % (off, end) if stage else "")).encode()
                await st.drain(t)
                # the head, into the buffer (the agent's are under 200 bytes), up to its "\r\n\r\n"
                n = 0
                b0 = -1
                k = 0  # of the "\r\n\r\n" seen
                while b0 < 0:
                    if n >= chunk:
                        raise update.Refused(_TEXT.split("|")[_HEAD] % chunk)
                    r = await st.readinto(mv[n:], t)  # type: int
                    if not r:
                        raise OSError(_TEXT.split("|")[_CLOSED])
                    for i in range(n, n + r):
                        k = k + 1 if buf[i] == (13 if k % 2 == 0 else 10) else (1 if buf[i] == 13 else 0)
                        if k == 4:
                            b0 = i + 1  # where the body's first bytes start
                            break
                    n += r
                b1 = n  # where the bytes read end
                lines = bytes(mv[:b0]).decode().split("\r\n")
                try:
                    status = int(lines[0].split(" ", 2)[1])
                except (IndexError, ValueError):
                    raise update.Refused(_TEXT.split("|")[_STATUS] % lines[0][:40])
                length = -1
                val = None
                for ln in lines[1:]:
                    name, _, v = ln.partition(":")
                    name = name.lower()
                    if name == "content-length":
                        length = int(v)
                    elif name in ("x-popkit-tag", "content-range"):
                        val = v.strip()
                lines = None  # type: ignore[assignment]
                if status != (206 if stage else 200):
                    if status == 503:
                        raise OSError(_TEXT.split("|")[_BUSY])
                    raise update.Refused(_TEXT.split("|")[_HTTP] % (
                        _TEXT.split("|")[_403] if status == 403 else "HTTP %d" % status, path))
                if b1 - b0 > length:
                    raise update.Refused(_TEXT.split("|")[_LONG])
                if stage is None:
                    if not val or not 0 < length <= _MAX_MANIFEST:
                        raise update.Refused(_TEXT.split("|")[_MANIFEST] % (length, val))
                    n = b1 - b0
                    with open(tmp, "wb") as f:  # through the buffer to flash: never whole in RAM
                        f.write(mv[b0:b1])
                        while n < length:
                            k = await st.readinto(mv[:min(chunk, length - n)], t)
                            if not k:
                                raise OSError(_TEXT.split("|")[_MCUT])
                            f.write(mv[:k])
                            n += k
                    got += n
                    st.close()
                    st = None
                    stage = update.Stage(tmp, val, cfg, lk.fw or lk.role + "-0.0.0", o[5], buf)
                    cfg = None
                    print("FETCH", o[1], "to", stage.slot)
                    continue
                if val != "bytes %d-%d/%d" % (off, end, size) or length != end - off + 1:
                    raise update.Refused(_TEXT.split("|")[_RANGE] % (val, off, end, path, size))
                if not off:
                    print("FETCH", path)
                mv[:b1 - b0] = mv[b0:b1]  # the body's first bytes, behind the head: to the buffer's front
                n = b1 - b0
                left = length
                while left:
                    want = min(chunk, left)
                    while n < want:
                        k = await st.readinto(mv[n:want], t)
                        if not k:
                            break
                        n += k
                    if n:
                        stage.write(path, off, mv[:n])  # update.Refused (a hash mismatch...) ends it all
                        off += n
                        left -= n
                        got += n
                        moved = True
                    if n < want:
                        raise OSError(_TEXT.split("|")[_CUT] % (path, off))
                    n = 0
                    await asyncio.sleep_ms(0)  # the app's turn between chunks
            except (OSError, asyncio.TimeoutError) as e:
                faults += 1
                if moved:  # bytes reached the flash: the count starts over
                    fails = 0
                    wait = backoff
                    continue
                fails += 1
                e = "timed out" if isinstance(e, asyncio.TimeoutError) else repr(e)[:60]  # type: ignore[assignment]
                if fails >= tries:
                    raise update.Refused(_TEXT.split("|")[_GONE] % (o[3], o[4], fails, e))
                print(_TEXT.split("|")[_RETRY], fails, e)
                await asyncio.sleep_ms(wait)
                wait = min(wait * 2, _BACKOFF_MAX_MS)
            finally:
                if st is not None:
                    st.close()
                    st = None
        for p, n, h in update.entries(stage._man, False):  # read back from flash, a file at a time, the app's turn between files
            stage.check(p, n, h)
            await asyncio.sleep_ms(0)
        stage.switch(True, (flash + _TEXT.split("|")[_FAILED], o[0]))  # the offer's id: a rollback fails it (abboot)
        print("FETCHED", got, asked, faults)
    except ImportError as e:  # a ROMFS or frozen run has no A/B boot stage (abboot)
        why = _TEXT.split("|")[_NOAB] % e
    except Exception as e:  # update.Refused: its text is the reason
        why = str(e) or repr(e)
    if ob is not None:
        ob._buf = buf  # back to the outbox, before lk.stop() flushes it
    stage = buf = mv = update = None  # type: ignore[assignment]
    for n in drop:  # type: ignore[assignment]  # (an int above) none of it stays on the heap
        sys.modules.pop(n, None)  # type: ignore[call-overload]
    if why is None:
        print(_TEXT.split("|")[_SWITCHED], o[2])
        await lk.stop(3000)  # the downloading state and the outbox out first, then the reset
        reset()
        return
    lk.failed(o, why)
