# link.py: the device's link to the fleet, as agent/link.py is the Pi's.
#
# * Identity per boot: `boot` is random hex, new at every boot; `seq` counts
#   from 1 within the boot across telemetry, events and acks; `ts` is epoch ms
#   from the board's clock, the time the thing happened.
# * Topic tree popkit/v1/<kit>/<device>/<channel> (docs/protocol.md).
# * Birth and death: a retained `state` (seq 0, ts = boot start) on every
#   connect; the same with online false, reason "lwt", is the Will; "shutdown"
#   on a graceful stop.
# * Nothing is lost: emit() writes to the FlashLog first, then the sender
#   publishes. An entry leaves the log only when the fleet's receipt names it.
#   After every (re)connect everything unreceipted is published again, and so
#   is everything from the oldest entry on when its receipt is overdue. While
#   no receipt comes, each such round waits twice as long as the one before
#   (up to _RESEND_MAX_MS): a kit's uplink may be down for an hour, and its
#   broker's bridge queue must not be refilled with the whole outbox every
#   resend_ms. Any receipt, or a new session, brings it back to resend_ms.
#   Entries from earlier boots go out with their original boot, seq and ts.
# * Gap requests: a receipt's "missing" names seqs the fleet never got though
#   later ones came (a queue overflowed on the way). The sender looks them up
#   in the outbox and publishes them again at once, before anything else.
# * The kit's hub (the agent, agent/hub.py): ask_hub() puts a scanner's claim on a
#   ticket to it (QoS 0, a question asked now) and waits at most timeout_ms for
#   the answer on `claimed`. No answer means "decide alone"; after a miss the
#   hub is not asked again for _HUB_QUIET_MS, so a kit without a hub costs a
#   door one wait, not one per guest.
# * Kit-level topics (kit_subs): popkit/v1/<kit>/<name>, beside the device trees, from the kit's
#   agent (e.g. the kit's revocations); subscribed on every session, handed to the app as bytes.
# * The kit's clock (time_sync: the board, whose clock it sets): popkit/v1/<kit>/time from the
#   kit's agent, QoS 0, handed to clock.offer() (which time to take: clock.py); a refused one is
#   counted (clock_refused). `state` says the clock's state ("clock") and why this boot happened
#   ("reset_cause"), and is published again when the clock's state changes. The time topic is
#   subscribed before the birth goes out: the agent answers a birth with the time at once.
# * Field updates (updates=...): the device's own `update` topic, retained at the kit broker by the
#   kit's agent (kits/contract.py UpdateOffer). An offer of another fw than the running one, whose id
#   has not failed here before (the id and reason of the last failure are kept on flash, so a refused
#   bundle is not fetched again at every boot, only reported again; the boot stage writes there the
#   offer of a trial it rolled back, before the app runs), starts the download (fetch.py,
#   imported for it and dropped after): `state` says downloading, then the board resets into its
#   trial, or says failed and why, the app untouched. One offered while a trial is under way waits
#   for its outcome (the spare slot then holds the last good app).
# * Commands: never executed when retained or past `expires` (answered
#   "expired"), nor while the clock is unset (answered "rejected": expires cannot be checked);
#   a redelivered id is not executed twice. Config: handed to the
#   app when its version is new; the version applied is reported in `state`.
#
# The transport is pkmqtt (QoS 1, persistent session); the app sees emit(),
# ack(), callbacks and counters, nothing of MQTT.

import asyncio
import json
import os
from binascii import hexlify
from time import ticks_ms, ticks_diff

from micropython import const

import clock
from flashlog import FlashLog, CHANNELS
from log import log
from pkmqtt import Client, Flag, MQTTError

_BATCH = const(4)  # records read from flash per step: the most payloads the sender holds
_CHECK_MS = const(1000)  # how often the sender looks for an overdue receipt
_MAX_PAYLOAD = const(4096)  # docs/protocol.md: device payloads are at most 4 KiB
_RECENT_CMDS = const(8)
_HUB_QUIET_MS = const(5000)
_RESEND_MAX_MS = const(300000)  # the longest wait for an overdue receipt (5 min)
_MAX_WANTED = const(8)  # ranges of one gap request acted on (the fleet asks again for the rest)
_ERROR = const(1)
_WARN = const(2)
_INFO = const(3)


class Link:
    # The A/B news for `state` (kits/contract.py UpdateReport: {"state": "trial"|"committed"|
    # "rolled_back"|"safe_mode"|"failed", "why": ...}), set by the app or safe mode; setting it
    # publishes the state again. A class attribute until set: no heap for a device with nothing to say.
    _update = None  # type: dict | None
    # Field updates, class attributes until a device takes them (no heap otherwise):
    # (device, config path, connect_tcp, reset, flash dir, download buffer), the offer id
    # being fetched, an offer (bytes) waiting for a trial's outcome.
    _upd = None
    _fetching = None
    _later = None

    @property
    def update(self):
        return self._update

    @update.setter
    def update(self, u):
        self._update = u
        self._restate = True
        self._kick.set()
        if self._later is not None and u and u["state"] in ("committed", "rolled_back"):
            m, self._later = self._later, None  # the trial is over: the offer that waited for it
            self._offer(m, False)

    def __init__(self, kit, device, role, connect, clock, flash_dir, fw=None, config_version=None,
                 on_cmd=None, on_config=None, raw_config=False, resend_ms=15000, cap=2000, seg_records=32,
                 hub=False, kit_subs=(), time_sync=None, reset_cause=None, dedup=True, outbox_buf=512,
                 updates=None, max_inflight=4, rx_buf=256, **mqtt):
        """connect: the board's socket factory (see pkmqtt); clock: epoch ms; flash_dir: the outbox.
        on_cmd(cmd dict) -> "ok" | (status, detail) | None (the app calls ack() itself later).
        on_config(config dict) -> true when applied (its version is then reported in state).
        raw_config: on_config gets the payload's bytes instead, and returns the version it applied
        (None: not applied). For a config that may be large (a lighting timeline): parsed here too,
        it would be in the heap twice while the app parses it.
        hub: this device asks the kit's hub (ask_hub).
        kit_subs: ((name, qos, handler(payload bytes, retained)), ...) for kit-level topics.
        time_sync: the board (epoch_ms(), set_epoch_ms(), clock_source), whose clock the kit's time
        messages set (clock.py); reset_cause: for `state`.
        dedup=False: the app drops redelivered command ids itself (the lighting controller's
        CommandGate, on flash): the link keeps no list of its own. outbox_buf: the outbox's read
        buffer, the largest record read without an allocation (a controller's are small).
        updates: (config path, connect_tcp(host, port), reset(), flash dir, buffer size): take field
        updates offered on this device's `update` topic (the config is read again for its
        update_key). The download's buffer is taken now, at boot: after hours of running, a heap
        near its budget may hold no free block that big (it carries a response head, at most its size).
        A size of -1: no buffer of its own, the outbox's read buffer is lent to the download (fetch.py;
        the outbox reads and writes without it meanwhile), one buffer resident, not two; 0: one is
        allocated when a download starts.
        Other keyword arguments go to pkmqtt.Client (keepalive, response_ms, max_msg, ...)."""
        self.role = role
        self.fw = fw
        self.config_version = config_version
        self._clock = clock
        self._on_cmd = on_cmd
        self._on_config = on_config
        self._raw_config = raw_config
        self._resend_ms = resend_ms
        self.overdue_ms = resend_ms  # how late the oldest entry's receipt may be: doubles per unanswered round
        self.boot = hexlify(os.urandom(4))  # 8 hex digits, as bytes (.decode() in payloads)
        self.started = clock()  # state.ts of this boot's births and of its Will
        self.seq = 0
        self.sent = 0  # publishes from the outbox, resends included
        self.receipts = 0
        self.rounds = 0  # times everything unreceipted was sent (again): reconnects, overdue receipts
        self.asked = 0  # entries sent again because a gap request named them
        self.bad = 0  # malformed incoming messages ignored

        # Topics are made from this prefix when used, not kept (~0.8 KB): a publish's lives while it
        # is in flight; the state topic stays (the Will's, and till.py takes the prefix from it).
        self._pre = ("popkit/v1/%s/%s/" % (kit, device)).encode()
        self._t_state = self._pre + b"state"
        self._time = time_sync
        self.reset_cause = reset_cause
        self.clock_refused = 0  # kit time messages refused since boot (telemetry)
        kp = self._pre[:self._pre.find(b"/", 10) + 1]  # popkit/v1/<kit>/ (no second long format string)
        self._kit_subs = tuple([(kp + n.encode(), q, h) for n, q, h in kit_subs])
        self._claim_id = 0 if hub else None  # None: a controller, which never asks
        self._answer = None  # the hub's answer to the claim _claim_id (ask_hub looks for it)
        self._hub_miss = None  # ticks of the last unanswered claim
        if updates is not None:
            n = updates[4]
            self._upd = (device, updates[0], updates[1], updates[2], updates[3], bytearray(n) if n > 0 else n)

        self.outbox = FlashLog(flash_dir, cap=cap, seg_records=seg_records, buf_size=outbox_buf)
        mqtt.setdefault("clean", False)  # the broker keeps cmds and receipts for us while we are away
        # max_inflight: a scanner emits a few messages a second, 4 cover a slow link (a parameter: as a
        # string key it would be a heap object). rx_buf: receipts, commands, time and claims fit 256 B;
        # a config or kit list over it is read into a buffer of its own size (pkmqtt), as it was.
        self.mqtt = Client(connect, "%s-%s" % (kit, device), will=(self._t_state, self._state(False, "lwt"), 1, True),
                           on_msg=self._on_msg, max_inflight=max_inflight, rx_buf=rx_buf, **mqtt)
        self._kick = Flag()
        self.mqtt.on_tick = self._kick.set  # the sender looks for overdue receipts at every keepalive tick
        self._restate = False
        self._wanted = None  # (boot bytes, [[first, last], ...]) of the last gap request, until sent
        self._recent = [None] * _RECENT_CMDS if dedup else None  # oldest first
        self._task = None
        # The sender's state is its own locals (_send_loop): each attribute here is a slot of the
        # instance dict, which steps up from 37 to 47 entries.

    # ------------------------------------------------------------ public

    def start(self):
        self.mqtt.start()
        self._task = asyncio.create_task(self._send_loop())
        return self

    def emit(self, channel, kind, fields, ts=None):
        """Write one telemetry/event/ack message to the outbox (on flash) and queue it; returns its
        seq. `kind` may be None (acks have none); `fields` are the payload's other top-level fields."""
        if channel not in CHANNELS[1:]:
            raise ValueError(channel)
        self.seq += 1
        head = '{"boot":"%s","seq":%d,"ts":%d' % (self.boot.decode(), self.seq, self._clock() if ts is None else ts)
        if kind:
            head += ',"kind":' + json.dumps(kind)
        body = json.dumps(fields) if fields else "{}"
        payload = (head + ("," + body[1:] if len(body) > 2 else "}")).encode()
        if len(payload) > _MAX_PAYLOAD:
            raise ValueError("payload over 4 KiB")
        self.outbox.append(self.boot, self.seq, channel, payload, channel == "telemetry")
        self._kick.set()
        return self.seq

    async def ask_hub(self, event, ticket, ts, timeout_ms):
        """The hub's answer to this scanner's claim on a ticket ({"admit": bool, "first": ...}), or None
        when there is none within timeout_ms (no link, no hub, or the hub was silent just now)."""
        c = self.mqtt
        if self._claim_id is None or not c.up.is_set():  # None: not a device that asks (hub=False)
            return None
        if self._hub_miss is not None and ticks_diff(ticks_ms(), self._hub_miss) < _HUB_QUIET_MS:
            return None
        self._claim_id = (self._claim_id + 1) & 0x7FFFFFFF
        self._answer = None
        msg = ('{"id":%d,"event":"%s","ticket":"%s","ts":%d}' % (self._claim_id, event, ticket, ts)).encode()
        # asked at once or not at all (a link busy flushing counts as no answer), then the answer looked
        # for every 2 ms: no asyncio.wait_for_ms, whose module and tasks a door would hold for it
        t0 = ticks_ms()
        if c.publish_now(self._pre + b"claim", msg):
            while self._answer is None and ticks_diff(ticks_ms(), t0) < timeout_ms:
                await asyncio.sleep_ms(2)
        if self._answer is None:
            self._hub_miss = ticks_ms()
            log(_WARN, "link", "no answer from the hub in %d ms", timeout_ms)
            return None
        self._hub_miss = None
        return self._answer

    def ack(self, cmd_id, status, detail=None):
        """Answer a command: status ok | error | expired | rejected."""
        fields = {"cmd_id": cmd_id, "status": status}
        if detail:
            fields["detail"] = str(detail)[:200]
        return self.emit("ack", None, fields)

    def set_config_version(self, version):
        """Report the config version now applied (the retained state is published again)."""
        self.config_version = version
        self._restate = True
        self._kick.set()

    def reboot(self, cmd, reset, flush_ms=3000):
        """A `reboot` command -> its answer. The answer goes first: the board resets once the
        outbox drained (the ack receipted) or flush_ms passed, and the link left (state: shutdown).
        A reboot asked before this boot began has had its effect: a redelivery after the reset
        (the ids that ran are in RAM here) is answered so, not obeyed again."""
        if cmd["ts"] < self.started:
            return "ok", "restarted at %d" % self.started
        asyncio.create_task(self._reboot(reset, flush_ms))
        return "ok", "restarting"

    async def _reboot(self, reset, flush_ms):
        await self.stop(flush_ms)
        reset()

    async def stop(self, flush_ms=0):
        """Wait up to flush_ms for the outbox to drain, then leave gracefully (state: shutdown)."""
        t0 = ticks_ms()
        while self.outbox.count and ticks_diff(ticks_ms(), t0) < flush_ms:
            await asyncio.sleep_ms(50)
        c = self.mqtt
        if c.up.is_set():
            await c.publish(self._t_state, self._state(False, "shutdown"), True, 1, False)
            t0 = ticks_ms()
            while c.inflight() and ticks_diff(ticks_ms(), t0) < 2000:
                await asyncio.sleep_ms(20)
        if self._task is not None:
            self._task.cancel()
        await c.disconnect()
        self.outbox.close()

    # ------------------------------------------------------------ sending

    async def _send_loop(self):
        c = self.mqtt
        ob = self.outbox
        seen = 0
        chans = bytearray(_BATCH)  # the payloads read from flash, at most _BATCH (lent to _send_wanted)
        msgs = [None] * _BATCH
        cur = [0, 0, 0]  # the sender's place in the outbox
        first = -1  # the oldest unreceipted entry, since when it is, when that was last looked at
        first_t = checked = 0
        while True:
            try:
                if not c.up.is_set():
                    await c.up.wait()
                if c.conns != seen:  # a new session: subscribe, be born, send all unreceipted
                    seen = c.conns
                    pre = self._pre
                    subs = [(pre + b"receipt", 1), (pre + b"cmd", 1), (pre + b"config", 1)]
                    if self._claim_id is not None:
                        subs.append((pre + b"claimed", 0))
                    if self._upd is not None:
                        subs.append((pre + b"update", 1))
                    for t, q, _h in self._kit_subs:
                        subs.append((t, q))
                    if self._time is not None:
                        subs.append((pre[:pre.find(b"/", 10) + 1] + b"time", 0))  # kit-level
                    for t, q in subs:
                        try:
                            await c.subscribe(t, q)
                        except MQTTError as e:
                            log(_ERROR, "link", "subscription refused: %s", e)
                    pre = subs = t = None
                    self._restate = True
                    self.overdue_ms = self._resend_ms
                    cur[0] = cur[1] = cur[2] = 0  # everything unreceipted again, from the oldest entry on
                    first = ob.first()
                    first_t = ticks_ms()
                    self.rounds += 1
                    log(_INFO, "link", "session %d, boot %s: %d unreceipted", seen, self.boot, ob.count)
                    continue  # the link may have dropped meanwhile: look again
                if self._restate:
                    self._restate = False
                    await c.publish(self._t_state, self._state(True, "birth"), True, 1, False)
                if self._wanted is not None:
                    wanted, self._wanted = self._wanted, None
                    await self._send_wanted(wanted[0], wanted[1], chans, msgs)
                    wanted = None
                now = ticks_ms()
                if ticks_diff(now, checked) >= _CHECK_MS:
                    # the oldest entry waited overdue_ms since it was (last) sent: everything again
                    checked = now
                    f = ob.first()
                    if f != first:
                        first = f
                        first_t = now
                    elif f >= 0 and ticks_diff(now, first_t) >= self.overdue_ms \
                            and cur[0] * 256 + cur[1] > f:  # it was sent: its receipt is overdue
                        log(_INFO, "link", "receipts overdue: sending %d again", ob.count)
                        cur[0] = cur[1] = cur[2] = 0
                        first_t = now
                        self.rounds += 1
                        self.overdue_ms = min(self.overdue_ms * 2, _RESEND_MAX_MS)  # a receipt resets it
                n = ob.read(cur, chans, msgs)
                for i in range(n):
                    await c.publish(self._pre + CHANNELS[chans[i]].encode(), msgs[i], False, 1, False)
                    msgs[i] = None
                self.sent += n
                if not n:
                    self._kick.clear()
                    await self._kick.wait()
            except Exception as e:  # a flash or payload fault must not end the sender
                log(_ERROR, "link", "sender: %r", e)
                await asyncio.sleep_ms(_CHECK_MS)

    async def _send_wanted(self, boot, ranges, chans, msgs):
        """Publish again the entries of `boot` a gap request names: one pass over the outbox,
        _BATCH records at a time through the sender's own buffers, ending once all were found."""
        left = 0
        for r in ranges:
            left += r[1] - r[0] + 1
        cur = [0, 0, 0]  # where the look-up stands in the outbox
        while left > 0:
            n = self.outbox.read(cur, chans, msgs)
            if not n:
                break  # the rest are not here: receipted already, or dropped at the cap
            for i in range(n):
                m = msgs[i]
                msgs[i] = None
                seq = _seq_of(m, boot)
                for r in ranges:
                    if seq and r[0] <= seq <= r[1]:
                        await self.mqtt.publish(self._pre + CHANNELS[chans[i]].encode(), m, False, 1, False)
                        self.asked += 1
                        left -= 1
                        break

    # ------------------------------------------------------------ receiving

    def _on_msg(self, t, m, retained):
        """Each incoming message, called by pkmqtt's reader (no task of the link's waits for them)."""
        pre = self._pre
        ch = t[len(pre):] if t.startswith(pre) else None  # this device's channel, or a kit-level topic
        try:
            if ch == b"receipt":
                r = json.loads(m)
                self.outbox.confirm(r["boot"], r["seqs"])
                want = r.get("missing")
                if want:  # a newer request replaces one not acted on yet: the fleet asks until it has them
                    self._wanted = (r["boot"].encode(), want[:_MAX_WANTED])
                self.receipts += 1
                self.overdue_ms = self._resend_ms  # the fleet answers: the link is through
                self._kick.set()
            elif ch == b"cmd":
                if retained:  # commands are never retained; one that is must never run (again)
                    log(_WARN, "link", "ignored a retained command")
                else:
                    self._cmd(json.loads(m))
            elif ch == b"claimed" and self._claim_id is not None:
                r = json.loads(m)
                if r["id"] == self._claim_id:  # an answer to an earlier, timed-out claim is stale
                    self._answer = r
            elif ch == b"config":
                if self._raw_config:
                    if self._on_config is not None:
                        v = self._on_config(m)
                        if v is not None and v != self.config_version:
                            self.set_config_version(v)
                    return
                cfg = json.loads(m)
                v = cfg["version"]
                if v != self.config_version and self._on_config is not None and self._on_config(cfg):
                    self.set_config_version(v)
            elif self._time is not None and t == pre[:pre.find(b"/", 10) + 1] + b"time":  # kit-level
                self._on_time(m, retained)
            elif ch == b"update" and self._upd is not None:
                self._offer(m, retained)
            else:
                for kt, _q, h in self._kit_subs:
                    if t == kt:
                        h(m, retained)
        except Exception as e:  # a malformed message must not stop the link
            self.bad += 1
            log(_WARN, "link", "ignored a message on %s: %r", t, e)

    def _cmd(self, cmd):
        cid = cmd["id"]
        rec = self._recent
        if rec is not None:
            if cid in rec:  # redelivered (QoS 1 is at least once): answered already
                return
            rec.pop(0)  # in place: the list keeps its length, no allocation
            rec.append(cid)
        if self._time is not None and clock.state(self._time) == clock.UNSET:
            self.ack(cid, "rejected", "clock not set: cannot check expires")
        elif cmd["expires"] <= self._clock():
            self.ack(cid, "expired")
        elif self._on_cmd is None:
            self.ack(cid, "rejected", "no command handler")
        else:
            try:
                res = self._on_cmd(cmd)
            except Exception as e:
                self.ack(cid, "error", repr(e))
                return
            if isinstance(res, str):
                self.ack(cid, res)
            elif res is not None:
                self.ack(cid, res[0], res[1])

    # ------------------------------------------------------------ field updates

    def _offer(self, m, retained):
        """An offer on the update topic (empty: withdrawn, nothing to do)."""
        if not m or self._fetching is not None:
            return
        o = json.loads(m)
        # kept as a tuple (id, release, fw, host, port, rollback), the dict let go: it lives as long
        # as the download (heap: docs/updates.md, "The ESP32's download")
        o = (o["id"], o["release"], o["fw"], o["host"], o["port"], o.get("rollback", False))
        fw = o[2]
        if fw == self.fw:
            return  # running it already (its trial or commit says so in state)
        u = self._update
        if u and u["state"] == "trial":
            self._later = m  # the spare slot holds the last good app until this trial's outcome
            return
        try:
            with open(self._upd[4] + "/update.failed") as f:  # type: ignore[index]
                last = f.read().split("\n", 1)
        except OSError:
            last = None
        if last and last[0] == o[0]:  # refused, or rolled back (abboot wrote it at boot): said again, not fetched
            last = last[1] if len(last) > 1 else ""
            s = "rolled_back"  # one string constant, not two (each long one is a heap object)
            if not last.startswith(s):
                s = "failed"
            if not u or u["state"] != s:
                self.update = {"state": s, "why": last, "fw": fw}
            return
        last = None
        self._fetching = o[0]
        self.update = {"state": "downloading", "fw": fw}
        log(_INFO, "link", "update %s offered: downloading", fw)
        try:
            import fetch  # for this download only: fetch.take drops it (and update.py) when done

            asyncio.create_task(fetch.take(self, o))
        except ImportError as e:  # a build without it
            self.failed(o, "no downloader in this firmware: %s" % e)

    def failed(self, o, why):
        """An offer ((id, release, fw, ...), as _offer keeps it) that cannot be taken: reported, and
        remembered on flash (said again, never fetched again, at the next boot)."""
        print("UPDATE failed", why)
        try:
            with open(self._upd[4] + "/update.failed", "w") as f:  # type: ignore[index]
                f.write("%s\n%s" % (o[0], why))
        except OSError:
            pass
        self._fetching = None
        self.update = {"state": "failed", "why": why, "fw": o[2]}

    def _on_time(self, m, retained):
        if retained:  # the kit's time is never retained: a stale one must not set the clock
            return
        t = json.loads(m)
        r = clock.offer(self._time, t["ts"], t.get("synced") is True)
        if r < 0:
            self.clock_refused += 1
        elif r:
            log(_INFO, "link", "clock %s", clock.state(self._time))
            self._restate = True
            self._kick.set()

    # ------------------------------------------------------------ payloads

    def _state(self, online, reason):
        s = '{"boot":"%s","seq":0,"ts":%d,"online":%s,"role":"%s","reason":"%s"' % (
            self.boot.decode(), self.started, "true" if online else "false", self.role, reason)
        if self.fw:
            s += ',"fw":' + json.dumps(self.fw)
        if self.config_version is not None:
            s += ',"config_version":%d' % self.config_version
        if self._time is not None:
            s += ',"clock":"%s"' % clock.state(self._time)
        if self.reset_cause:
            s += ',"reset_cause":"%s"' % self.reset_cause
        u = self._update
        if u:
            s += ',"update":{"state":"%s"' % u["state"]
            if u.get("why"):
                s += ',"why":' + json.dumps(u["why"][:120])  # the contract's bound
            if u.get("fw"):
                s += ',"fw":' + json.dumps(u["fw"])
            s += "}"
        return (s + "}").encode()


_BOOT_AT = const(9)  # len('{"boot":"'): where emit() puts the boot in every payload
_SEQ_KEY = b'","seq":'


def _seq_of(m, boot):
    """The seq of outbox payload m if it is of `boot`, else 0. emit() starts every payload with
    '{"boot":"<boot>","seq":<n>,': read in place, byte by byte, so nothing is allocated."""
    b = len(boot)
    n = len(m)
    if n < _BOOT_AT + b + 9 or m[0] != 123 or m[_BOOT_AT - 1] != 34:  # '{', '"'
        return 0
    for j in range(b):
        if m[_BOOT_AT + j] != boot[j]:
            return 0
    i = _BOOT_AT + b
    for j in range(8):
        if m[i + j] != _SEQ_KEY[j]:
            return 0
    i += 8
    seq = 0
    while i < n and 48 <= m[i] <= 57:  # digits
        seq = seq * 10 + m[i] - 48
        i += 1
    return seq
