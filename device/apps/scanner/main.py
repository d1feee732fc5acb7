# The scanner role: a GM65/GM861 QR module at the door, a verdict for each scan at once.
#
#   unix:  micropython -m main CONFIG.json     (board layer: device/boards/unix)
#   ESP32: main.py, config from /scanner.json (board.config_path; `popkit device flash` writes it)
#
# Per scanned line: verdict.Gate.decide() (an admission is on flash before it returns),
# the check-in into the outbox (link.emit: an append on flash, never the network; sent
# when the link is up, kept until the fleet's receipt) with the scan time as its ts, then
# the lamp and the buzzer. A power cut right after the lamp loses neither the admission
# nor its check-in.
#
# Double entry: this scanner's own log refuses a ticket it admitted, at once. A ticket that
# passes every check here is claimed at the kit's hub (the agent, agent/hub.py) before the
# lamp, waiting at most hub_ms: the hub refuses it when another door admitted it first
# (already_admitted, with first_device). No answer (no link, no hub): admitted here and the
# check-in says hub_checked false, so the fleet's attendance flags a double entry.
#
# Config (JSON):
#   {"kit": "demo", "device": "demo-scanner-1",
#    "broker": {"host": "192.168.4.1", "port": 8883,    # as `popkit kit provision` writes it:
#               "tls": true, "ca": PEM, "user", "password"},  # plus optional keepalive, resend_ms
#    "uart": ["127.0.0.1", 9601],                      # unix: the simulator; ESP32: "hw" pin overrides
#    "flash": "flash",                                 # default board.flash_dir()
#    "telemetry_s": 30,
#    "hub_ms": 250,                                    # the longest wait for the hub's answer
#    "mode": "door", "till": "main",                   # or till mode: scans go to that till (lib/till.py)
#    "gate": {"leeway": 0, "events": [{"event", "key", "expires", "capacity", "revoked"}]}}
# The retained `config` channel carries event keys and revocations from the fleet:
#   {"version": N, "data": {"keys": [{"event", "key", "not_before", "expires"}],
#                           "revoked": {"EVENT": [ids]}}}      (or "revoked": [ids], every event)
# and "mode", "till", which override the file's.
# Its keys add to the file's events and replace them by event; a key whose window is over is
# dropped with its redemption log (only on a trusted clock). The kit's own list comes on
# popkit/v1/<kit>/revocations (retained at the kit broker, published by the kit's agent:
# revocations made at the kit with no uplink, and the keys the agent holds):
#   {"ts": ms, "revoked": {"EVENT": [ids]}, "keys": [...]}
# A ticket is refused when it is in the file's list, the fleet's or the kit's: the union, so no
# source can take back what another revoked (docs/tickets.md, "Revocations at the kit"). Both
# are kept on flash (config.json, kit.json) so a reboot without the network still has them.
#
# Output lines (for tests and the serial console):
#   BOOT <boot> <started ms> <unreceipted> <clock> <reset cause> | CODE <heap bytes after imports> | READY | SCAN <verdict> <ticket|-> <seq> <scan ms>
#   CONFIG <version> <revoked count> | KIT <revoked count> | KEYS <keys changed> | KEY expired <event> | OUTBOX <count> | CMD <id> <action> | MEM <live> <peak> <free>
import asyncio
import gc
import json
import os
import sys
from time import ticks_add, ticks_diff, ticks_ms

from micropython import const

import atomic
import board
import clock
import link
import tcp
import scanline
import ticket
import verdict
from redemptions import Revocations
from scanner_hw import ScannerHW

FW = "scanner-0.3.1"
gc.collect()
_CODE = gc.mem_alloc()  # the heap the modules took (0 on the ESP32, where they are frozen into flash)
_POLL_MS = const(5)  # UART poll while idle: 9600 baud fills ~5 bytes in that time
_QUIET_MS = const(300)  # a line unfinished this long is dropped (the module went quiet mid-code)
_LAMP_MS = const(1500)  # how long the verdict lamp stays lit
_GREEN_HZ = const(2700)
_RED_HZ = const(600)

# verdict -> (lamp, beeps, tone Hz, beep ms): one short high beep in, a long low one out,
# two short low ones for "scan again".
_SIGNALS = {
    ticket.ADMITTED: ("green", 1, _GREEN_HZ, 120),
    ticket.MALFORMED: ("red", 2, _RED_HZ, 120),
}
_REFUSED = ("red", 1, _RED_HZ, 500)


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass


def _trusted_s():
    """Unix seconds when the clock can be believed, else None: an unset clock (an RTC counting from
    2000 with no time from the kit yet) must not expire keys or delete redemption logs."""
    return None if clock.state(board) == clock.UNSET else board.epoch_ms() // 1000


def _config_path():
    """The config named on the command line (the demo, the tests), else the flashed tree's."""
    if len(sys.argv) > 1:
        return sys.argv[1]
    return board.config_path("scanner")


class Scanner:
    def __init__(self, cfg):
        # nothing keeps cfg: what it says goes into the objects made here, and the dict (the broker's
        # CA and login, the Wi-Fi, the keys' hex) is garbage once main() lets go of it
        self._every = cfg.get("telemetry_s", 30) * 1000
        flash = cfg.get("flash") or board.flash_dir()
        _mkdir(flash)
        _mkdir(flash + "/gate")
        self._saved = flash + "/config.json"
        cause = board.reset_cause(flash)  # read first: the watchdog and reset() leave theirs there
        self.gate = verdict.Gate(cfg["gate"], flash + "/gate")
        self._base = {}  # event -> revoked ids from the config file
        for spec in cfg["gate"].get("events", ()):
            self._base[spec["event"]] = list(spec.get("revoked", ()))
        self.hw = ScannerHW(**({"uart": cfg["uart"]} if "uart" in cfg else cfg.get("hw", {})))
        self.lines = scanline.LineAssembler()
        self.scans = 0
        self.t0 = ticks_ms()
        self._lamp_off = None  # ticks when the lamp goes dark
        self._beeps = 0  # beeps still to sound
        self._beep = None  # (freq, ms) of the current pattern
        self._beep_at = 0
        self._beep_on = False
        br = cfg["broker"]
        # till mode (device/lib/till.py, imported only for it): the fleet's config (data.mode, data.till)
        # over the flashed file's ("mode": "door" | "till", "till": station)
        self.till = None
        self._own = (cfg.get("till") or "main") if cfg.get("mode") == "till" else None
        if self._own:
            import till
            self.till = till.switch(self, self._own)
        version = None
        saved = atomic.read(self._saved)
        if saved:  # the last keys and revocations from the fleet, applied before the link is up
            try:
                got = json.loads(saved)
                self._on_config(got, False)
                version = got["version"]
            except Exception as e:
                print("CONFIG bad saved config", repr(e))
        saved = atomic.read(self._saved[:-11] + "kit.json")  # beside config.json
        if saved:  # the kit's own list, as last heard
            try:
                self._on_kit(saved, True, False)
            except Exception as e:
                print("KIT bad saved list", repr(e))
        connect, user, password = tcp.connector(br, board.connect_tcp)
        self.link = link.Link(cfg["kit"], cfg["device"], "scanner", connect,
                              board.epoch_ms, flash + "/outbox", fw=FW, config_version=version,
                              on_cmd=self._on_cmd, on_config=self._on_config,
                              resend_ms=br.get("resend_ms", 15000), keepalive=br.get("keepalive", 30),
                              response_ms=br.get("response_ms", 5000), backoff_ms=br.get("backoff_ms", 500),
                              # a config or kit list with keys and revocations outgrows pkmqtt's 1 KB default;
                              # one over this is dropped (counted in oversize), so the fleet keeps under it
                              max_msg=cfg.get("max_config", 4096),
                              backoff_max_ms=br.get("backoff_max_ms", 10000), hub=True, user=user, password=password,
                              kit_subs=(("revocations", 1, self._on_kit),), time_sync=board, reset_cause=cause,
                              # its largest record, a check-in with every field at its longest, is 335 B
                              # (an ordinary one ~220); a longer one is still written, in four writes
                              outbox_buf=384,
                              # field updates offered by the kit's agent, downloaded while the door scans:
                              # a door provisioned with an update_key only (none: it could verify nothing),
                              # through the outbox's buffer (-1: lent, no second one resident)
                              updates=(_config_path(), board.connect_tcp, board.reset, flash, -1)
                              if cfg.get("update_key") else None)
        self._hub_ms = cfg.get("hub_ms", 250)
        self._trial_s = cfg.get("trial_s", 60)  # the healthy window a new release's trial must hold
        self._tick = self.t0  # the UART loop's last pass

    # ------------------------------------------------------------ one scan

    async def scan(self, line):
        if self.till:  # a product code for the kit's till, never a check-in
            return await self.till.scan(line)
        scan_ms = board.epoch_ms()
        gate = self.gate
        # No trusted time (docs/tickets.md): signature and event decide, not the ticket's window,
        # and the check-in says so. Revocations and double entry hold as ever.
        # A kit clock (the Pi on its last known time) may be days behind, never ahead: it judges
        # expiry, not "not yet valid", or a kit unpacked offline would refuse tonight's guests.
        st = clock.state(board)
        trusted = st != clock.UNSET
        v, f = gate.decide(line, scan_ms // 1000, False, trusted, st == "kit")
        self.scans += 1
        data = {"verdict": v}
        if not trusted:
            data["clock"] = clock.UNSET
        if v == ticket.ADMITTED:
            ans = await self.link.ask_hub(f["event"], f["ticket"], scan_ms, self._hub_ms)
            if ans is None:
                data["hub_checked"] = False
            elif ans.get("reason") == "revoked":  # the kit's hub has a revocation this door lacks yet
                v = data["verdict"] = ticket.REVOKED
            elif not ans["admit"]:
                v = data["verdict"] = ticket.ALREADY_ADMITTED
                data["first_device"] = ans["first"]["device"]
            if v == ticket.ADMITTED:
                gate.admit()  # on flash before the lamp
            else:
                gate.refuse()
        if f is None and v == ticket.BAD_SIGNATURE:
            fields = ticket.parse(line)  # what the ticket claims, unverified (as for wrong_event)
            f = ticket.as_dict(fields) if fields is not None else None
        if f is not None:
            data["event"] = f["event"]
            data["ticket"] = f["ticket"]
            data["tier"] = f["tier"]
        try:  # into the outbox on flash (no network here): a power cut after the lamp loses nothing
            seq = self.link.emit("event", "checkin", {"data": data}, scan_ms)
        except Exception as e:  # the flash is full or failing: the door still works
            print("EMIT failed", repr(e))
            seq = 0
        print("SCAN", v, data.get("ticket", "-"), seq, scan_ms)
        self.signal(v)

    def signal(self, v):
        lamp, beeps, freq, ms = _SIGNALS.get(v, _REFUSED)
        hw = self.hw
        hw.led(lamp)
        hw.buzz(freq, ms)
        now = ticks_ms()
        self._lamp_off = now
        self._beep = (freq, ms)
        self._beeps = beeps - 1
        self._beep_on = True
        self._beep_at = now

    def _timers(self, now):
        if self._beep is not None and ticks_diff(now, self._beep_at) >= self._beep[1]:
            self._beep_at = now
            if self._beep_on:
                self.hw.buzz(0, 0)
                self._beep_on = False
                if not self._beeps:
                    self._beep = None
            else:
                self._beeps -= 1
                self._beep_on = True
                self.hw.buzz(self._beep[0], self._beep[1])
        if self._lamp_off is not None and ticks_diff(now, self._lamp_off) >= _LAMP_MS:
            self._lamp_off = None
            self.hw.led(None)

    async def uart_loop(self):
        buf = bytearray(64)
        hw = self.hw
        asm = self.lines
        last_rx = ticks_ms()
        while True:
            board.feed()  # the watchdog (started by the first feed): a loop that stops passing here resets the board
            n = hw.readinto(buf)
            now = ticks_ms()
            if n:
                last_rx = now
                for line in asm.feed(buf, n):
                    await self.scan(line)
            else:
                self._tick = now
                if ticks_diff(now, last_rx) >= _QUIET_MS:
                    asm.drop_partial()
                    last_rx = now
                self._timers(now)
                await asyncio.sleep_ms(_POLL_MS)

    # ------------------------------------------------------------ fleet

    def _on_config(self, cfg, save=True):
        """Keys and revocations from the fleet's config, on top of the config file's; kept on flash.
        (Few methods and attributes here: on a 64 KB heap each one costs RAM even frozen.)"""
        if save:
            try:
                atomic.write(self._saved, json.dumps(cfg).encode())
            except OSError as e:
                print("CONFIG not saved", repr(e))
        data = cfg.get("data") or {}
        print("CONFIG", cfg["version"], self._take(data, None))
        m = data.get("mode")
        st = self._own if m is None else (data.get("till") or "main") if m == "till" else None
        if st or self.till:
            import till
            self.till = till.switch(self, st)
        return True

    def _on_kit(self, payload, retained, save=True):
        """The kit's own list (its agent's): keys it holds, revocations made at the kit; kept on flash."""
        if not payload:
            return  # the retained list was cleared at the kit broker: keep what we had
        if save:
            try:
                atomic.write(self._saved[:-11] + "kit.json", payload)
            except OSError as e:
                print("KIT not saved", repr(e))
        print("KIT", self._take(None, json.loads(payload)))

    def _take(self, fleet, kit):
        """Event keys from the fleet's config data or the kit's list (a key whose window is over is
        dropped), then each event's refused tickets: the union of the file's, the fleet's and the
        kit's lists. The list not given is read back from flash, where it is kept anyway, rather
        than held in RAM. Returns how many tickets are refused in all."""
        gate = self.gate
        now = _trusted_s()
        keys = (fleet or kit or {}).get("keys")
        if keys:
            print("KEYS", gate.load_keys(keys, now))
        if now is not None:
            for name in gate.drop_expired(now):
                print("KEY expired", name)
        if fleet is None:
            saved = atomic.read(self._saved)
            fleet = (json.loads(saved).get("data") or {}) if saved else {}
        if kit is None:
            saved = atomic.read(self._saved[:-11] + "kit.json")
            kit = json.loads(saved) if saved else {}
        saved = None
        frev = fleet.get("revoked") or {}
        if not isinstance(frev, dict):
            frev = {"*": frev}  # a flat list: revoked at every event
        krev = kit.get("revoked") or {}
        every = frev.get("*", ())
        total = 0
        for name, ev in gate._events.items():
            name = name.decode()
            ids = self._base.get(name, []) + list(every) + list(frev.get(name, ())) + list(krev.get(name, ()))
            ev.revoked = Revocations(ids)  # packed and sorted: duplicates cost 16 bytes, no more
            total += len(ev.revoked)
        return total

    def _on_cmd(self, cmd):
        print("CMD", cmd["id"], cmd["action"])
        if cmd["action"] == "identify":
            self.signal(ticket.MALFORMED)  # red and two beeps: "this one"
            return "ok"
        if cmd["action"] == "reboot":
            return self.link.reboot(cmd, board.reset)
        if cmd["action"] == "hang" and board.NAME == "unix":  # debug, the unix board only: a bug's stand-in
            print("HANG")
            while True:  # the loop stops dead: the watchdog resets the board
                pass
        return ("rejected", "unknown action")

    async def monitor_loop(self):
        """One task (each costs ~0.5 KB of heap with its frame) for what runs on a clock: every 200 ms
        the outbox count when it changed, every 2 s the live heap after a collection and its
        high-water mark, every telemetry_s the device's telemetry."""
        every = self._every
        due = ticks_add(ticks_ms(), every)
        shown = -1
        peak = 0
        i = 0
        while True:
            lk = self.link
            n = lk.outbox.count
            if n != shown:
                shown = n
                print("OUTBOX", n)
            i += 1
            if i % 10 == 1:
                gc.collect()
                a = gc.mem_alloc()
                peak = max(peak, a)
                print("MEM", a, peak, gc.mem_free())
            if ticks_diff(ticks_ms(), due) >= 0:
                due = ticks_add(due, every)
                now = _trusted_s()  # a key whose window ended while up leaves now, with its log
                if now is not None:
                    for name in self.gate.drop_expired(now):
                        print("KEY expired", name)
                gc.collect()
                try:
                    lk.emit("telemetry", "device", {"uptime_s": ticks_diff(ticks_ms(), self.t0) // 1000,
                                                    "heap_free": gc.mem_free(), "outbox": lk.outbox.count,
                                                    "dropped": lk.outbox.dropped, "scans": self.scans,
                                                    "clock_refused": lk.clock_refused})
                except Exception as e:
                    print("TELEMETRY failed", repr(e))
            await asyncio.sleep_ms(200)

    def _healthy(self):
        """A trial's health: the broker reached, the UART loop turning, keys to check tickets with (a
        scanner at the till checks no tickets: it may have none)."""
        return (self.link.mqtt.up.is_set() and ticks_diff(ticks_ms(), self._tick) < 1000
                and (bool(self.gate._events) or self.till is not None))

    async def settle(self):
        # The A/B boot stage's (device/boot/abboot.py): this boot lasted, and a trial commits once
        # healthy for trial_s. Imported for that window only; a ROMFS or frozen run has none.
        try:
            import abboot
        except ImportError:
            return
        if abboot.trial():  # on trial: the fleet sees it proving itself, then its outcome
            self.link.update = {"state": "trial", "fw": FW}
        r = await abboot.settle(self._healthy, self._trial_s)
        sys.modules.pop("abboot", None)  # (an update's staging may have dropped it already)
        if r:
            print("UPDATE", r[0], r[1])
            # committed: this release. Rolled back: the failed release is not known here; the link
            # has told it already (with its fw) if its offer is still retained, and that stands.
            if r[0] == "committed":
                self.link.update = {"state": r[0], "why": r[1], "fw": FW}
            elif not self.link.update:
                self.link.update = {"state": r[0], "why": r[1]}

    async def run(self):
        lk = self.link
        print("BOOT", lk.boot.decode(), lk.started, lk.outbox.count, clock.state(board), lk.reset_cause)
        print("CODE", _CODE)
        lk.start()
        asyncio.create_task(self.monitor_loop())
        asyncio.create_task(self.settle())
        print("READY")
        await self.uart_loop()


def main():
    with open(_config_path()) as f:
        cfg = json.load(f)
    board.configure(cfg)  # the board's part of the config (Wi-Fi on the ESP32), before anything uses it
    scanner = Scanner(cfg)
    cfg = None  # (see Scanner.__init__)
    try:
        asyncio.run(scanner.run())
    except KeyboardInterrupt:  # the unix board's watchdog interrupts a hung loop: reset as a board would
        if getattr(board, "bitten", False):
            board.reset()
        raise


main()
