"""Fleet ingest throughput: how fast the fleet persists a QoS 1 stream, next to a bare paho subscriber.

    python -m bench.ingest [--quick] [--devices M] [--messages N] [--db URL]
                           [--clients K] [--publisher raw|paho] [--timeout S]

One run, all on this machine:

1. a private Mosquitto (``popkit.broker``, the project's tuned config) in a temp dir;
2. a publisher process (spawned, so it never shares the GIL with the fleet) with K
   MQTT v5 connections; for each run it builds valid contract telemetry for M
   simulated devices (each with its own boot id, seq 1..n, DeviceTelemetry for
   scanners, BatteryTelemetry for power banks, ``kits.contract.encode``) and then
   publishes it at QoS 1 as fast as it can, devices interleaved, every PUBACK
   counted. ``--publisher raw`` (default) writes the PUBLISH packets, encoded
   before the clock starts, straight to the sockets; ``--publisher paho`` uses paho
   clients (max_inflight unlimited), which on a 2-core machine cost ~100 us of CPU
   per message and so take that CPU from the side being measured;
3. the baseline: a bare paho subscriber (MQTT v5, QoS 1, auto-ack, network
   thread) in this process receives one such stream; baseline_msg_s = N / time
   from the first publish to the last message received;
4. the fleet (``fleet.service.build``: Store + Ingest, commit before PUBACK) in
   this process ingests the same kind of stream on a fresh kit and fresh boot
   ids; persisted_msg_s = N / time from the first publish to the last row committed;
5. checks: lost = N - distinct (device, boot, seq) in the database, duplicates =
   rows beyond distinct; the publisher process subscribes to its devices'
   receipt topics, like a real producer, and reports how many messages a receipt named.

The baseline runs first (after a small warm-up stream), on its own kit, with a
clean session that ends when it disconnects; the fleet only connects after it,
so neither run sees the other's messages. Both runs use the same publisher code.

The last line of stdout is one JSON object; progress goes to stdout before it,
warnings to stderr. Exit status 1 means messages were lost or duplicated.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import secrets
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

QUICK = dict(messages=50_000, devices=50)
FULL = dict(messages=200_000, devices=100)
# paho hands out message ids 1..65535 per client and refuses to reuse one still in flight.
MAX_PER_CLIENT = 60_000
# How often the fleet's commit counter is read: often enough for a 0.2 % error on
# a few seconds, rarely enough not to take the GIL from the fleet's threads.
POLL_S = 0.01


def say(text: str) -> None:
    print(text, flush=True)


def cpu_speed_us() -> float:
    """A fixed bit of pure Python (json.loads of 50 ints), best of 3, in microseconds.

    Shared virtual machines change speed from minute to minute; this says how fast
    this one was during the run, so runs can be compared.
    """
    import timeit

    doc = json.dumps({"a": list(range(50))})
    return round(min(timeit.repeat(lambda: json.loads(doc), number=5000, repeat=3)) / 5000 * 1e6, 2)


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of this process (or of ``pid``, from /proc), in seconds."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


# ---------------------------------------------------------------- the stream

def make_job(tag: str, kit: str, devices: int, messages: int, clients: int, timeout: float, publisher: str) -> dict:
    """What one run publishes: M devices of ``kit``, each with a fresh boot id, N messages in all."""
    specs = []
    for i in range(devices):
        role = "powerbank" if i % 4 == 3 else "scanner"
        count = messages // devices + (1 if i < messages % devices else 0)
        specs.append((f"{kit}-{role[:4]}-{i:03d}", role, secrets.token_hex(4), count))
    return dict(tag=tag, kit=kit, devices=specs, messages=messages, clients=clients, timeout=timeout,
                publisher=publisher)


def manifest_for(job: dict):
    from kits.manifest import DeviceSpec, KitManifest

    return KitManifest(
        id=job["kit"],
        name=f"ingest bench {job['tag']}",
        agent=f"{job['kit']}-agent",
        # a power bank's manifest entry names where it hangs (its bus); the bench's never reaches one
        devices=[DeviceSpec(id=d, role=role, model="bench-sim", bus="serial:/dev/null" if role == "powerbank" else None)
                 for d, role, _boot, _n in job["devices"]],
    )


def build_payloads(job: dict) -> list[tuple[int, str, bytes]]:
    """(client index, topic, payload) in publishing order: round robin over devices, seq 1..n each."""
    from kits.contract import BatteryTelemetry, DeviceTelemetry, encode, topic

    clients = job["clients"]
    devices = job["devices"]
    base_ts = int(time.time() * 1000) - 10_000_000
    topics = [topic(job["kit"], d, "telemetry") for d, *_ in devices]
    longest = max(n for *_, n in devices)
    plan = []
    for seq in range(1, longest + 1):
        ts = base_ts + seq * 100
        for idx, (_device, role, boot, count) in enumerate(devices):
            if seq > count:
                continue
            if role == "powerbank":
                msg = BatteryTelemetry(boot=boot, seq=seq, ts=ts, source="sim", v=12.0 + (seq % 100) / 100,
                                       i=-3.2, p=-38.4, soc=80.0 - (seq % 500) / 10, ttg=540)
            else:
                msg = DeviceTelemetry(boot=boot, seq=seq, ts=ts, uptime_s=seq * 5, heap_free=180_000 - seq % 4096,
                                      rssi=-40 - seq % 30, outbox=0, scans=seq)
            plan.append((idx % clients, topics[idx], encode(msg)))
    return plan


# ---------------------------------------------------------------- publisher process

def _publisher_main(conn, url: str) -> None:
    """Runs in its own process: one ``run`` command per stream, then ``quit``."""
    logging.basicConfig(level=logging.WARNING, format="publisher: %(levelname)s %(message)s")
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "quit":
                return
            if cmd == "run":
                try:
                    _publish_run(conn, url, arg)
                except Exception as exc:  # reported to the main process, which gives up on this run
                    conn.send(("error", repr(exc)))
    except (EOFError, KeyboardInterrupt):
        return


def _paho_client(client_id: str, read_ahead: bool = False, v5: bool = True):
    """A bare paho 2.x client (no logger, no popkit policy), MQTT v5 unless told 3.1.1."""
    import paho.mqtt.client as mqtt

    cls = _read_ahead_class() if read_ahead else mqtt.Client
    return cls(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)


def _read_ahead_class():
    import paho.mqtt.client as mqtt

    class ReadAheadClient(mqtt.Client):
        """paho reads every packet with 3-4 recv() calls; here one recv() takes in up to 64 KiB.

        Only the load generator uses this: a PUBACK costs it fewer syscalls, so
        more of the machine is left for the side being measured.
        """

        _rbuf = b""
        _rpos = 0

        def _sock_recv(self, bufsize: int) -> bytes:
            buf, pos = self._rbuf, self._rpos
            if pos >= len(buf):
                buf, pos = super()._sock_recv(65536), 0
                self._rbuf = buf
            self._rpos = pos + bufsize
            return buf[pos : pos + bufsize]

        def loop_read(self, max_packets: int = 1):
            rc = super().loop_read(max_packets)
            while not rc and self._rpos < len(self._rbuf) and self._sock is not None:
                rc = super().loop_read(max_packets)
            return rc

    return ReadAheadClient


class _PahoSender:
    """A few paho clients (MQTT v5) driven from this one thread: no network threads to fight over the GIL.

    publish() then writes its packet straight to the socket, and PUBACKs are
    read in between. max_inflight 0 = no limit: any finite limit makes paho 2.2
    rescan every message still in flight on each PUBACK, quadratic at this rate.
    """

    def __init__(self, target, job: dict):
        self.job = job
        self.clients, ready = [], []
        for k in range(job["clients"]):
            c = _paho_client(f"bench-pub-{job['tag']}-{k}-{os.getpid()}", read_ahead=True)
            c.max_inflight_messages_set(0)
            c.on_connect = lambda *_a, _r=ready: _r.append(1)
            c.connect(target.host, target.port, keepalive=60, clean_start=True)
            self.clients.append(c)
        deadline = time.monotonic() + 10
        while len(ready) < len(self.clients):
            if time.monotonic() > deadline:
                raise TimeoutError("publisher clients did not connect")
            for c in self.clients:
                c.loop_read()
            time.sleep(0.005)
        self.plan = build_payloads(job)

    def send(self, give_up: float) -> dict:
        clients = self.clients
        pub = [c.publish for c in clients]
        infos = []
        append = infos.append
        for i, (k, t, p) in enumerate(self.plan):
            append(pub[k](t, p, 1))
            if not i & 0x1FF:  # take in PUBACKs now and then so the socket never clogs
                for c in clients:
                    c.loop_read()
        socks = {c.socket(): c for c in clients}
        done = 0  # infos[:done] are acknowledged; checking in order keeps this linear
        while True:
            while done < len(infos) and infos[done].is_published():
                done += 1
            if done == len(infos) or time.monotonic() > give_up:
                break
            readable, _w, _x = select.select(list(socks), [], [], 0.05)
            for s in readable:
                socks[s].loop_read()
            for c in clients:
                if c.want_write():
                    c.loop_write()
                c.loop_misc()
        return dict(unacked=len(infos) - done, refused=sum(1 for info in infos if info.rc != 0))

    def idle(self) -> None:
        for c in self.clients:
            c.loop_read()
            c.loop_misc()

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


class _RawSender:
    """MQTT v5 over plain sockets: every PUBLISH (QoS 1) is encoded before the clock starts and
    written 256 packets per send; a reader thread per connection counts the PUBACKs.

    The broker cannot tell this from any other v5 client; what it saves is
    paho's ~70 us of Python and 4-5 syscalls per message, which on a 2-core
    machine would otherwise be taken from the side being measured.
    """

    CHUNK = 256

    def __init__(self, target, job: dict):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.job = job
        self.socks, self.window = [], []
        for k in range(job["clients"]):
            cid = f"bench-pub-{job['tag']}-{k}-{os.getpid()}".encode()
            vh = b"\x00\x04MQTT\x05\x02" + (300).to_bytes(2, "big") + b"\x00"  # v5, clean start, keepalive 300 s
            body = vh + _mqtt_str(cid)
            sock = socket.create_connection((target.host, target.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(b"\x10" + _varint(len(body)) + body)
            head, rest = self._read_packet(sock)
            if head >> 4 != 2 or rest[1] != 0:
                raise ConnectionError(f"broker refused the publisher: CONNACK {bytes(rest[:2]).hex()}")
            props = Properties(PacketTypes.CONNACK)
            props.unpack(bytes(rest[2:]))
            # Packet ids are reused after 65535; the window keeps every reuse long after its PUBACK.
            self.window.append(min(getattr(props, "ReceiveMaximum", 65535), 32768))
            sock.settimeout(None)
            self.socks.append(sock)
        self.sent = [0] * len(self.socks)
        self.acked = [0] * len(self.socks)
        self.no_subscribers = 0  # PUBACK reason 0x10: the broker dropped the message, nobody subscribed
        self.errors = 0  # PUBACK reason >= 0x80
        self.disconnects: list[str] = []
        self.progress = threading.Event()
        self.last_send = time.monotonic()
        self.chunks = self._encode(build_payloads(job))
        self.readers = [threading.Thread(target=self._read_loop, args=(k,), daemon=True) for k in range(len(self.socks))]
        for r in self.readers:
            r.start()

    @staticmethod
    def _read_packet(sock) -> tuple[int, bytes]:
        def exactly(n: int) -> bytes:
            buf = b""
            while len(buf) < n:
                more = sock.recv(n - len(buf))
                if not more:
                    raise ConnectionError("broker closed the connection")
                buf += more
            return buf

        head = exactly(1)[0]
        length, shift = 0, 0
        while True:
            b = exactly(1)[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return head, exactly(length)

    def _encode(self, plan) -> list[list[tuple[int, bytes]]]:
        per_client: list[list[bytes]] = [[] for _ in self.socks]
        topics: dict[str, bytes] = {}
        for k, t, payload in plan:
            tb = topics.get(t) or topics.setdefault(t, _mqtt_str(t.encode()))
            mid = len(per_client[k]) % 65535 + 1
            body = tb + mid.to_bytes(2, "big") + b"\x00" + payload  # topic, packet id, no properties, payload
            per_client[k].append(b"\x32" + _varint(len(body)) + body)  # PUBLISH, QoS 1
        return [[(len(pk[i:i + self.CHUNK]), b"".join(pk[i:i + self.CHUNK])) for i in range(0, len(pk), self.CHUNK)]
                for pk in per_client]

    def _read_loop(self, k: int) -> None:
        sock, buf = self.socks[k], bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            i, n, acks = 0, len(buf), 0
            while i + 2 <= n:
                length, shift, j = 0, 0, i + 1
                while j < n:
                    b = buf[j]
                    j += 1
                    length |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                else:
                    break  # length not complete yet
                if j + length > n:
                    break
                kind = buf[i] >> 4
                if kind == 4:  # PUBACK: packet id, then a reason code unless it is 0
                    acks += 1
                    if length >= 3:
                        if buf[j + 2] == 0x10:
                            self.no_subscribers += 1
                        elif buf[j + 2] >= 0x80:
                            self.errors += 1
                elif kind == 14:
                    self.disconnects.append(bytes(buf[j:j + length]).hex())
                i = j + length
            del buf[:i]
            if acks:
                self.acked[k] += acks
                self.progress.set()

    def send(self, give_up: float) -> dict:
        socks, sent, acked, window = self.socks, self.sent, self.acked, self.window
        nxt = [0] * len(socks)
        remaining = sum(len(c) for c in self.chunks)
        while remaining and time.monotonic() < give_up:
            moved = False
            for k, chunks in enumerate(self.chunks):
                if nxt[k] < len(chunks):
                    count, data = chunks[nxt[k]]
                    if sent[k] + count - acked[k] <= window[k]:
                        socks[k].sendall(data)
                        sent[k] += count
                        nxt[k] += 1
                        remaining -= 1
                        moved = True
            if not moved:
                self.progress.wait(0.005)
                self.progress.clear()
        while sum(acked) < sum(sent) and time.monotonic() < give_up and not self.disconnects:
            self.progress.wait(0.01)
            self.progress.clear()
        self.last_send = time.monotonic()
        return dict(unacked=self.job["messages"] - sum(acked), refused=self.errors,
                    no_subscribers=self.no_subscribers, disconnects=self.disconnects)

    def idle(self) -> None:
        if time.monotonic() - self.last_send > 60:
            for sock in self.socks:
                sock.sendall(b"\xc0\x00")  # PINGREQ
            self.last_send = time.monotonic()
        time.sleep(0.01)

    def close(self) -> None:
        for sock in self.socks:
            try:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        for r in self.readers:
            r.join(2)


SENDERS = {"raw": _RawSender, "paho": _PahoSender}


def _publish_run(conn, url: str, job: dict) -> None:
    from plumbing.mqtt import parse_mqtt_url

    target = parse_mqtt_url(url)
    pid = os.getpid()
    sender = SENDERS[job["publisher"]](target, job)

    # Like a real producer, listen for the fleet's receipts (nobody sends any in the baseline).
    receipted: dict[tuple[str, str], set[int]] = {}
    subscribed = threading.Event()
    listener = _paho_client(f"bench-rcpt-{job['tag']}-{pid}")

    def on_receipt(_c, _u, msg) -> None:
        r = json.loads(msg.payload)
        seen = receipted.setdefault((msg.topic.split("/")[3], r["boot"]), set())
        for first, last in r["seqs"]:
            seen.update(range(first, last + 1))

    listener.on_connect = lambda c, *_a: c.subscribe(f"popkit/v1/{job['kit']}/+/receipt", qos=1)
    listener.on_subscribe = lambda *_a: subscribed.set()
    listener.on_message = on_receipt
    listener.connect(target.host, target.port, keepalive=60, clean_start=True)
    listener.loop_start()
    try:
        if not subscribed.wait(10):
            raise TimeoutError("receipt listener could not subscribe")
        conn.send(("ready", job["messages"]))
        if conn.recv()[0] != "go":
            return
        cpu0 = cpu_seconds()
        t_first = time.time()
        outcome = sender.send(time.monotonic() + job["timeout"])
        conn.send(("published", dict(t_first=t_first, t_acked=time.time(), cpu_s=cpu_seconds() - cpu0, **outcome)))

        # Keep the sessions alive (and receipts coming) until the main process has counted.
        while not conn.poll(0.05):
            sender.idle()
        _cmd, grace_s = conn.recv()
        expected = {(d, boot): n for d, _role, boot, n in job["devices"]}

        def covered() -> int:
            return sum(len(s & set(range(1, expected[key] + 1))) for key, s in list(receipted.items()) if key in expected)

        deadline = time.monotonic() + grace_s
        count = covered()
        while count < job["messages"] and time.monotonic() < deadline:
            time.sleep(0.05)
            count = covered()
        conn.send(("done", dict(receipted=count)))
    finally:
        listener.disconnect()
        listener.loop_stop()
        sender.close()


class Publisher:
    """The main process's handle on the publisher process."""

    def __init__(self, url: str):
        ctx = mp.get_context("spawn")  # a clean interpreter: no fleet threads, no shared GIL
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_publisher_main, args=(child, url), name="bench-publisher", daemon=True)
        self.proc.start()
        child.close()

    def _expect(self, kind: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"publisher sent no {kind!r} within {timeout:.0f}s")
            got, value = self.conn.recv()
            if got == "error":
                raise RuntimeError(f"publisher failed: {value}")
            if got == kind:
                return value
            if not (got == "published" and kind == "done"):  # timings we stopped waiting for
                raise RuntimeError(f"publisher sent {got!r}, expected {kind!r}")

    def prepare(self, job: dict, timeout: float = 120) -> None:
        """Build the payloads and connect; nothing is timed yet."""
        self.conn.send(("run", job))
        self._expect("ready", timeout)

    def go(self) -> float:
        t0 = time.perf_counter()
        self.conn.send(("go", None))
        return t0

    def published(self, timeout: float) -> dict | None:
        """The publisher's own timings, once every PUBACK is in (None if not within ``timeout``)."""
        try:
            return self._expect("published", timeout)
        except TimeoutError:
            return None

    def finish(self, grace_s: float) -> dict:
        self.conn.send(("finish", grace_s))
        return self._expect("done", grace_s + 15)

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("quit", None))
            except OSError:
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        self.conn.close()


def pub_rate(job: dict, stats: dict | None) -> float | None:
    if not stats:
        return None
    return round(job["messages"] / max(stats["t_acked"] - stats["t_first"], 1e-9))


# ---------------------------------------------------------------- baseline: a bare paho subscriber

class BareSubscriber:
    """Plain paho, QoS 1, auto-ack, paho's own network thread, the protocol the URL asks for (as the fleet)."""

    def __init__(self, url: str, topic_filter: str, target: int, receive_maximum: int):
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from plumbing.mqtt import parse_mqtt_url

        self.target = target
        self.count = 0
        self.t_done: float | None = None
        self.done = threading.Event()
        subscribed = threading.Event()
        dest = parse_mqtt_url(url)
        self.client = _paho_client(f"bench-base-{secrets.token_hex(3)}", v5=dest.v5)
        self.client.on_connect = lambda c, *_a: c.subscribe(topic_filter, qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        if dest.v5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = receive_maximum  # the same flow control the fleet asks for
            self.client.connect(dest.host, dest.port, keepalive=60, clean_start=True, properties=props)
        else:  # 3.1.1: the broker's max_inflight_messages (0, unlimited, in our config) is the window
            self.client.connect(dest.host, dest.port, keepalive=60)
        self.client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise TimeoutError("baseline subscriber could not subscribe")

    def _on_message(self, _c, _u, _msg) -> None:
        self.count += 1
        if self.count == self.target:
            self.t_done = time.perf_counter()
            self.done.set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_baseline(publisher: Publisher, broker, url: str, job: dict, receive_maximum: int, timeout: float) -> dict:
    sub = BareSubscriber(url, f"popkit/v1/{job['kit']}/+/telemetry", job["messages"], receive_maximum)
    try:
        publisher.prepare(job)
        cpu0, bcpu0 = cpu_seconds(), cpu_seconds(broker.proc.pid)
        t0 = publisher.go()
        sub.done.wait(timeout)
        t1 = sub.t_done or time.perf_counter()
        received = sub.count
        cpu1, bcpu1 = cpu_seconds(), cpu_seconds(broker.proc.pid)
        stats = publisher.published(10)
        publisher.finish(0)
    finally:
        sub.close()
    n = job["messages"]
    return dict(received=received, seconds=t1 - t0, msg_s=(n if received >= n else received) / (t1 - t0),
                pub_msg_s=pub_rate(job, stats), pub=stats or {}, complete=received >= n,
                cpu_s=cpu_split(t1 - t0, cpu1 - cpu0, bcpu1 - bcpu0, stats))


def cpu_split(wall: float, main_cpu: float, broker_cpu: float, stats: dict | None) -> dict:
    """CPU seconds each process spent in the timed window (the publisher's: until its last PUBACK).

    main = this process: the bare subscriber in the baseline, the fleet (all its threads) in the fleet run.
    """
    return dict(wall=round(wall, 2), main=round(main_cpu, 2), broker=round(broker_cpu, 2),
                publisher=round(stats["cpu_s"], 2) if stats else None)


# ---------------------------------------------------------------- the fleet

def count_rows(store, job: dict) -> tuple[int, int, int]:
    """(rows, distinct (device, boot, seq), sequence gaps the streams table reports) for this job's boots."""
    from sqlalchemy import func, select

    from fleet import db

    t = db.telemetry.c
    boots = [boot for _d, _r, boot, _n in job["devices"]]
    where = t.boot.in_(boots)
    with store.engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(db.telemetry).where(where)).scalar_one()
        distinct = conn.execute(
            select(func.count()).select_from(select(t.device_id, t.boot, t.seq).where(where).distinct().subquery())
        ).scalar_one()
        s = db.streams.c
        gaps = conn.execute(select(func.coalesce(func.sum(s.max_seq - s.received), 0)).where(s.boot.in_(boots))).scalar_one()
    return rows, distinct, int(gaps)


def probe_fleet(url: str, ingest, job: dict, timeout: float = 15) -> None:
    """Birth of the kit's agent plus one telemetry message, resent until the fleet has committed both.

    Proves the fleet's subscription is live before the clock starts, and warms its code paths.
    """
    from kits.contract import DeviceTelemetry, State, encode, topic
    from plumbing.mqtt import parse_mqtt_url

    agent = f"{job['kit']}-agent"
    birth = encode(State(boot="a0a0", seq=0, ts=int(time.time() * 1000), online=True, role="agent"))
    tel = encode(DeviceTelemetry(boot="a0a0", seq=1, ts=int(time.time() * 1000), uptime_s=1))
    client = _paho_client(f"bench-probe-{secrets.token_hex(3)}")
    dest = parse_mqtt_url(url)
    client.connect(dest.host, dest.port, clean_start=True)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not (ingest.metrics.states >= 1 and ingest.metrics.ingested >= 1):
            if time.monotonic() > deadline:
                raise TimeoutError("the fleet did not ingest the probe messages")
            client.publish(topic(job["kit"], agent, "state"), birth, qos=1)
            client.publish(topic(job["kit"], agent, "telemetry"), tel, qos=1)
            end = time.monotonic() + 0.5
            while time.monotonic() < end and not (ingest.metrics.states >= 1 and ingest.metrics.ingested >= 1):
                time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()


def run_fleet(stack: ExitStack, publisher: Publisher, broker, url: str, db_url: str, job: dict, timeout: float) -> dict:
    from fleet.service import build
    from fleet.settings import FleetSettings

    settings = FleetSettings(mqtt_url=url, db_url=db_url, client_id=f"bench-fleet-{secrets.token_hex(3)}")
    store, ingest = build(settings)
    stack.callback(store.close)
    store.registry.register_kit(manifest_for(job))
    ingest.start()
    stack.callback(ingest.stop)
    if not ingest.connected.wait(10):
        raise TimeoutError("the fleet did not connect to the broker")
    probe_fleet(url, ingest, job)
    m = ingest.metrics
    base_ingested, base_batches, base_received = m.ingested, m.batches, m.received

    n = job["messages"]
    publisher.prepare(job)
    cpu0, bcpu0 = cpu_seconds(), cpu_seconds(broker.proc.pid)
    t0 = publisher.go()
    deadline = t0 + timeout
    stats = None
    while m.ingested - base_ingested < n:
        now = time.perf_counter()
        if now > deadline:
            break
        if stats is None and publisher.conn.poll():
            stats = publisher.published(0)
        time.sleep(POLL_S)
    t1 = time.perf_counter()
    ingested = m.ingested - base_ingested  # by the end of the timed window
    cpu1, bcpu1 = cpu_seconds(), cpu_seconds(broker.proc.pid)
    complete = ingested >= n
    if stats is None:
        stats = publisher.published(10)
    rows, distinct, gaps = count_rows(store, job)
    finished = publisher.finish(grace_s=10 if complete else 1)
    batches = m.batches - base_batches
    return dict(
        seconds=t1 - t0,
        msg_s=ingested / (t1 - t0),
        complete=complete,
        rows=rows,
        distinct=distinct,
        gaps=gaps,
        fleet_ingested=ingested,
        fleet_duplicates=m.duplicates,
        rejected=sum(m.rejected.values()),
        store_errors=m.store_errors,
        receipts=m.receipts,
        receipted=finished["receipted"],
        batches=batches,
        avg_batch=round((m.received - base_received) / batches, 1) if batches else 0,
        pub_msg_s=pub_rate(job, stats),
        pub=stats or {},
        cpu_s=cpu_split(t1 - t0, cpu1 - cpu0, bcpu1 - bcpu0, stats),
        settings=dict(batch_max=settings.batch_max, batch_wait_ms=settings.batch_wait_ms,
                      receive_maximum=settings.receive_maximum),
    )


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from fleet.settings import FleetSettings

    p = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"{QUICK['messages']:,} messages from {QUICK['devices']} devices (under a minute)")
    p.add_argument("--devices", type=int, help=f"simulated devices (default {FULL['devices']}, quick {QUICK['devices']})")
    p.add_argument("--messages", type=int, help=f"messages in all (default {FULL['messages']:,}, quick {QUICK['messages']:,})")
    p.add_argument("--db", help="SQLAlchemy URL of the fleet database (default: SQLite, WAL, in a temp dir); "
                                "a postgresql:// database is used as is and not dropped")
    p.add_argument("--clients", type=int, help="MQTT connections in the publisher process (default 4, more for big runs)")
    p.add_argument("--publisher", choices=sorted(SENDERS), default="raw",
                   help="raw: pre-encoded MQTT v5 packets on plain sockets (default; costs the machine least); "
                        "paho: paho clients publishing one message per call")
    p.add_argument("--timeout", type=float, help="seconds each phase may take before it reports what it lost")
    p.add_argument("--protocol", choices=("5", "3.1.1"), default=FleetSettings.model_fields["mqtt_protocol"].default,
                   help="MQTT version of the fleet and of the baseline subscriber (default: the fleet's default; "
                        "publishers always send v5)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.messages = args.messages or preset["messages"]
    args.devices = args.devices or preset["devices"]
    if args.messages < args.devices or args.devices < 1:
        p.error("need at least one message per device")
    args.clients = max(args.clients or 4, -(-args.messages // MAX_PER_CLIENT))
    args.timeout = args.timeout or max(20.0, args.messages / 2500)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s", stream=sys.stderr)
    from fleet.settings import FleetSettings
    from popkit.broker import MosquittoBroker

    n, m = args.messages, args.devices
    started = time.perf_counter()
    speed_before = cpu_speed_us()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="popkit-bench-ingest-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        broker = MosquittoBroker(data_dir=tmp / "broker")
        broker.start()
        stack.callback(broker.stop)
        db_url = args.db or f"sqlite:///{tmp / 'fleet.db'}"
        db_kind = db_url.split(":", 1)[0].split("+", 1)[0]
        say(f"bench.ingest: {n:,} messages from {m} devices, {args.clients} {args.publisher} publisher connections, "
            f"broker {broker.url}, database {db_kind}")

        publisher = Publisher(broker.url)
        stack.callback(publisher.close)
        receive_maximum = FleetSettings().receive_maximum
        # The fleet and the baseline subscriber speak the same protocol version.
        url = f"{broker.url}?protocol={args.protocol}"

        # Warm-up: the publisher process, the broker and paho settle before anything is timed.
        warm = make_job("w", "bench-w", m, max(m, min(n // 10, 5_000)), args.clients, args.timeout, args.publisher)
        run_baseline(publisher, broker, url, warm, receive_maximum, args.timeout)

        job = make_job("b", "bench-b", m, n, args.clients, args.timeout, args.publisher)
        base = run_baseline(publisher, broker, url, job, receive_maximum, args.timeout)
        say(f"baseline: bare paho subscriber received {base['received']:,} in {base['seconds']:.2f}s = "
            f"{base['msg_s']:,.0f} msg/s (publishers {base['pub_msg_s']:,} msg/s acked)")
        if not base["complete"]:
            say(f"baseline: timed out after {args.timeout:.0f}s with {n - base['received']:,} messages missing")

        job = make_job("f", "bench-f", m, n, args.clients, args.timeout, args.publisher)
        fleet = run_fleet(stack, publisher, broker, url, db_url, job, args.timeout)
        lost = n - fleet["distinct"]
        duplicates = fleet["rows"] - fleet["distinct"]
        say(f"fleet: {fleet['fleet_ingested']:,} committed in {fleet['seconds']:.2f}s = {fleet['msg_s']:,.0f} msg/s "
            f"(publishers {fleet['pub_msg_s']:,} msg/s acked; {fleet['batches']} batches, avg {fleet['avg_batch']})")
        if not fleet["complete"]:
            say(f"fleet: timed out after {args.timeout:.0f}s")
        say(f"check: {fleet['rows']:,} rows, {fleet['distinct']:,} distinct, lost {lost}, duplicates {duplicates}, "
            f"gaps {fleet['gaps']}, receipts {fleet['receipts']:,} naming {fleet['receipted']:,} messages")
        if fleet["receipts"] <= 0:
            say("check: FAILED, the fleet sent no receipts")

    speed_after = cpu_speed_us()
    persisted = n / fleet["seconds"] if fleet["complete"] else fleet["msg_s"]
    baseline = base["msg_s"]
    result = {
        "bench": "ingest",
        "messages": n,
        "persisted_msg_s": round(persisted),
        "baseline_msg_s": round(baseline),
        "ratio": round(persisted / baseline, 3) if baseline else None,
        "lost": lost,
        "duplicates": duplicates,
        "devices": m,
        "db": db_kind,
        "protocol": args.protocol,
        "persisted_s": round(fleet["seconds"], 3),
        "baseline_s": round(base["seconds"], 3),
        "baseline_complete": base["complete"],
        "fleet_complete": fleet["complete"],
        "fleet_duplicates": fleet["fleet_duplicates"],
        "rejected": fleet["rejected"],
        "store_errors": fleet["store_errors"],
        "receipts": fleet["receipts"],
        "receipted": fleet["receipted"],
        "gaps": fleet["gaps"],
        "batches": fleet["batches"],
        "avg_batch": fleet["avg_batch"],
        "pub_msg_s_baseline": base["pub_msg_s"],
        "pub_msg_s_fleet": fleet["pub_msg_s"],
        "publisher": args.publisher,
        "clients": args.clients,
        "pub_unacked": base["pub"].get("unacked", n) + fleet["pub"].get("unacked", n),
        "pub_no_subscribers": base["pub"].get("no_subscribers", 0) + fleet["pub"].get("no_subscribers", 0),
        "cpu_s_baseline": base["cpu_s"],
        "cpu_s_fleet": fleet["cpu_s"],
        **fleet["settings"],
        "cpu_speed_us": [speed_before, speed_after],
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result), flush=True)
    return 1 if lost or duplicates or fleet["receipts"] <= 0 else 0


if __name__ == "__main__":
    sys.exit(main())
