# The lighting controller role: the board's outputs, lighting.Lighting and link.Link wired.
#
#   micropython main.py CONFIG.json        (unix port: the config path on the command line)
#   main.py on the ESP32                    (reads /lighting.json: board.config_path; `popkit device flash` writes it)
#
# Order at power-up: outputs, then the timeline kept on flash shown at once (what should
# be on now, no fade; with none, the device file's fallback look at its floor), and only then
# the network: lights never wait for Wi-Fi or the broker.
# One asyncio loop: the ticker (fader, timeline, DMX refresh every ~10 ms) never awaits the
# network; the link's tasks run beside it. `config` -> Lighting.on_config (the version
# applied goes into `state`), `cmd` -> Lighting.on_cmd -> ack, `device` telemetry every
# telemetry_s. Config keys (JSON object):
#   kit, device, broker ({host, port, tls, ca, user, password} as provisioned, or [host, port]), dmx_slots (24), state_dir (board.flash_dir()), telemetry_s (30),
#   fallback ({levels, floor}: levels objects, provisioned from the kit manifest; shown with no timeline),
#   max_config (4096), gamma (2.2), fw; and the board's own (unix: pwm/dmx [host, port];
#   esp32: outputs {pwm: {pins, freq}, dmx: {uart, tx, de}}, provisioned from the kit manifest).
# Prints, one line each (the UART on a board; the tests read them on the unix port):
#   SCENE <id> <ms from start to the outputs written> <config version> | FALLBACK bad <detail> | CLOCK <state> <reset cause>
#   CONFIG <version> <ok 0/1> <detail> | CMD <id> <status> | HEAP <live> <peak> <conns>
import gc
import sys
from time import ticks_ms, ticks_diff

t_start = ticks_ms()

import asyncio
import json

import board
import clock
import lighting_hw
from lighting import Lighting

TICK_MS = 10
FW = "lighting-0.4.1"


def config_path():
    """The config named on the command line (the demo, the tests), else the flashed tree's."""
    return sys.argv[1] if len(sys.argv) > 1 else board.config_path("lighting")


def load_config():
    """The device's config; the board takes its part (Wi-Fi on the ESP32) before anything uses it."""
    with open(config_path()) as f:
        cfg = json.load(f)
    board.configure(cfg)
    return cfg


def now_s():
    """Unix seconds, None while the clock is unset (clock.py): the timeline then shows its default
    scene with the safety floor (docs/lighting-timeline.md, "No clock") until the kit's time arrives."""
    return None if clock.state(board) == clock.UNSET else board.epoch_ms() // 1000


class App:
    def __init__(self, cfg):
        self.cfg = cfg
        self.peak = 0
        self.ticked = ticks_ms()  # the outputs' last refresh
        slots = cfg.get("dmx_slots", 24)
        self.state_dir = cfg.get("state_dir") or board.flash_dir()
        self.cause = board.reset_cause(self.state_dir)  # read first: the watchdog and reset() leave theirs there
        self.light = Lighting(lighting_hw.outputs(cfg), slots, self.state_dir, cfg.get("max_config", 4096))
        # what should be on now, before anything touches the network: the timeline on flash, else
        # the device file's fallback look (taken out of cfg: once shown, nothing of it stays in RAM)
        bad = self.light.power_up(now_s(), ticks_ms(), cfg.pop("fallback", None))
        print("SCENE", self.light.scene, ticks_diff(ticks_ms(), t_start), self.light.version)
        if bad:
            print("FALLBACK bad", bad)
        print("CLOCK", clock.state(board), self.cause)
        self.link = None

    def start_link(self):
        import link  # after power-up: the link's imports and flash outbox come second
        import tcp

        cfg = self.cfg
        upd = cfg.get("update_key")  # provisioned with an update key only
        if upd:  # link.py's offer intake calls fetch.take(link, offer): take() below, no download here
            sys.modules["fetch"] = self
        connect, user, password = tcp.connector(cfg["broker"], board.connect_tcp)
        self.link = link.Link(cfg["kit"], cfg["device"], "lighting", connect,
                              board.epoch_ms, self.state_dir + "/outbox", fw=cfg.get("fw", FW),
                              config_version=self.light.version, on_cmd=self.on_cmd, on_config=self.on_config,
                              raw_config=True,
                              max_msg=cfg.get("max_config", 4096), keepalive=cfg.get("keepalive", 30),
                              response_ms=cfg.get("response_ms", 3000), backoff_ms=cfg.get("backoff_ms", 500),
                              backoff_max_ms=cfg.get("backoff_max_ms", 10000), user=user, password=password,
                              time_sync=board, reset_cause=self.cause,
                              dedup=False, outbox_buf=256, rx_buf=256,  # the heap is tight: Lighting's
                              updates=(config_path(), board.connect_tcp, board.reset, self.state_dir, 0)
                              if upd else None)
        # CommandGate drops redelivered ids (on flash); this role's outbox records (telemetry, acks) are
        # small, and so is what it receives but a timeline (receipts, time, scene commands): one larger
        # than rx_buf is read into a buffer of its own size, as a timeline always is
        self.link.start()
        # everything the config says now lives in the objects made from it: the dict (the broker's
        # CA and login, the Wi-Fi, the outputs' pins) would only hold heap for the rest of the run
        self.cfg = None

    def on_config(self, raw):
        # the payload's bytes as received (raw_config): a timeline is parsed once, by Lighting,
        # which keeps these very bytes on flash
        light = self.light
        ok, detail = light.on_config(raw)
        print("CONFIG", light.offered, 1 if ok else 0, detail)
        if not ok:
            self.link.emit("event", "fault", {"data": {"what": "config", "version": light.offered,
                                                       "detail": str(detail)[:200]}})
            return None
        return light.version

    def on_cmd(self, cmd):
        if cmd.get("action") == "reboot":  # the board's, not the lights': past their gate
            return self.link.reboot(cmd, board.reset)
        if cmd.get("action") == "hang" and board.NAME == "unix":  # debug, the unix board only: a bug's stand-in
            print("HANG")
            while True:  # the loop stops dead: the watchdog resets the board
                pass
        r = self.light.on_cmd(json.dumps(cmd), False, board.epoch_ms(), ticks_ms())
        if r is None:  # ran before (this boot or an earlier one): answered the first time
            print("CMD", cmd.get("id"), "duplicate")
            return None
        print("CMD", r[0], r[1])
        return r[1], r[2]

    async def take(self, lk, o):
        # An offer the link took: no room to download beside the lights. The update mode does it
        # (device/lib/upmode.py) after a reset, the outputs held at the levels saved now.
        import upmode

        await upmode.take(lk, o, config_path(), self.state_dir, self.light.outputs)

    async def ticker(self):
        light = self.light
        while True:
            board.feed()  # the watchdog (started by the first feed): a loop that stops passing here resets the board
            light.tick(now_s(), ticks_ms())
            self.ticked = ticks_ms()
            a = gc.mem_alloc()
            if a > self.peak:
                self.peak = a
            await asyncio.sleep_ms(TICK_MS)

    async def telemetry(self, every):
        lk = self.link
        while True:
            await asyncio.sleep_ms(every)
            gc.collect()
            live = gc.mem_alloc()
            print("HEAP", live, self.peak, lk.mqtt.conns)
            fields = {"uptime_s": ticks_diff(ticks_ms(), t_start) // 1000, "heap_free": gc.mem_free(),
                      "outbox": lk.outbox.count, "dropped": lk.outbox.dropped, "clock_refused": lk.clock_refused}
            if self.light.scene is not None:
                fields["scene"] = self.light.scene
            lk.emit("telemetry", "device", fields)

    def healthy(self):
        """A trial's health: the broker reached, and the ticker refreshing the outputs."""
        return self.link.mqtt.up.is_set() and ticks_diff(ticks_ms(), self.ticked) < 1000

    async def settle(self, trial_s):
        # The A/B boot stage's (device/boot/abboot.py): this boot lasted, and a trial commits once
        # healthy for trial_s. Imported for that window only; a ROMFS or frozen run has none.
        try:
            import abboot
        except ImportError:
            return
        fw = self.link.fw
        if abboot.trial():  # on trial: the fleet sees it proving itself, then its outcome
            self.link.update = {"state": "trial", "fw": fw}
        r = await abboot.settle(self.healthy, trial_s)
        sys.modules.pop("abboot", None)  # (an update's staging may have dropped it already)
        if r:
            print("UPDATE", r[0], r[1])
            # committed: this release. Rolled back: the failed release is not known here; the link
            # has told it already (with its fw) if its offer is still retained, and that stands.
            if r[0] == "committed":
                self.link.update = {"state": r[0], "why": r[1], "fw": fw}
            elif not self.link.update:
                self.link.update = {"state": r[0], "why": r[1]}

    async def run(self):
        asyncio.create_task(self.ticker())  # the lights first
        cfg = self.cfg  # (start_link lets it go)
        every = cfg.get("telemetry_s", 30) * 1000
        trial_s = cfg.get("trial_s", 60)  # the healthy window a new release's trial must hold
        cfg = None
        self.start_link()
        asyncio.create_task(self.settle(trial_s))
        await self.telemetry(every)


def main():
    gc.threshold(4096)  # collect often and small: the heap is shared with MQTT buffers
    app = App(load_config())
    try:
        asyncio.run(app.run())
    except KeyboardInterrupt:  # the unix board's watchdog interrupts a hung loop: reset as a board would
        if getattr(board, "bitten", False):
            board.reset()
        raise


main()
