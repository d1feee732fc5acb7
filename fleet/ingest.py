"""Fleet ingest: MQTT in, validated batches committed, then PUBACKs and receipts out.

Delivery promise (see docs/protocol.md): a message is acknowledged to the broker
(PUBACK, with paho's ``manual_ack``) and receipted to its producer only after
the transaction holding it has committed. Bad input is dead-lettered in the
same transaction and acknowledged too, so one broken device cannot wedge the
stream; a failing database is retried without acknowledging anything.

Threads: paho's network loop only appends to a deque; one writer thread takes
batches from it. PUBACKs go out in the order messages arrived, as MQTT requires.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from contextlib import contextmanager

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.ledger.gaps import GapDetector
from fleet.metrics import IngestMetrics
from fleet.settings import FleetSettings
from fleet.db import now_ms
from fleet.ledger import Batch, LedgerMessage, RejectedMessage
from fleet.registry import DeviceRef
from fleet.store import Store
from kits.contract import (DEVICE_CHANNELS, RECEIPT_MAX_RANGES, ContractError, Receipt, decode, encode, parse_topic,
                           ranges, subscription, topic)
from plumbing.mqtt import client_for, session_kwargs

log = logging.getLogger("popkit.fleet.ingest")

SESSION_EXPIRY_S = 7 * 24 * 3600  # the broker keeps our queue while the fleet is down for up to a week
STALL_S = 0.003  # a batch stops waiting when no message arrived for this long
FILL_POLL_S = 0.003  # how often a filling batch looks at the queue
DEVICE_RECHECK_S = 5.0  # how often an unknown device id is looked up again
ROUTE_CACHE_MAX = 10_000  # parsed topics kept; at most one entry per device channel


class _ReadAheadClient(mqtt.Client):
    """paho's client, reading the socket up to 64 KiB at a time.

    paho reads each packet with three or four recv() calls (type byte, length bytes,
    rest), each one a syscall that also lets go of the GIL the writer thread is
    waiting for; under load that cost more than the rest of receiving. Here one
    recv() fills a buffer, and paho's own parser takes the packets from it.
    """

    _ahead = b""
    _ahead_pos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._ahead, self._ahead_pos
        if pos >= len(buf):
            buf, pos = super()._sock_recv(65536), 0  # raises BlockingIOError when nothing is there
            self._ahead = buf
        self._ahead_pos = pos + bufsize
        return buf[pos : pos + bufsize]

    def loop_read(self, max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see what is already buffered: parse it all before paho waits again.
        while rc == mqtt.MQTT_ERR_SUCCESS and self._ahead_pos < len(self._ahead) and self._sock is not None:
            rc = super().loop_read(max_packets)
        return rc

    def _sock_close(self) -> None:
        self._ahead, self._ahead_pos = b"", 0  # a dead connection's bytes are never read as the next one's
        super()._sock_close()

    # paho wakes its network thread (one byte down a socket pair) for every packet queued from
    # another thread. The writer queues a batch's PUBACKs and receipts, a thousand a second under
    # load: each wakeup was a syscall and a GIL handover. ``one_wakeup`` queues them all, then
    # wakes the network thread once. (Only the writer's own thread sees no socket pair meanwhile;
    # the network thread, which makes and closes the pair, always sees it.)
    _holder: int | None = None

    @property
    def _sockpairW(self):  # noqa: N802 - paho's attribute
        if self._holder is not None and self._holder == threading.get_ident():
            return None
        return self.__dict__.get("_sockpair_w")

    @_sockpairW.setter
    def _sockpairW(self, value) -> None:  # noqa: N802
        self.__dict__["_sockpair_w"] = value

    @contextmanager
    def one_wakeup(self):
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            self._holder = None
            pair = self._sockpairW
            if pair is not None:
                try:
                    pair.send(b"0")
                except (BlockingIOError, OSError):
                    pass  # full (a wakeup is pending anyway) or closed by a reconnect, which writes the queue


class Ingest:
    def __init__(self, settings: FleetSettings, store: Store):
        self.settings = settings
        self.store = store
        self.metrics = IngestMetrics()
        self.connected = threading.Event()
        # Called with the devices whose birth state a batch committed (fleet/commands/ resends
        # their unanswered commands); on the writer thread, after the commit.
        self.on_births: list[Callable[[list[str]], object]] = []
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._generation = 0  # bumped per connection: a mid from an old connection must never be acked
        self._devices: dict[str, DeviceRef] = {}
        self._unknown_checked: dict[str, float] = {}
        self._routes: dict[str, tuple[str, str, str]] = {}  # topic -> (kit, device, channel), writer thread only
        self._client, self._target = client_for(settings.mqtt_url, settings.client_id, manual_ack=True,
                                                default_protocol=settings.mqtt_protocol, client_class=_ReadAheadClient)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._writer = threading.Thread(target=self._write_loop, name="fleet-ingest-writer", daemon=True)
        # Silent gaps are looked for on the writer thread, between batches: it owns the metrics and
        # publishes the receipts already, and a look costs a few indexed queries (fleet/ledger/gaps.py).
        self.gaps = GapDetector(store, settings, self.metrics, ask=self._ask_again)
        self._gaps_at = 0.0
        self._gaps_failing = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Ingest":
        self.refresh_devices()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        props.ReceiveMaximum = self.settings.receive_maximum
        self._client.connect_async(self._target.host, self._target.port, keepalive=15,
                                   **session_kwargs(self._client, clean_start=False, properties=props))
        self._client.loop_start()
        self._writer.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Commit what has arrived, then disconnect (the session keeps the rest for next time)."""
        deadline = time.monotonic() + timeout
        while self._queue and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        self._writer.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()

    def refresh_devices(self) -> None:
        self._devices = self.store.registry.device_refs()

    @property
    def client(self) -> mqtt.Client:
        """The worker's MQTT client, shared by the fleet's publisher (fleet/commands/ says why)."""
        return self._client

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client, _userdata, flags, reason_code, _props) -> None:
        if reason_code.is_failure:
            log.error("broker refused the fleet: %s", reason_code)
            return
        self._generation += 1
        group = self.settings.share_group
        subs = []
        for channel in DEVICE_CHANNELS:
            t = subscription(channel)
            # State stays an ordinary subscription: retained births are not sent to shared ones,
            # and applying a state twice is harmless.
            if group and channel != "state":
                t = f"$share/{group}/{t}"
            subs.append((t, 1))
        client.subscribe(subs)
        log.info("connected to %s (session present: %s)", self.settings.mqtt_url, flags.session_present)

    def _on_subscribe(self, _client, _userdata, _mid, reason_codes, _props) -> None:
        # Ready means subscribed: a message published between CONNACK and SUBACK would not reach us.
        refused = [rc for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused %d of the fleet's subscriptions: %s", len(refused), refused)
            return
        self.connected.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _props) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("lost the broker (%s); paho reconnects", reason_code)

    def _on_message(self, _client, _userdata, msg) -> None:
        self._queue.append((self._generation, msg.topic, msg.payload, msg.mid, msg.qos))
        if not self._wake.is_set():
            self._wake.set()

    # ------------------------------------------------------------ writer thread

    def _write_loop(self) -> None:
        wait_s = self.settings.batch_wait_ms / 1000
        batch_max = self.settings.batch_max
        while not self._stop.is_set():
            self._look_for_gaps()
            if not self._queue:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            self._fill_batch(wait_s, batch_max)
            items = [self._queue.popleft() for _ in range(min(batch_max, len(self._queue)))]
            self._process(items)

    def _fill_batch(self, wait_s: float, batch_max: int) -> None:
        """Let a batch fill a little: one commit per many messages is where the throughput is.

        Stop early once the queue stops growing for a few ms: the stream paused, or the
        broker's in-flight window is used up and waits for our PUBACKs (waiting longer
        would only add latency).
        """
        now = time.monotonic()
        deadline, grew_at, size = now + wait_s, now, len(self._queue)
        while size < batch_max and now < deadline and now - grew_at < STALL_S:
            time.sleep(FILL_POLL_S)
            now, n = time.monotonic(), len(self._queue)
            if n != size:
                size, grew_at = n, now

    def _process(self, items: list) -> None:
        batch = Batch()
        for _gen, topic_name, payload, _mid, _qos in items:
            self._classify(batch, topic_name, payload)
        self.metrics.received += len(items)
        result = self._commit(batch)
        with self._client.one_wakeup():  # the acks and receipts go out together
            # Only now is it safe to let the broker forget these messages.
            current = self._generation
            for gen, _t, _p, mid, qos in items:
                if gen == current and qos:
                    self._client.ack(mid, qos)
            self.metrics.ingested += result.inserted
            self.metrics.duplicates += result.duplicates
            self.metrics.states += len(batch.states)
            self.metrics.batches += 1
            self.metrics.last_batch_size = len(items)
            self._send_receipts(batch.ledger)
        births = [device for device, st in batch.states if st.online and st.reason == "birth"]
        for listener in self.on_births if births else ():
            try:
                listener(births)
            except Exception:  # noqa: BLE001 - a listener's failure must not stop ingest
                log.exception("a birth listener failed")

    def _commit(self, batch: Batch):
        delay = 0.1
        while True:
            try:
                t0 = time.perf_counter()
                result = self.store.ledger.write_batch(batch)
                self.metrics.last_commit_s = time.perf_counter() - t0
                return result
            except Exception as exc:  # the database is away: hold the batch, ack nothing, retry
                self.metrics.store_errors += 1
                log.error("commit failed, retrying in %.1fs: %s", delay, exc)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)

    def _classify(self, batch: Batch, topic_name: str, payload: bytes) -> None:
        try:
            route = self._routes.get(topic_name)
            if route is None:
                route = self._route(topic_name)
            kit, device, channel = route
            ref = self._device(device)
            if ref is None or ref.kit_id != kit:
                raise ContractError("unknown_device", f"no device {device!r} in kit {kit!r}")
            msg = decode(channel, payload)
        except ContractError as exc:
            batch.rejected.append(RejectedMessage(topic_name, payload, exc.reason, exc.detail))
            self.metrics.reject(exc.reason, topic_name, exc.detail)
            return
        if channel == "state":
            batch.states.append((device, msg))
        else:
            batch.ledger.append(LedgerMessage(device, channel, msg, payload.decode()))

    def _route(self, topic_name: str) -> tuple[str, str, str]:
        """parse_topic, for a channel devices publish on; remembered, as a device sends on a handful of topics."""
        kit, device, channel = parse_topic(topic_name)
        if channel not in DEVICE_CHANNELS:
            raise ContractError("unknown_topic", f"devices do not publish on {channel!r}")
        if len(self._routes) >= ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[topic_name] = (kit, device, channel)
        return kit, device, channel

    def _device(self, device_id: str) -> DeviceRef | None:
        ref = self._devices.get(device_id)
        if ref is not None:
            return ref
        # Registered since we loaded the registry? Ask the database, at most every few seconds per id.
        now = time.monotonic()
        if now - self._unknown_checked.get(device_id, -DEVICE_RECHECK_S) < DEVICE_RECHECK_S:
            return None
        self._unknown_checked[device_id] = now
        ref = self.store.registry.device_ref(device_id)
        if ref is not None:
            self._devices[device_id] = ref
        return ref

    def _look_for_gaps(self) -> None:
        now = time.monotonic()
        if now < self._gaps_at or not self.connected.is_set():
            return  # (while away from the broker the lease lapses, and another worker takes over)
        self._gaps_at = now + self.settings.gap_check_s
        try:
            # A backlog in our queue: the missing messages are most likely in it (or the broker's) too.
            self.gaps.tick(backlogged=len(self._queue) > self.settings.batch_max)
            self._gaps_failing = False
        except Exception as exc:  # noqa: BLE001 - the database is away: the commit's retry says so; next tick
            if not self._gaps_failing:
                log.warning("looking for gaps failed (retrying every %.1fs): %s", self.settings.gap_check_s, exc)
            self._gaps_failing = True

    def _ask_again(self, device_id: str, receipt: Receipt) -> None:
        """A gap request (fleet/ledger/gaps.py): a receipt naming only ``missing`` seqs, to their producer."""
        ref = self._device(device_id)
        if ref is not None:
            self._client.publish(topic(ref.kit_id, device_id, "receipt"), encode(receipt), qos=1)

    def _send_receipts(self, ledger: list[LedgerMessage]) -> None:
        """One receipt per (device, boot) for everything committed, duplicates included:
        a duplicate means the producer missed our last receipt."""
        seqs: dict[tuple[str, str], list[int]] = defaultdict(list)
        for m in ledger:
            seqs[(m.device_id, m.msg.boot)].append(m.msg.seq)
        ts = now_ms()
        for (device_id, boot), numbers in seqs.items():
            name = topic(self._devices[device_id].kit_id, device_id, "receipt")
            spans = ranges(numbers)
            for i in range(0, len(spans), RECEIPT_MAX_RANGES):
                receipt = Receipt(boot=boot, seqs=spans[i:i + RECEIPT_MAX_RANGES], ts=ts)
                self._client.publish(name, encode(receipt), qos=1)
                self.metrics.receipts += 1
