# The lighting controller's update mode (docs/updates.md, "Lighting controllers: the update mode").
# A controller's heap has no room for a download beside its running app (it idles near its 48 KB
# budget), so the app takes none: on an offer (link.py's intake) it calls save(), a marker on flash
# with the offer and its outputs' levels, and resets. The boot stage (abboot.boot: mode "update";
# device/boot/main.py) then runs run() instead of the app, from the same slot:
#   1. the outputs set to the saved levels (PWM duties as they were, the DMX frame refreshed every
#      DMX_PERIOD_MS from a small loop): the room's lights hold, no timeline, no fades;
#   2. the network, MQTT, `state` downloading, and the download as safe mode takes one (link.py's
#      offer intake, fetch.py), resumed from what the spare slot holds;
#   3. switched: the marker goes, then the reset into the trial. Refused or failed: the failure is
#      remembered (link.failed: update.failed, as the apps keep it) and reported, the marker goes,
#      and the board resets into its app (the lights pick the timeline back up).
# A power cut: the next boot finds the marker and goes on. After TRIES boots in update mode without
# an end the marker is dropped and the offer failed: a controller never stays here for good.
#
# The marker, MARK at the flash's root beside abboot's files, replaced whole by rename:
#   <boots in update mode>\n<offer JSON>\n<running fw>\n<config path>\n<state dir>\n<4 PWM duties>\n<DMX slots, raw>
import json
import os

MARK = "upmode"
TRIES = 3
_HOLD_MS = 25  # lighting.DMX_PERIOD_MS: receivers drop a universe they stop hearing from


def _put(head, slots):
    with open(MARK + ".tmp", "wb") as f:
        f.write(head)
        if slots is not None:
            f.write(slots)
    os.rename(MARK + ".tmp", MARK)  # littlefs and POSIX: atomic over the old file


def _rm():
    try:
        os.remove(MARK)
    except OSError:
        pass


async def take(lk, o, path, state_dir, out):
    """The app's part (its take(), called by link.py's intake as fetch.take would be): the marker
    saved, the link left (`downloading` out first), the reset. Nothing here can be taken: failed."""
    import board

    try:
        save(o, lk.fw, path, state_dir, out)
    except Exception as e:
        lk.failed(o, "update mode: %r" % e)
        return
    await lk.stop(3000)
    board.reset()


def save(o, fw, path, state_dir, out):
    """Offer ``o`` (kits/contract.py UpdateOffer) and scene.Outputs ``out``'s levels as last
    written (duties, DMX slots) in the marker; the caller resets. Allocates a few hundred bytes,
    nothing that grows with the universe (the frame goes to flash from where it is)."""
    if type(o) is not dict:  # the link may keep it as a tuple, in the contract's order
        o = dict(zip(("id", "release", "fw", "host", "port", "rollback"), o))
    d = out._last  # the duty last written per channel, -1: never written
    _put(("0\n%s\n%s\n%s\n%s\n%d %d %d %d\n" % (json.dumps(o), fw or "", path, state_dir, d[0], d[1], d[2], d[3])
          ).encode(), memoryview(out.dmx.frame)[1:] if out.dmx is not None else None)


def _hold(out, duties, slots):
    """The saved levels on the outputs, once; the DMX frame is then sent by _tick."""
    for ch in range(4):
        p = out.pwms[ch]
        d = duties[ch]
        if p is not None and d >= 0:
            if out._u16:
                p.duty_u16(d)
            else:
                p.duty(d)
    x = out.dmx
    if x is not None:
        n = min(len(slots), x.slots)
        x.frame[1:1 + n] = slots[:n]
        x.send()


async def _tick(out):
    """The DMX refresh and the watchdog; the heap as the app's HEAP line says it (live after a
    collection, the highest seen) every 2 s."""
    import asyncio
    import gc

    import board

    peak = 0
    n = 0
    while True:
        board.feed()
        out.send_dmx()
        a = gc.mem_alloc()
        if a > peak:
            peak = a
        n += 1
        if n % 80 == 0:
            gc.collect()
            print("HEAP", gc.mem_alloc(), peak)
        await asyncio.sleep_ms(_HOLD_MS)


def _uncount():
    """This boot out of the boot stage's fast-boot count: the marker's own count bounds the update
    mode (a power cut in it is not a boot loop of the app's; counted, a few would put it in safe mode)."""
    import sys

    import abboot

    abboot.boots(max(abboot.boots() - 1, 0))
    sys.modules.pop("abboot", None)


def run():
    """The update mode (the boot stage's, with the marker there)."""
    import asyncio
    import gc

    import board
    import link

    gc.threshold(4096)  # as the app: collect often and small

    try:
        with open(MARK, "rb") as f:
            p = f.read().split(b"\n", 6)
        tries = int(p[0]) + 1
        o = json.loads(p[1])
        fw, path, sd = p[2].decode() or None, p[3].decode(), p[4].decode()
        duties = [int(x) for x in p[5].split()]
        with open(path) as f:
            cfg = json.load(f)
    except Exception as e:  # a marker cut short or a config gone: nothing to resume, back to the app
        print("UPMODE bad marker", repr(e))
        _rm()
        board.reset()
        return
    import lighting_hw

    out = lighting_hw.outputs(cfg)  # the lights first, before anything touches the network
    _hold(out, duties, p[6])
    p[0] = str(tries).encode()  # this boot counted, before anything that may not end
    _put(b"\n".join(p[:6]) + b"\n", p[6])
    print("UPMODE", o["fw"], tries)
    _uncount()
    m = p[1]
    p = None
    board.configure(cfg)
    cause = board.reset_cause(sd)  # the app's reset left its mark there; ours goes there too

    async def back(lk):
        # failed or refused: the marker goes, the failure is said if the broker is there, then the app
        _rm()
        try:
            await asyncio.wait_for_ms(lk.mqtt.up.wait(), 5000)
        except asyncio.TimeoutError:
            pass  # the app says it again: the offer's id is in update.failed
        await lk.stop(3000)
        board.reset()

    class Link(link.Link):
        def failed(self, o, why):
            link.Link.failed(self, o, why)
            asyncio.create_task(back(self))

    def switched():  # fetch.take's reset, once the spare slot is switched to: the trial boots next
        _rm()
        board.reset()

    import tcp

    connect, user, password = tcp.connector(cfg["broker"], board.connect_tcp)
    lk = Link(cfg["kit"], cfg["device"], "lighting", connect, board.epoch_ms, sd + "/outbox", fw=fw,
              on_cmd=lambda cmd: ("rejected", "update mode: taking %s" % o["fw"]), user=user, password=password,
              dedup=False, outbox_buf=128, rx_buf=256, max_msg=cfg.get("max_config", 4096),
              raw_config=True,  # the retained timeline arrives here too: not parsed (no on_config), the app's
              keepalive=cfg.get("keepalive", 30), response_ms=cfg.get("response_ms", 3000),
              backoff_ms=cfg.get("backoff_ms", 500), backoff_max_ms=cfg.get("backoff_max_ms", 10000),
              reset_cause=cause, updates=(path, board.connect_tcp, switched, sd, 1024))
    cfg = None
    if tries > TRIES:  # as link.failed does, the offer's id and why on flash (said again by the app)
        why = "update mode: %d boots without an end" % TRIES
        print("UPDATE failed", why)
        with open(sd + "/update.failed", "w") as f:
            f.write("%s\n%s" % (o["id"], why))
        lk.update = {"state": "failed", "why": why, "fw": o["fw"]}
        asyncio.create_task(back(lk))
    else:
        lk._offer(m, False)  # the intake's checks, then fetch.take (the offer on the topic waits)
        if lk._fetching is None:  # not taken (failed here before): said so, back to the app
            asyncio.create_task(back(lk))
    lk.start()
    asyncio.run(_tick(out))

