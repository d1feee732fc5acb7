"""The link from a producer (the Pi agent, or a simulated device) to the fleet over MQTT.

* Birth and death: a retained ``state`` for the producer (and the devices it
  hosts) on every connect; the Last Will marks the producer offline.
* Everything owed to the fleet goes through the on-disk :class:`Outbox` and
  leaves it only on the fleet's receipt; unreceipted messages are sent again
  after a reconnect or when their receipt is overdue (the fleet deduplicates).
  A receipt's ``missing`` (the fleet saw later seqs arrive, not these) sends those
  again at once. While no receipt comes, the overdue wait doubles per resend up to
  ``resend_max_s``: through a long uplink outage a kit must not pour its whole outbox
  into the kit broker's bridge queue every ``resend_after_s``.
* Reconnects back off exponentially with full jitter, so a venue's kits do not
  all hammer the broker in the same second after an outage.

The network loop runs in its own thread; ``emit`` may be called from any thread.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.outbox import Outbox
from kits.contract import (
    LEDGER_CHANNELS,
    Ack,
    Command,
    Config,
    ContractError,
    Role,
    UpdateReport,
    State,
    decode,
    encode,
    topic,
)
from plumbing.mqtt import client_for, redacted, session_kwargs

log = logging.getLogger("popkit.agent.link")


def backoff_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Full-jitter exponential backoff: uniform in [base/2, min(cap, base * 2**attempt)]."""
    return random.uniform(base / 2, min(cap, base * (2 ** min(attempt, 16))))


def now_ms() -> int:
    return int(time.time() * 1000)


class FleetLink:
    def __init__(
        self,
        kit: str,
        device: str,
        role: Role,
        mqtt_url: str,
        outbox_path: str | Path,
        hosted: dict[str, Role] | None = None,
        fw: str | None = None,
        resend_after_s: float = 15.0,
        resend_max_s: float = 300.0,
        outbox_cap: int = 50_000,
        keepalive: int = 10,
        on_command: Callable[[str, Command], None] | None = None,
        on_config: Callable[[str, Config], None] | None = None,
        hold_commands: bool = False,
        own_config: bool = False,
    ):
        self.kit, self.device, self.role, self.fw = kit, device, role, fw
        self.hosted = dict(hosted or {})
        self.mqtt_url = redacted(mqtt_url)  # for the logs: a password in the URL never reaches them
        self.resend_after_s = resend_after_s
        self.resend_max_s = max(resend_max_s, resend_after_s)
        # How late a receipt may be before its message is sent again: resend_after_s, doubled after
        # each round of resends that no receipt answered; back to resend_after_s on any receipt or connect.
        self.overdue_after_s = resend_after_s
        self._overdue_since = time.monotonic()  # when overdue_after_s was last set
        self.keepalive = keepalive
        self.boot = secrets.token_hex(4)
        self.started_ms = now_ms()  # state.ts for every birth and the Will of this boot
        self.outbox = Outbox(outbox_path, cap=outbox_cap)
        # Commands for this producer's devices: handed over (from the network thread) once each,
        # never when retained, never past their expiry (answered "expired" here).
        self.on_command = on_command
        # hold_commands: a command that arrives before the handler is set (the agent's start: its link
        # connects, and the fleet sends what is unanswered at its birth, before the loop that runs
        # commands is up) waits for set_command_handler instead of being rejected. Bounded.
        self._held_cmds: deque[tuple[str, Command]] | None = deque(maxlen=64) if hold_commands else None
        self._cmd_lock = threading.Lock()
        self._recent_cmds: deque[str] = deque(maxlen=256)
        # Retained `config` of the hosted lights (the compiled lighting timeline) and, with own_config,
        # this producer's own (the till's catalog): handed over decoded,
        # at every (re)connect too; the latest per device is kept while no handler is set yet.
        self._on_config = on_config
        self.own_config = own_config
        self._config_lock = threading.Lock()
        self._pending_configs: dict[str, Config] = {}
        self.configs_bad = 0
        self.config_versions: dict[str, int] = {}  # device -> config version applied (goes into its state)
        self.clock: str | None = None  # this producer's clock (synced | kit | unset: agent/kitclock.py), in its state
        # This producer's own update news (the agent's last self-update rolled back or failed:
        # agent/updates/offers.py agent_update_report), in its state; set before start().
        self.update: UpdateReport | None = None
        self.connected = threading.Event()
        self.receipts = 0
        self.gap_requests = 0  # receipts that asked for missing seqs again
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._client, self._target = client_for(mqtt_url, f"{kit}-{device}-{self.boot}")
        self._client.max_inflight_messages_set(100)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.will_set(
            topic(kit, device, "state"), encode(self._state(device, role, online=False, reason="lwt")), qos=1, retain=True
        )
        # Every write to the socket happens on the network thread: paho, driven by our own loop()
        # rather than loop_start(), writes a publish() from another thread straight to the socket,
        # and a TLS connection read and written from two threads at once corrupts its records
        # ("bad record mac", "BAD_LENGTH"). Other threads queue what they want sent here.
        self._calls: deque[Callable[[], None]] = deque()
        self._threads = [threading.Thread(target=self._network_loop, name=f"link-net-{device}", daemon=True)]

    # ------------------------------------------------------------ public

    def start(self) -> "FleetLink":
        for t in self._threads:
            t.start()
        return self

    def emit(self, device: str, channel: str, model: type, ts: int | None = None, **fields) -> int:
        """Queue one telemetry/event/ack message for ``device``; returns its seq."""
        if channel not in LEDGER_CHANNELS:
            raise ValueError(f"{channel!r} is not a ledger channel")
        with self._seq_lock:
            seq = self._seq.get(device, 0) + 1
            self._seq[device] = seq
        msg = model(boot=self.boot, seq=seq, ts=ts if ts is not None else now_ms(), **fields)
        self.outbox.put(device, self.boot, seq, topic(self.kit, device, channel), encode(msg), droppable=channel == "telemetry")
        self._kick.set()
        return seq

    def set_config_handler(self, handler: Callable[[str, Config], None] | None) -> None:
        """Hand every hosted light's `config` to ``handler(device, Config)`` (from the network thread),
        starting with the latest of each that arrived while there was no handler."""
        with self._config_lock:  # held while handing over, so a newer config never overtakes an older one
            self._on_config = handler
            if handler is None:
                return
            pending, self._pending_configs = self._pending_configs, {}
            for device, cfg in pending.items():
                handler(device, cfg)

    def set_config_version(self, device: str, version: int | None) -> None:
        """The config version ``device`` (this producer or a hosted one) now runs: its retained state
        carries it, published again now if the link is up (else at the next connect)."""
        if version is None:
            self.config_versions.pop(device, None)
        else:
            self.config_versions[device] = version
        role = self.role if device == self.device else self.hosted.get(device)
        if role is None or not self.connected.is_set():
            return
        self._on_network(lambda: self._client.publish(topic(self.kit, device, "state"),
                                                      encode(self._state(device, role, True)), qos=1, retain=True))

    def set_clock(self, clock: str | None) -> None:
        """This producer's clock state changed (agent/kitclock.py): its retained state says so, now if
        the link is up (else at the next connect). The same state again publishes nothing."""
        if clock == self.clock:
            return
        self.clock = clock
        if not self.connected.is_set():
            return
        self._on_network(lambda: self._client.publish(topic(self.kit, self.device, "state"),
                                                      encode(self._state(self.device, self.role, True)), qos=1, retain=True))

    def stop(self, flush_s: float = 0.0) -> None:
        """Wait up to ``flush_s`` for the outbox to drain, then leave gracefully (state: shutdown)."""
        deadline = time.monotonic() + flush_s
        while len(self.outbox) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.connected.is_set():
            sent = threading.Event()
            infos: list = []

            def shutdown_state() -> None:
                infos.append(self._client.publish(
                    topic(self.kit, self.device, "state"),
                    encode(self._state(self.device, self.role, online=False, reason="shutdown")), qos=1, retain=True))
                sent.set()

            self._on_network(shutdown_state)
            if sent.wait(2):
                try:
                    infos[0].wait_for_publish(2)  # its PUBACK, read by the network thread
                except RuntimeError:
                    pass
        self._stop.set()
        self._kick.set()
        for t in self._threads:  # the network thread sends the DISCONNECT
            t.join(5)
        self.outbox.close()

    # ------------------------------------------------------------ network thread

    def _network_loop(self) -> None:
        target = self._target
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        attempt = 0
        first = True
        while not self._stop.is_set():
            try:
                if first:
                    self._client.connect(target.host, target.port, self.keepalive,
                                         **session_kwargs(self._client, clean_start=False, properties=props))
                    first = False
                else:
                    self._client.reconnect()
            except OSError as exc:
                delay = backoff_delay(attempt)
                attempt += 1
                log.info("broker %s unreachable (%s); retrying in %.1fs", self.mqtt_url, exc, delay)
                self._stop.wait(delay)
                continue
            next_check = 0.0
            while not self._stop.is_set():
                rc = self._client.loop(timeout=0.05)  # short: queued calls and kicks wait at most this long
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                while self._calls:
                    self._calls.popleft()()
                now = time.monotonic()
                if self.connected.is_set() and (self._kick.is_set() or now >= next_check):
                    self._kick.clear()
                    next_check = now + 1.0
                    self._send_due()
                if self.connected.is_set():
                    attempt = 0
            self.connected.clear()
            if not self._stop.is_set():
                delay = backoff_delay(attempt)
                attempt += 1
                log.info("link to %s lost; reconnecting in %.1fs", self.mqtt_url, delay)
                self._stop.wait(delay)
        # Let the graceful DISCONNECT reach the broker so the Will is not sent (if there is a connection).
        if self._client.socket() is not None:
            self._client.disconnect()
        for _ in range(5):
            if self._client.socket() is None or self._client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker refused %s: %s", self.device, reason_code)
            return
        subs = [(topic(self.kit, d, ch), 1) for d in self._devices() for ch in ("receipt", "cmd")]
        subs += [(topic(self.kit, d, "config"), 1) for d, role in self.hosted.items() if role == "light"]
        if self.own_config:
            subs.append((topic(self.kit, self.device, "config"), 1))
        client.subscribe(subs)
        born = self.clock
        client.publish(topic(self.kit, self.device, "state"), encode(self._state(self.device, self.role, True)), qos=1, retain=True)
        for device, role in self.hosted.items():
            client.publish(topic(self.kit, device, "state"), encode(self._state(device, role, True)), qos=1, retain=True)
        # Whatever was in flight when the link dropped may be lost: send all of it again.
        self.outbox.mark_unsent()
        self._answered()
        self.connected.set()
        if self.clock != born:  # set_clock ran meanwhile and, the link not up yet, left it to this birth
            client.publish(topic(self.kit, self.device, "state"), encode(self._state(self.device, self.role, True)),
                           qos=1, retain=True)
        self._kick.set()
        log.info("%s connected to %s (boot %s, outbox %d)", self.device, self.mqtt_url, self.boot, len(self.outbox))

    def _on_disconnect(self, _client, _userdata, _flags, _reason_code, _props) -> None:
        self.connected.clear()

    def _on_message(self, _client, _userdata, msg) -> None:
        if msg.topic.endswith("/cmd"):
            self._command(msg)
            return
        if msg.topic.endswith("/config"):
            self._config(msg)
            return
        try:
            receipt = decode("receipt", msg.payload)
        except ContractError as exc:
            log.warning("ignoring malformed receipt on %s: %s", msg.topic, exc)
            return
        device = msg.topic.split("/")[3]
        self.outbox.confirm(device, receipt.boot, receipt.seqs)
        if receipt.missing:  # a silent gap at the fleet: these are due again now
            self.outbox.mark_missing(device, receipt.boot, receipt.missing)
            self.gap_requests += 1
        self.receipts += 1
        self._answered()
        self._kick.set()

    def _command(self, msg) -> None:
        device = msg.topic.split("/")[3]
        if msg.retain:  # a retained command would run again at every subscribe: never
            log.warning("ignoring a retained command on %s", msg.topic)
            return
        try:
            cmd = decode("cmd", msg.payload)
        except ContractError as exc:
            log.warning("ignoring a malformed command on %s: %s", msg.topic, exc)
            return
        if cmd.id in self._recent_cmds:  # QoS 1 redelivery: answered already
            return
        self._recent_cmds.append(cmd.id)
        if cmd.expires <= now_ms():
            self.ack(device, cmd.id, "expired")
            return
        with self._cmd_lock:
            if self.on_command is None and self._held_cmds is not None:
                self._held_cmds.append((device, cmd))
                return
        self._hand_over(device, cmd)

    def _hand_over(self, device: str, cmd: Command) -> None:
        if self.on_command is None:
            self.ack(device, cmd.id, "rejected", "no command handler here")
            return
        try:
            self.on_command(device, cmd)
        except Exception as exc:  # noqa: BLE001 - a handler bug must be answered, not kill the link
            log.exception("command %s for %s failed", cmd.id, device)
            self.ack(device, cmd.id, "error", str(exc)[:200])

    def set_command_handler(self, handler: Callable[[str, Command], None] | None) -> None:
        """Hand commands to ``handler(device, Command)`` (from the network thread), starting with the
        ones held while there was none."""
        with self._cmd_lock:
            self.on_command = handler
            held, self._held_cmds = (list(self._held_cmds), deque(maxlen=64)) if self._held_cmds else ([], self._held_cmds)
        for device, cmd in held:
            if cmd.expires <= now_ms():
                self.ack(device, cmd.id, "expired")
            else:
                self._hand_over(device, cmd)

    def _config(self, msg) -> None:
        device = msg.topic.split("/")[3]
        if not msg.payload:  # the retained config was cleared: nothing to follow, nothing to undo
            log.info("empty config on %s ignored", msg.topic)
            return
        try:
            cfg = decode("config", msg.payload)
        except ContractError as exc:
            self.configs_bad += 1
            log.warning("ignoring a malformed config on %s: %s", msg.topic, exc)
            return
        with self._config_lock:
            handler = self._on_config
            if handler is None:
                self._pending_configs[device] = cfg
                return
            try:
                handler(device, cfg)
            except Exception:  # noqa: BLE001 - a handler bug must not kill the link
                self.configs_bad += 1
                log.exception("config %s for %s failed", cfg.version, device)

    def ack(self, device: str, cmd_id: str, status: str, detail: str | None = None) -> int:
        """Answer a command (through the outbox, like everything owed to the fleet)."""
        return self.emit(device, "ack", Ack, cmd_id=cmd_id, status=status, detail=detail)

    # ------------------------------------------------------------ sending (network thread)

    def _on_network(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the network thread (within one short loop() of now)."""
        self._calls.append(call)

    def _send_due(self) -> None:
        """Publish what the outbox has due (network thread only)."""
        entries = self.outbox.due(self.overdue_after_s, limit=500)
        if not entries:
            return
        for e in entries:
            self._client.publish(e.topic, e.payload, qos=1)
        self.outbox.mark_sent([e.id for e in entries])
        if len(entries) == 500:
            self._kick.set()
        if any(e.sent_ms is not None for e in entries):
            self._resent_unanswered()

    def _resent_unanswered(self) -> None:
        """Receipts were overdue, so messages went again: once a whole wait passed without any
        receipt, the next one is twice as long (up to resend_max_s)."""
        now = time.monotonic()
        if now - self._overdue_since >= self.overdue_after_s:
            self.overdue_after_s = min(self.overdue_after_s * 2, self.resend_max_s)
            self._overdue_since = now

    def _answered(self) -> None:
        """A receipt or a new session: the link is through; receipts are overdue after resend_after_s again."""
        self.overdue_after_s = self.resend_after_s
        self._overdue_since = time.monotonic()

    # ------------------------------------------------------------ helpers

    def _devices(self) -> list[str]:
        return [self.device, *self.hosted]

    def _state(self, device: str, role: Role, online: bool, reason: str = "birth") -> State:
        return State(boot=self.boot, seq=0, ts=self.started_ms, online=online, role=role,
                     fw=self.fw, reason=reason if not online else "birth",
                     config_version=self.config_versions.get(device),
                     clock=self.clock if device == self.device else None,
                     update=self.update if device == self.device else None)
