"""``popkit sim fleet``: thousands of light-weight simulated devices in one process, for load tests and demos.

Each kit is its Pi agent (``k0001-agent``) with the power bank it reads (``k0001-power``: a
discharging pack's ``battery`` telemetry, so the fleet fits a time-to-empty forecast for every
kit, as it does on tour), then scanners (``k0001-scan-1``, ...) and lighting controllers
(``k0001-light-1``, ...); ``power=False`` (``--no-power``), or fewer than 3 devices a kit, leaves
ESP32s only. The power bank has a connection of its own here, where the real agent publishes it
over the agent's connection: the fleet sees the same topics and payloads, the broker one more
client a kit.
Every device speaks the wire contract as the
firmware does (device/lib/link.py): a persistent MQTT session (client id
``<kit>-<device>``), a retained ``state`` birth on every connect and the same
state, offline, as its Last Will (both carry the boot's start as ``ts``); then
``telemetry`` (kind ``device``) every period and, on scanners, now and then a
``checkin`` event, numbered by ``seq`` from 1 under a ``boot`` that is new every
run (whatever the seed: the fleet deduplicates by (device, boot, seq), so a
rerun must never look like a resend).

Delivery, as every PopKit producer: a message stays in the device's outbox (in
memory here) until a ``receipt`` names it; what is unreceipted is sent again
after a reconnect, when it is overdue (the interval doubling while no receipt
comes) and at once when a receipt lists it as ``missing``. Reconnects back off
with full jitter (agent.link.backoff_delay), and connection attempts pass a
pacer (``connect_rate`` per second), so a broker restart or a cold start is no
SYN flood.

Commands and field updates: each kit's agent subscribes to its ``cmd`` topic and answers as the
real agent does (``identify``/``selftest``: ok; ``update``: simulators/swarm_updates.py, where the
agent fetches the release once per kit and its ESP32 reports downloading, trial and the outcome in
its retained ``state``; anything else: rejected). An ack is a ledger message like the others.

The swarm speaks MQTT 3.1.1 (as the firmware does) whatever the URL's ``?protocol=`` says;
``mqtts://`` and a login in the URL (or ``?account=FILE``) work as in plumbing/mqtt.py.

Cost, the reason for the shape: one asyncio loop, one small Protocol per
connection (simulators/swarm_mqtt.py), payloads from per-device byte templates
(tests/test_swarm.py decodes them with the contract so they cannot drift), one
housekeeping walk a second for pings, dead links and overdue resends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from agent.link import backoff_delay
from kits.contract import topic
from kits.manifest import DeviceSpec, KitManifest
from plumbing.mqtt import parse_mqtt_url, read_account, tls_context
from simulators.swarm_updates import SwarmUpdates, UpdateBehaviour, UpdateLog
from simulators.swarm_mqtt import (
    CONNACK_REASONS,
    PINGREQ_PACKET,
    MqttConnection,
    connect_packet,
    lp,
    publish_packet,
    subscribe_packet,
)

log = logging.getLogger("popkit.sim.swarm")

FW = b"swarm-0.1.0"
SCENES = (b"doors", b"set", b"interval", b"close")
# Mostly admitted, as at a real door; a few of the refusals ops look for.
VERDICTS = (b"admitted",) * 16 + (b"already_admitted", b"expired", b"bad_signature", b"wrong_event")
CONNECT_TIMEOUT_S = 10.0  # TCP connect, and then CONNACK: a broker this slow counts as down
LONG_LIVED_S = 10.0  # a connection that lasted this long starts the next backoff from scratch
HOUSEKEEP_S = 1.0
PACK_AH = 100.0  # a simulated power bank's capacity


class SwarmError(RuntimeError):
    """The swarm cannot run as asked (broker address, file limit); the message says what to change."""


# ---------------------------------------------------------------- the simulated fleet's shape

def kit_id(index: int) -> str:
    return f"k{index:04d}"


def agent_id(kit: str) -> str:
    return f"{kit}-agent"


def device_plan(kit: str, devices_per_kit: int, power: bool = True) -> list[tuple[str, str]]:
    """(device id, role) of one kit: with ``power`` (and room for it) the agent and its power bank
    first, then scanners and lighting controllers, about half each of the rest."""
    plan = []
    if power and devices_per_kit >= 3:
        plan = [(agent_id(kit), "agent"), (f"{kit}-power", "powerbank")]
    esp32s = devices_per_kit - len(plan)
    scanners = (esp32s + 1) // 2
    plan += [(f"{kit}-scan-{j}", "scanner") for j in range(1, scanners + 1)]
    plan += [(f"{kit}-light-{j}", "lighting") for j in range(1, esp32s - scanners + 1)]
    return plan


MODELS = {"scanner": "esp32-gm65", "lighting": "esp32-pwm-dmx", "powerbank": "sim-lifepo4-100ah"}


def manifests(kits: int, devices_per_kit: int = 5, period_s: float = 5.0, first_kit: int = 1,
              power: bool = True) -> list[KitManifest]:
    """Kit manifests for the simulated kits, for the fleet's registry (popkit/kitregister.py): the fleet
    dead-letters devices it does not know. Each names its agent (the format requires one, and
    device ids are fleet-wide); without ``power`` the swarm does not simulate it: it stays offline."""
    out = []
    for index in range(first_kit, first_kit + kits):
        kit = kit_id(index)
        devices = [DeviceSpec(id=d, role=role, model=MODELS[role], telemetry_s=period_s,  # type: ignore[arg-type]
                              bus="serial:/dev/ttyUSB0" if role == "powerbank" else None)
                   for d, role in device_plan(kit, devices_per_kit, power) if role != "agent"]
        out.append(KitManifest(id=kit, name=f"Swarm kit {index}", agent=agent_id(kit), devices=devices))
    return out


def raise_fd_limit(need: int) -> int:
    """Lift the soft open-file limit to the hard one (one socket per device); SwarmError if still short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < need:
        raise SwarmError(f"the swarm needs about {need} open files (a socket per device); the limit is {soft}: "
                         f"raise it (ulimit -n {need}) or run fewer kits")
    return soft


# ---------------------------------------------------------------- what the swarm reports

@dataclass(frozen=True)
class SwarmStats:
    devices: int
    connected: int  # now
    connects: int  # CONNACKs accepted, the first ones included
    reconnects: int  # ... of devices that had been connected before
    connect_failures: int  # TCP connects refused or timed out, CONNACKs refused
    disconnects: int
    dead_links: int  # dropped by us: no CONNACK, or the broker silent past 1.5 keepalives
    emitted: int  # ledger messages made (telemetry, check-ins)
    receipted: int  # ... of which a receipt named
    outstanding: int  # ... still in the outboxes
    publishes: int  # PUBLISH packets sent: births, messages, resends
    resends: int  # ... of which were sent again (reconnect, overdue, missing)
    missing_resends: int  # ... because a receipt listed them as missing
    pubacks: int
    receipts: int  # receipt messages taken in
    bad_receipts: int
    startup_s: float | None  # from start until every device was first connected
    waves: int  # disconnect waves: times the swarm went from all connected to not
    last_recovery_s: float | None  # from the first drop of the last wave until all were back


@dataclass(frozen=True)
class DeviceLedger:
    kit: str
    device: str
    role: str
    boot: str
    emitted: int  # seqs 1..emitted were made
    receipted: int
    outstanding: tuple[int, ...]  # seqs still waiting for a receipt

    @property
    def balanced(self) -> bool:
        return self.emitted == self.receipted + len(self.outstanding)


# ---------------------------------------------------------------- one device

class SimDevice:
    """One simulated ESP32: its MQTT session, its outbox and its ledger. Runs on the swarm's loop."""

    __slots__ = ("swarm", "kit", "id", "role", "boot", "started_ms", "seq", "outbox", "receipted", "scans", "scene",
                 "conn", "conn_started", "up", "up_since", "ever_up", "attempt", "connecting", "retry_handle",
                 "tick_handle", "next_tick", "resend_after", "_mid", "_t_tele", "_t_event", "_t_state", "_tele",
                 "_checkin", "_birth", "_shutdown", "_connect_pkt", "_subscribe_topic", "soc", "draw_a", "fw", "update")

    def __init__(self, swarm: "Swarm", kit: str, device_id: str, role: str):
        self.swarm = swarm
        self.kit, self.id, self.role = kit, device_id, role
        self.boot = secrets.token_hex(4)  # never from the seed: see the module's docstring
        self.started_ms = int(time.time() * 1000)  # state.ts of this boot's births and of its Will
        self.seq = 0
        self.outbox: dict[int, list] = {}  # seq -> [topic_lp, payload, sent_at (loop time, 0: never)]
        self.receipted = 0
        self.scans = 0
        self.scene = SCENES[0]
        self.conn: MqttConnection | None = None
        self.conn_started = self.up_since = 0.0
        self.up = self.ever_up = False
        self.attempt = 0
        self.connecting: asyncio.Task | None = None
        self.retry_handle: asyncio.Handle | None = None
        self.tick_handle: asyncio.TimerHandle | None = None
        self.next_tick = 0.0
        self.resend_after = swarm.resend_after_s
        self._mid = 0
        self._t_tele, self._t_event, self._t_state = (lp(topic(kit, device_id, ch).encode())
                                                      for ch in ("telemetry", "event", "state"))
        self._subscribe_topic = topic(kit, device_id, "receipt").encode()
        # Byte templates: one %-format per message instead of a model and a JSON encoder.
        head = b'{"boot":"' + self.boot.encode() + b'","seq":%d,"ts":%d,'
        if role == "scanner":
            self._tele = head + b'"kind":"device","uptime_s":%d,"heap_free":%d,"rssi":%d,"outbox":%d,"scans":%d}'
        elif role == "lighting":
            self._tele = head + b'"kind":"device","uptime_s":%d,"heap_free":%d,"rssi":%d,"outbox":%d,"scene":"%s"}'
        elif role == "agent":
            self._tele = head + b'"kind":"device","uptime_s":%d,"rssi":%d,"outbox":%d}'
        else:  # a power bank, read by its agent: a 12.8 V 100 Ah pack under the kit's load, as a shunt reports it
            self._tele = head + b'"kind":"battery","source":"sim","v":%.2f,"i":%.2f,"p":%.1f,"soc":%.1f,"ttg":%d}'
        self.soc = self.draw_a = 0.0
        if role == "powerbank":
            self.soc = swarm.rng.uniform(45.0, 98.0)  # %
            self.draw_a = swarm.rng.uniform(1.5, 7.0)  # the kit's load: a 6 to 60 h pack
        self.fw = FW
        self.update: bytes | None = None  # the A/B update's news in the state (simulators/swarm_updates.py)
        event = f"SWARM-{kit}".upper().encode()
        self._checkin = head + b'"kind":"checkin","data":{"event":"' + event + \
            b'","ticket":"T%06d","tier":"GA","verdict":"%s"}}'
        self._states()

    def _states(self) -> None:
        """The birth, the goodbye and the Will (in the CONNECT) for what the device now runs."""
        t, sw = self.swarm.target, self.swarm
        self._birth = self.state_payload(True, "birth")
        self._shutdown = self.state_payload(False, "shutdown")
        self._connect_pkt = connect_packet(f"{self.kit}-{self.id}".encode(), sw.keepalive_s, clean=False,
                                           will=(self._t_state[2:], self.state_payload(False, "lwt"), 1, True),
                                           username=t.username, password=t.password)

    # payloads (the hot path, and what the test decodes) --------------------

    def state_payload(self, online: bool, reason: str) -> bytes:
        update = b',"update":' + self.update if self.update else b""
        return (b'{"boot":"%s","seq":0,"ts":%d,"online":%s,"role":"%s","fw":"%s","reason":"%s"%s}'
                % (self.boot.encode(), self.started_ms, b"true" if online else b"false", self.role.encode(), self.fw,
                   reason.encode(), update))

    def set_update(self, news: bytes) -> None:
        """New A/B news (and perhaps a new fw): the retained state says it now, and every later birth and Will."""
        self.update = news
        self._states()
        if self.up:
            self._publish(self._t_state, self._birth, retain=True)

    def ack(self, cmd_id: str, status: str, detail: str | None) -> None:
        """The answer to a fleet command: a ledger message like any other (outbox, receipt)."""
        body = {"boot": self.boot, "seq": self.seq + 1, "ts": int(time.time() * 1000), "cmd_id": cmd_id,
                "status": status}
        if detail:
            body["detail"] = detail[:200]
        self.seq += 1
        self._emit(lp(topic(self.kit, self.id, "ack").encode()), json.dumps(body, separators=(",", ":")).encode())

    def telemetry_payload(self, seq: int, ts: int) -> bytes:
        rng = self.swarm.rng
        if self.role == "powerbank":
            i = -self.draw_a * rng.uniform(0.9, 1.1)
            v = 12.0 + 1.3 * self.soc / 100 + i * 0.01
            ttg = int(self.soc / 100 * PACK_AH / -i * 60)
            return self._tele % (seq, ts, v, i, v * i, self.soc, ttg)
        uptime, rssi, outbox = (ts - self.started_ms) // 1000, rng.randrange(-75, -45), len(self.outbox)
        if self.role == "agent":
            return self._tele % (seq, ts, uptime, rssi, outbox)
        last = self.scans if self.role == "scanner" else self.scene
        return self._tele % (seq, ts, uptime, rng.randrange(52_000, 60_000), rssi, outbox, last)

    def checkin_payload(self, seq: int, ts: int) -> bytes:
        rng = self.swarm.rng
        return self._checkin % (seq, ts, rng.randrange(1_000_000), rng.choice(VERDICTS))

    def discharge(self, seconds: float) -> None:
        """A power bank: ``seconds`` of the kit's load drawn from the pack."""
        self.soc -= self.draw_a * seconds / 36 / PACK_AH  # Ah drawn, as % of the pack
        if self.soc < 5.0:  # the crew swapped in a charged pack
            self.soc = self.swarm.rng.uniform(90.0, 100.0)

    # emitting ------------------------------------------------------------

    def _tick(self) -> None:
        sw = self.swarm
        self.tick_handle = None
        if not sw.emitting:
            return
        ts = int(time.time() * 1000)
        self.seq += 1
        self._emit(self._t_tele, self.telemetry_payload(self.seq, ts))
        if self.role == "scanner":
            if sw.rng.random() < sw.checkin_p:
                sw.updates.last_checkin[self.kit] = sw.loop.time()  # the kit is in use: its agent defers offers
                self.scans += 1
                self.seq += 1
                self._emit(self._t_event, self.checkin_payload(self.seq, ts))
        elif self.role == "lighting" and sw.rng.random() < 0.05:
            self.scene = sw.rng.choice(SCENES)
        elif self.role == "powerbank":
            self.discharge(sw.period_s)
        now = sw.loop.time()
        self.next_tick += sw.period_s
        if self.next_tick < now - sw.period_s:  # the loop fell far behind: do not fire a burst to catch up
            self.next_tick = now
        self.tick_handle = sw.loop.call_at(self.next_tick, self._tick)

    def _emit(self, topic_lp: bytes, payload: bytes) -> None:
        sw = self.swarm
        entry = [topic_lp, payload, 0.0]
        self.outbox[self.seq] = entry
        sw.emitted += 1
        if self.up:
            self._publish(topic_lp, payload)
            entry[2] = sw.loop.time()

    def _publish(self, topic_lp: bytes, payload: bytes, retain: bool = False) -> None:
        self._mid = self._mid % 0xFFFF + 1
        self.conn.send(publish_packet(topic_lp, payload, self._mid, retain))  # type: ignore[union-attr]
        self.swarm.publishes += 1

    def _resend(self, entries: list[list], now: float) -> None:
        """Publish outbox entries (again, or for the first time if made while offline), in one write."""
        packets, again = [], 0
        for e in entries:
            self._mid = self._mid % 0xFFFF + 1
            packets.append(publish_packet(e[0], e[1], self._mid))
            again += e[2] != 0.0
            e[2] = now
        self.conn.send(b"".join(packets))  # type: ignore[union-attr]
        self.swarm.publishes += len(entries)
        self.swarm.resends += again

    def resend_overdue(self, now: float) -> None:
        """Housekeeping: what waited ``resend_after`` for its receipt goes again; the wait doubles."""
        limit = now - self.resend_after
        due = [e for e in self.outbox.values() if e[2] <= limit]
        if due:
            self._resend(due, now)
            self.resend_after = min(self.resend_after * 2, self.swarm.resend_cap_s)

    # connecting ------------------------------------------------------------

    def start(self) -> None:
        self.swarm.pacer.request(self)

    def _retry(self) -> None:
        delay = backoff_delay(self.attempt)
        self.attempt += 1
        self.retry_handle = self.swarm.loop.call_later(delay, self._queue_connect)

    def _queue_connect(self) -> None:
        self.retry_handle = None
        if not self.swarm.stopping:
            self.swarm.pacer.request(self)

    def open_connection(self) -> None:
        """Called by the pacer when it is this device's turn."""
        if not self.swarm.stopping:
            self.connecting = self.swarm.loop.create_task(self._open())

    async def _open(self) -> None:
        sw = self.swarm
        try:
            await asyncio.wait_for(sw.loop.create_connection(lambda: MqttConnection(self, sw.loop), sw.host_ip,
                                                             sw.target.port, **sw.tls_kwargs), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            sw.connect_failures += 1
            sw.warn("connect", f"cannot reach the broker at {sw.target.host}:{sw.target.port}: "
                               f"{exc or type(exc).__name__}; backing off")
            if not sw.stopping:
                self._retry()
        finally:
            self.connecting = None

    # MqttConnection's owner interface ------------------------------------

    def on_connection(self, conn: MqttConnection) -> None:
        if self.swarm.stopping:
            conn.abort()
            return
        self.conn, self.conn_started = conn, self.swarm.loop.time()
        conn.send(self._connect_pkt)

    def on_connack(self, conn: MqttConnection, _session_present: bool, rc: int) -> None:
        sw = self.swarm
        if conn is not self.conn:
            return
        if rc:
            sw.connect_failures += 1
            sw.warn(f"connack{rc}", f"the broker refused {self.id}: {CONNACK_REASONS.get(rc, rc)}")
            conn.abort()
            return
        now = sw.loop.time()
        self.up, self.up_since = True, now
        sw.note_up(self)
        self.ever_up = True
        self._mid = self._mid % 0xFFFF + 1
        # Subscribe on every connect (the broker may have lost the session), be born, then send
        # everything unreceipted: what was in flight when the link dropped may be lost.
        topics = [(self._subscribe_topic, 1)]
        if self.role == "agent":  # the fleet's commands reach a kit through its agent (update, identify)
            topics.append((topic(self.kit, self.id, "cmd").encode(), 1))
        conn.send(subscribe_packet(self._mid, topics))
        self._publish(self._t_state, self._birth, retain=True)
        if self.outbox:
            self._resend(list(self.outbox.values()), now)
        if self.tick_handle is None and sw.emitting and self.seq == 0:
            # The device's readings start when it first joins, at a random phase so the load is even.
            self.next_tick = now + sw.rng.random() * sw.period_s
            self.tick_handle = sw.loop.call_at(self.next_tick, self._tick)

    def on_message(self, conn: MqttConnection, topic_: bytes, payload: bytes) -> None:
        """A receipt: drop what it names, resend at once what it calls missing. (An agent's commands go
        to simulators/swarm_updates.py.)"""
        sw = self.swarm
        if topic_.endswith(b"/cmd"):
            sw.updates.on_command(self, payload)
            return
        sw.receipts += 1
        try:
            r = json.loads(payload)
            if r["boot"] != self.boot:  # an old boot's receipt, queued in the session: nothing of ours
                return
            removed = self._confirm(r["seqs"])
            missing = r.get("missing") or ()
            again = [e for s, e in self.outbox.items() if any(a <= s <= b for a, b in missing)] if missing else ()
        except (ValueError, KeyError, TypeError, AttributeError):
            sw.bad_receipts += 1
            sw.warn("receipt", f"a malformed receipt for {self.id}: {payload[:120]!r}")
            return
        if removed:
            self.receipted += removed
            sw.receipted += removed
            self.resend_after = sw.resend_after_s
        if again and self.up and conn is self.conn:
            self._resend(again, sw.loop.time())
            sw.missing_resends += len(again)

    def _confirm(self, seqs: list) -> int:
        outbox, removed = self.outbox, 0
        for a, b in seqs:
            if b - a < len(outbox):  # a short range: look its seqs up
                for s in range(a, b + 1):
                    if outbox.pop(s, None) is not None:
                        removed += 1
            else:  # a long one (many resent at once): walk the outbox instead
                for s in [s for s in outbox if a <= s <= b]:
                    del outbox[s]
                    removed += 1
        return removed

    def on_puback(self, _conn: MqttConnection, _mid: int) -> None:
        self.swarm.pubacks += 1

    def on_suback(self, _conn: MqttConnection, codes: bytes) -> None:
        if 0x80 in codes:
            self.swarm.warn("suback", f"the broker refused {self.id}'s receipt subscription (ACL?)")

    def on_protocol_error(self, _conn: MqttConnection, exc: Exception) -> None:
        self.swarm.warn("protocol", f"{self.id}: the broker sent something unexpected ({exc}); reconnecting")

    def on_lost(self, conn: MqttConnection, _exc: Exception | None) -> None:
        sw = self.swarm
        if conn is not self.conn:
            return
        self.conn = None
        if self.up:
            self.up = False
            sw.note_down()
            if sw.loop.time() - self.up_since >= LONG_LIVED_S:
                self.attempt = 0
        if not sw.stopping:
            self._retry()

    def leave(self) -> None:
        """Stop: a graceful goodbye (state shutdown, DISCONNECT: no Will) if connected, else just stop trying."""
        if self.tick_handle:
            self.tick_handle.cancel()
            self.tick_handle = None
        if self.retry_handle:
            self.retry_handle.cancel()
            self.retry_handle = None
        if self.connecting:
            self.connecting.cancel()
        if self.conn is not None:
            if self.up:
                self._publish(self._t_state, self._shutdown, retain=True)
                self.conn.close()
            else:
                self.conn.abort()

    def ledger(self) -> DeviceLedger:
        return DeviceLedger(self.kit, self.id, self.role, self.boot, self.seq, self.receipted, tuple(self.outbox))


class _ConnectPacer:
    """Lets connection attempts through at ``rate`` per second, first come first served (0: no limit).

    A queue drained by one task, rather than each device rescheduling itself: with thousands
    waiting, that would be thousands of wake-ups per slot.
    """

    STEP_S = 0.01

    def __init__(self, swarm: "Swarm", rate: float):
        self.swarm, self.rate = swarm, rate
        self.queue: deque[SimDevice] = deque()
        self.task: asyncio.Task | None = None

    def request(self, device: SimDevice) -> None:
        if not self.rate:
            device.open_connection()
            return
        self.queue.append(device)
        if self.task is None:
            self.task = self.swarm.loop.create_task(self._drain())

    async def _drain(self) -> None:
        loop, credit, last = self.swarm.loop, 1.0, self.swarm.loop.time()
        try:
            while self.queue and not self.swarm.stopping:
                now = loop.time()
                # Credit for the time since the last turn (a busy loop wakes late), at most 0.1 s worth.
                credit = min(credit + (now - last) * self.rate, max(1.0, self.rate * 0.1))
                last = now
                while credit >= 1 and self.queue:
                    credit -= 1
                    self.queue.popleft().open_connection()
                await asyncio.sleep(self.STEP_S)
        finally:
            if self.swarm.stopping:
                self.queue.clear()
            self.task = None


# ---------------------------------------------------------------- the swarm

class Swarm:
    """N simulated kits (agent, power bank, ESP32s: see device_plan) on one asyncio loop.

    ``await swarm.run()`` on your loop (``request_stop(flush_s)`` ends it), or
    ``start_in_thread()`` / ``stop(flush_s)`` from synchronous code; ``flush_s`` is how long to
    wait for the last receipts. ``stats()`` may be called from any thread; ``ledger()`` too (it
    runs on the swarm's loop). ``manifests()`` are the kits to register with the fleet. A
    device's readings start when it first connects; kits are ``k<first_kit>`` onwards, so two
    swarms against one broker need different ``first_kit`` (client ids must not collide).
    """

    def __init__(self, kits: int, devices_per_kit: int = 5, mqtt_url: str = "mqtt://127.0.0.1:1883",
                 period_s: float = 5.0, seed: int | None = None, *, first_kit: int = 1, checkin_p: float = 0.1,
                 keepalive_s: int = 30, connect_rate: float = 500.0, resend_after_s: float = 15.0,
                 resend_cap_s: float = 120.0, power: bool = True, updates: UpdateBehaviour | None = None):
        import random

        if kits < 1 or devices_per_kit < 1 or period_s <= 0:
            raise SwarmError("kits and devices per kit must be at least 1, the period above 0")
        try:
            self.target = parse_mqtt_url(mqtt_url)
        except ValueError as exc:
            raise SwarmError(str(exc)) from None
        self.mqtt_url = mqtt_url
        self.kits, self.devices_per_kit, self.first_kit, self.power = kits, devices_per_kit, first_kit, power
        self.period_s, self.checkin_p, self.keepalive_s = period_s, checkin_p, keepalive_s
        self.resend_after_s, self.resend_cap_s = resend_after_s, resend_cap_s
        self.rng = random.Random(seed)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by run()
        self.host_ip = self.target.host
        self.tls_kwargs: dict = {}
        self._account_login()
        self.pacer = _ConnectPacer(self, connect_rate)
        self.devices = [SimDevice(self, kit_id(k), d, role) for k in range(first_kit, first_kit + kits)
                        for d, role in device_plan(kit_id(k), devices_per_kit, power)]
        # The kits' agents answer the fleet's commands, and their ESP32s take updates (swarm_updates.py).
        self.updates = SwarmUpdates(self, updates or UpdateBehaviour(seed=seed or 0))
        self.emitting = True
        self.stopping = False
        # Counters (the loop's thread writes them; other threads only read).
        self.connected = self.connects = self.reconnects = self.connect_failures = self.disconnects = 0
        self.dead_links = self.emitted = self.receipted = self.publishes = self.resends = self.missing_resends = 0
        self.pubacks = self.receipts = self.bad_receipts = self.waves = 0
        self.startup_s: float | None = None
        self.last_recovery_s: float | None = None
        self._t0 = 0.0
        self._wave_start: float | None = None
        self._warned: dict[str, float] = {}
        self._stop_event: asyncio.Event | None = None
        self._flush_until = 0.0
        self._early_stop: float | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _account_login(self) -> None:
        """User, password and CA from the URL, or from ``?account=FILE`` (popkit kit provision). Note
        that a broker with an ACL pins an account to one device's tree: one login for all suits an
        open or bench broker."""
        t = self.target
        ca_pem = None
        if t.account:
            try:
                acct = read_account(t.account)
            except ValueError as exc:
                raise SwarmError(str(exc)) from None
            self.target = t = replace(t, username=acct["user"], password=acct["password"])
            ca_pem = acct.get("ca")
        if t.tls:
            self.tls_kwargs = {"ssl": tls_context(t.ca, ca_pem), "server_hostname": t.host}

    def manifests(self) -> list[KitManifest]:
        return manifests(self.kits, self.devices_per_kit, self.period_s, self.first_kit, self.power)

    # ------------------------------------------------------------ running

    async def run(self) -> None:
        """Connect every device (paced), emit until request_stop(), then leave gracefully."""
        self.loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        raise_fd_limit(len(self.devices) + 256)
        try:  # once, not per connection: asyncio would resolve a name in a thread for every connect
            infos = await self.loop.getaddrinfo(self.target.host, self.target.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise SwarmError(f"cannot resolve the broker host {self.target.host!r}: {exc}") from None
        self.host_ip = str(infos[0][4][0])
        self._t0 = self.loop.time()
        housekeeping = self.loop.create_task(self._housekeeping())
        for d in self.devices:
            d.start()
        self._ready.set()
        if self._early_stop is not None:
            self.request_stop(self._early_stop)
        log.info("swarm: %d kits, %d devices, connecting to %s:%d", self.kits, len(self.devices),
                 self.target.host, self.target.port)
        try:
            await self._stop_event.wait()
            await self._shutdown()
        finally:
            housekeeping.cancel()

    def request_stop(self, flush_s: float = 0.0) -> None:
        """Stop emitting, wait up to ``flush_s`` for the outboxes to drain, leave. On the loop's thread;
        called again (a second Ctrl-C) it may shorten the wait."""
        if self._stop_event is None:  # run() has not begun: it stops at once when it does
            self._early_stop = flush_s
            return
        self._flush_until = self.loop.time() + flush_s
        self._stop_event.set()

    async def _shutdown(self) -> None:
        self.emitting = False
        self.updates.cancel()
        for d in self.devices:
            if d.tick_handle:
                d.tick_handle.cancel()
                d.tick_handle = None
        while self.emitted > self.receipted and self.loop.time() < self._flush_until:
            await asyncio.sleep(0.05)
        self.stopping = True
        for d in self.devices:
            d.leave()
        deadline = self.loop.time() + 5.0
        while any(d.conn is not None or d.connecting for d in self.devices) and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        log.info("swarm stopped: %d emitted, %d receipted, %d outstanding", self.emitted, self.receipted,
                 self.emitted - self.receipted)

    def start_in_thread(self, timeout: float = 30.0) -> "Swarm":
        """Run the swarm on its own loop in a daemon thread; returns once every device is queued to connect."""
        def main() -> None:
            try:
                asyncio.run(self.run())
            except BaseException as exc:  # noqa: BLE001 - handed to start_in_thread's caller
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=main, name="swarm", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SwarmError(f"the swarm did not start within {timeout:.0f}s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, flush_s: float = 0.0, timeout: float = 60.0) -> None:
        """From another thread: stop a start_in_thread() swarm (see request_stop) and wait for it."""
        if self._thread is None:
            raise SwarmError("stop() is for a swarm started with start_in_thread(); use request_stop()")
        if self.loop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.request_stop, flush_s)
        self._thread.join(timeout + flush_s)

    # ------------------------------------------------------------ housekeeping

    async def _housekeeping(self) -> None:
        """Once a second over every device: CONNACK overdue, keepalive pings, dead links, overdue resends."""
        ping_after, dead_after = self.keepalive_s * 0.75, self.keepalive_s * 1.5
        while True:
            await asyncio.sleep(HOUSEKEEP_S)
            now = self.loop.time()
            for d in self.devices:
                conn = d.conn
                if conn is None:
                    continue
                if not d.up:
                    if now - d.conn_started > CONNECT_TIMEOUT_S:
                        self.dead_links += 1
                        conn.abort()
                    continue
                if now - conn.last_rx > dead_after:
                    self.dead_links += 1
                    self.warn("dead", "the broker went silent on some devices (no reply within 1.5 keepalives); "
                                      "reconnecting them")
                    conn.abort()
                    continue
                if now - conn.last_tx > ping_after:
                    conn.send(PINGREQ_PACKET)
                if d.outbox:
                    d.resend_overdue(now)

    def note_up(self, device: SimDevice) -> None:
        self.connected += 1
        self.connects += 1
        if device.ever_up:
            self.reconnects += 1
        if self.connected == len(self.devices):
            now = self.loop.time()
            if self.startup_s is None:
                self.startup_s = now - self._t0
            if self._wave_start is not None:
                self.last_recovery_s = now - self._wave_start
                self._wave_start = None
                log.info("all %d devices back %.1fs after the first dropped", self.connected, self.last_recovery_s)

    def note_down(self) -> None:
        if self.connected == len(self.devices) and not self.stopping:
            self._wave_start = self.loop.time()
            self.waves += 1
        self.connected -= 1
        self.disconnects += 1

    def warn(self, key: str, message: str) -> None:
        """Log a problem once a minute per kind: a thousand devices failing alike is one line."""
        now = time.monotonic()
        if now - self._warned.get(key, -60.0) >= 60.0:
            self._warned[key] = now
            log.warning("%s", message)

    # ------------------------------------------------------------ reading

    def stats(self) -> SwarmStats:
        return SwarmStats(
            devices=len(self.devices), connected=self.connected, connects=self.connects, reconnects=self.reconnects,
            connect_failures=self.connect_failures, disconnects=self.disconnects, dead_links=self.dead_links,
            emitted=self.emitted, receipted=self.receipted, outstanding=self.emitted - self.receipted,
            publishes=self.publishes, resends=self.resends, missing_resends=self.missing_resends,
            pubacks=self.pubacks, receipts=self.receipts, bad_receipts=self.bad_receipts, startup_s=self.startup_s,
            waves=self.waves, last_recovery_s=self.last_recovery_s)

    def update_log(self) -> UpdateLog:
        """A copy of what the kits saw and did of updates (simulators/swarm_updates.py)."""
        def copy() -> UpdateLog:
            lg = self.updates.log
            return UpdateLog(list(lg.commands), lg.duplicates, lg.bad_commands, lg.acks.copy(), lg.fetches,
                             lg.deferred, lg.reports.copy(), dict(lg.final))
        return self._on_loop(copy)

    def ledger(self) -> dict[str, DeviceLedger]:
        """Per device: boot, what was emitted, receipted and is outstanding."""
        return self._on_loop(lambda: {d.id: d.ledger() for d in self.devices})

    def _on_loop(self, fn):
        loop = self.loop
        running_elsewhere = (loop is not None and loop.is_running() and self._thread is not None
                             and threading.current_thread() is not self._thread)
        if not running_elsewhere:
            return fn()

        async def call():
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(30)


# ---------------------------------------------------------------- the command

def run_cli(swarm: Swarm, duration: float | None, flush_s: float = 10.0) -> int:
    """``popkit sim fleet``: a status line every 5 s, a summary at the end; SIGTERM or Ctrl-C stop it."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    asyncio.run(_run_with_status(swarm, duration, flush_s))
    wall = time.monotonic() - wall0
    s = swarm.stats()
    print(f"done after {wall:.0f}s: {s.emitted} emitted, {s.receipted} receipted, {s.outstanding} outstanding; "
          f"{s.publishes} publishes ({s.resends} resends), {s.connects} connects ({s.reconnects} reconnects, "
          f"{s.connect_failures} failed); cpu {100 * (time.process_time() - cpu0) / wall:.0f}% of a core",
          flush=True)
    return 0


async def _run_with_status(swarm: Swarm, duration: float | None, flush_s: float) -> None:
    import signal

    loop = asyncio.get_running_loop()
    runner = loop.create_task(swarm.run())
    stopping = False

    def stop() -> None:
        nonlocal stopping
        # Wait for the last receipts, unless this is a second Ctrl-C or no fleet ever answered.
        flush = flush_s if not stopping and swarm.receipts else 0.0
        if flush and swarm.stats().outstanding:
            print(f"stopping: waiting up to {flush:.0f}s for receipts (Ctrl-C again to leave now)", flush=True)
        swarm.request_stop(flush)
        stopping = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    t0 = last_t = loop.time()
    last_pub = 0
    cpu_last = time.process_time()
    while not runner.done():
        wait = 5.0 - (loop.time() - last_t)
        if duration is not None and not stopping:
            wait = min(wait, t0 + duration - loop.time())
        await asyncio.wait({runner}, timeout=max(wait, 0.0))
        now = loop.time()
        if runner.done():
            break
        if duration is not None and now - t0 >= duration and not stopping:
            stop()
        if now - last_t < 4.9:
            continue
        s = swarm.stats()
        cpu = time.process_time()
        rate = (s.publishes - last_pub) / (now - last_t)
        print(f"{now - t0:6.0f}s  connected {s.connected}/{s.devices}  msg/s {rate:6.0f}"
              f"  outstanding {s.outstanding}  resends {s.resends}  reconnects {s.reconnects}"
              f"  cpu {100 * (cpu - cpu_last) / (now - last_t):3.0f}%", flush=True)
        last_t, last_pub, cpu_last = now, s.publishes, cpu
    runner.result()
