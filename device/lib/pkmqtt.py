# pkmqtt.py: an asyncio MQTT 3.1.1 client for MicroPython, QoS 0 and 1.
#
# Resilience after peterhinch's mqtt_as: every public call waits for the link,
# tries, and on OSError schedules a reconnect; a dead broker is found by missed
# ping responses; the link state is a pair of Flags (`up`, `down`);
# incoming messages land in a fixed ring that drops the oldest and counts it.
# After micropython-lib's umqtt: the client is handed its socket (a `connect`
# function from the board layer), so a test hands it any socket it likes.
#
# Transport contract: `connect()` returns (or, if it is a coroutine, returns
# when awaited) a non-blocking socket-like object with read/readinto/write/close
# that select.poll understands; its TCP connect may still be in progress. The
# caller's loop is never blocked: all I/O goes through a Stream (tcp.py: asyncio's, less the rest
# of asyncio/stream.py).
#
# Two tasks while started: the keeper (connects with backoff and jitter, then
# pings, retransmits and watches for missed ping responses) and, per
# connection, the reader. Everything else runs in the callers' tasks. With
# `on_msg` the reader hands each message to it at once, no ring and no task
# of the caller's waiting on recv() (link.py: ~0.5 KB of heap less a door).
#
# Bounded memory: one receive buffer (rx_buf + 64 bytes) and one send scratch
# buffer, allocated once; at most `max_inflight` QoS 1 publishes await their
# PUBACK (each keeps its topic and payload for retransmission); the incoming
# ring (none with on_msg) holds `queue_len` messages. A PUBLISH whose payload does not fit the
# receive buffer but is within `max_msg` (a lighting timeline) is read straight
# into one buffer of its exact size, the payload the app is handed: no standing
# buffer the size of the largest message. Over `max_msg` it is read through,
# acknowledged and counted in `oversize`, never buffered.

import asyncio
import random
from asyncio import core
from time import ticks_ms, ticks_diff

from micropython import const

from log import log
from tcp import Stream

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)

_MAX_MISSED_PINGS = const(2)  # this many PINGREQs unanswered when the next is due: the broker is dead
_MAX_OUTBUF = const(4096)  # bytes queued beyond the kernel's buffer before we call the link dead
_SCRATCH = const(320)  # a PUBLISH that fits goes out in one write (one TCP segment)
_RX_SLACK = const(64)  # fixed header, topic and packet id on top of rx_buf
_RX_BUF = const(512)  # receipts, commands, small configs: everything but a timeline
_POLL_MS = const(5)
_CONNECT_POLL_MS = const(20)

_EPROTO = const(71)
_ECONNRESET = const(104)
_ENOTCONN = const(107)
_ETIMEDOUT = const(110)

_INFO = const(3)
_WARN = const(2)

_GEN = type((lambda: (yield))())  # what calling an `async def` returns in MicroPython


class Flag:
    """asyncio.Event's set, clear, is_set and wait, made as asyncio/event.py makes them (a queue of
    the tasks waiting, pushed back onto the loop's run queue by set()), without that module: its
    Event and ThreadSafeFlag classes take ~1.2 KB of a door's heap, and an Event more than a Flag."""

    def __init__(self):
        self.v = False
        self._w = core.TaskQueue()

    def set(self):
        self.v = True
        w = self._w
        while w.peek():
            core._task_queue.push(w.pop())

    def clear(self):
        self.v = False

    def is_set(self):
        return self.v

    def wait(self):  # a generator, as Event.wait: awaited, its task waits off the run queue until set()
        if not self.v:
            t = core.cur_task
            self._w.push(t)
            t.data = self._w  # where a cancel (wait_for_ms's timeout) takes it from
            yield
        return True


class MQTTError(Exception):
    """The broker refused something outright (CONNACK code, SUBACK failure): not a link fault."""


def _vbi(buf, i, n):
    """Write n as an MQTT variable byte integer at buf[i]; return the index after it."""
    while n > 0x7F:
        buf[i] = (n & 0x7F) | 0x80
        n >>= 7
        i += 1
    buf[i] = n
    return i + 1


def _put_str(buf, i, s):
    n = len(s)
    buf[i] = n >> 8
    buf[i + 1] = n & 0xFF
    buf[i + 2:i + 2 + n] = s
    return i + 2 + n


class Client:
    def __init__(self, connect, client_id, keepalive=60, clean=True, will=None, user=None, password=None,
                 max_inflight=8, queue_len=8, max_msg=1024, response_ms=5000, ping_ms=0,
                 backoff_ms=500, backoff_max_ms=30000, rx_buf=_RX_BUF, on_msg=None):
        """`connect`: zero-argument function giving a socket (see the module notes).
        `will`: (topic, payload[, qos[, retain]]); qos defaults to 1, retain to True.
        `keepalive` in seconds; a PINGREQ every `ping_ms` (default keepalive / 4).
        `response_ms`: how long CONNACK and SUBACK may take, and a PUBACK before the
        PUBLISH is sent again. Reconnects wait uniform(backoff/2, min(max, backoff * 2**n)) ms.
        `on_msg(topic, payload, retained)`: called by the reader for each message, after its PUBACK,
        instead of the ring that recv() reads; it must not raise, and must not wait."""
        self._connect_fn = connect
        # CONNECT, built once: client id, then Will topic and payload, user and password as flagged
        flags = 0x02 if clean else 0
        parts = [client_id]
        if will:
            parts += will[:2]
            flags |= 0x04 | ((will[2] if len(will) > 2 else 1) << 3) | (0x20 if len(will) < 4 or will[3] else 0)
        if user:
            parts += (user, password or b"")
            flags |= 0xC0
        n = 10
        for i in range(len(parts)):
            if isinstance(parts[i], str):
                parts[i] = parts[i].encode()
            n += 2 + len(parts[i])
        pkt = bytearray(n + 5)
        pkt[0] = _CONNECT
        i = _put_str(pkt, _vbi(pkt, 1, n), b"MQTT")
        pkt[i] = 4  # protocol level: 3.1.1
        pkt[i + 1] = flags
        pkt[i + 2] = keepalive >> 8
        pkt[i + 3] = keepalive & 0xFF
        i += 4
        for p in parts:
            i = _put_str(pkt, i, p)
        self._cpkt = bytes(pkt[:i])
        self._resp_ms = response_ms
        self._ping_ms = ping_ms or (keepalive * 250 if keepalive else 15000)
        self._backoff = backoff_ms
        self._backoff_max = backoff_max_ms

        # Link state: `up` is set while connected, `down` while not; wait on either.
        self.up = Flag()
        self.down = Flag()
        self.down.set()
        self.conns = 0  # connections made so far: a change tells a caller its session is new
        # Counters for the device's health telemetry and for tests.
        self.oversize = 0  # incoming PUBLISHes larger than max_msg, acknowledged and discarded
        self.retransmits = 0  # QoS 1 PUBLISHes sent again (DUP) for want of a PUBACK
        self.dead = 0  # links given up for missed ping responses
        self.on_tick = None  # called (no arguments) every keepalive tick while connected

        self._st = None  # the Stream while connected (it closes the socket)
        self._keeper = None
        self._reader = None
        self._draining = False
        self._pid = 0
        self._pings = 0
        self._subpid = 0  # the SUBACK awaited; -1: a subscribe under way has none yet
        self._subrc = 0
        self._ev = Flag()  # something arrived: a PUBACK, a SUBACK, a message (waiters look again)

        # In-flight QoS 1 publishes, one slot each: free when its pid is 0.
        n = max_inflight
        self._fpid = [0] * n
        self._ftopic = [None] * n
        self._fmsg = [None] * n
        self._fflag = bytearray(n)  # bit 0 retain, bit 1 sent before (so DUP from now on)
        self._fsent = [0] * n  # ticks_ms of the last send on this link; 0 = not sent on it yet

        # The incoming ring: parallel fixed lists, oldest at _qi (attributes only a ring's: an instance
        # dict steps up at 37 entries).
        self._on_msg = on_msg
        if on_msg is None:
            self._qt = [None] * queue_len
            self._qm = [None] * queue_len
            self._qr = bytearray(queue_len)
            self._qi = 0
            self._qn = 0
            self.drops = 0  # incoming messages dropped oldest-first from the full ring

        self._max_msg = max_msg
        self._big = None  # the payload of a PUBLISH read past the receive buffer (see _read_packet)
        self._rb = bytearray(min(rx_buf, max_msg) + _RX_SLACK)  # unread input is _rb[_rs:_re]
        self._rmv = memoryview(self._rb)
        self._rs = 0
        self._re = 0
        self._sb = bytearray(_SCRATCH)
        self._smv = memoryview(self._sb)

    # ------------------------------------------------------------ public

    def start(self):
        """Start keeping the link up. Returns at once; wait on `up` to know it is."""
        if self._keeper is None:
            self._keeper = asyncio.create_task(self._keep())
        return self

    async def publish(self, topic, msg, retain=False, qos=0, wait=True):
        """Publish. QoS 1 is sent again (DUP) until its PUBACK comes, across reconnects. With
        wait=False a QoS 1 publish returns once it is in flight (at most max_inflight are: this
        waits for a free slot), else when its PUBACK arrives."""
        if isinstance(topic, str):
            topic = topic.encode()
        if not qos:
            while True:
                if not self.up.is_set():
                    await self.up.wait()
                try:
                    await self._ready()
                    self._write_publish(topic, msg, retain, 0, 0, 0)
                    await self._flush()
                    return
                except OSError as e:
                    self._lost(e)
        fp = self._fpid
        while True:  # take a free slot
            for k in range(len(fp)):
                if not fp[k]:
                    break
            else:
                await self._wait()
                continue
            break
        pid = fp[k] = self._new_pid()
        self._ftopic[k] = topic
        self._fmsg[k] = msg
        self._fflag[k] = 1 if retain else 0
        self._fsent[k] = 0
        # Send now if the link is up; else the keeper sends it when the link is back.
        if self.up.is_set():
            await self._send_slot(k, pid)
        while wait and fp[k] == pid:
            await self._wait()

    def publish_now(self, topic, msg):
        """A QoS 0 PUBLISH written at once, or not at all (False: no link, or a flush under way): for a
        question worth nothing late (link.py's claims at the kit's hub). What the socket does not take
        at once goes out with the next flush."""
        if self._st is None or self._draining or not self.up.is_set():
            return False
        try:
            self._write_publish(topic, msg, False, 0, 0, 0)
        except OSError as e:
            self._lost(e)
            return False
        return True

    async def subscribe(self, topic, qos=1):
        """Subscribe and wait for the SUBACK; returns the granted QoS, MQTTError if refused.
        One subscribe at a time: a second caller waits its turn."""
        if isinstance(topic, str):
            topic = topic.encode()
        n = 2 + 2 + len(topic) + 1
        if n > 127:
            raise ValueError("topic too long")  # one remaining-length byte below
        while self._subpid:
            await asyncio.sleep_ms(_POLL_MS)
        self._subpid = -1
        try:
            while True:
                if not self.up.is_set():
                    await self.up.wait()
                self._subpid = pid = self._new_pid()
                self._subrc = -1
                pkt = bytearray(n + 2)
                pkt[0] = 0x82
                pkt[1] = n
                pkt[2] = pid >> 8
                pkt[3] = pid & 0xFF
                pkt[_put_str(pkt, 4, topic)] = qos
                try:
                    await self._send(pkt)
                    t0 = ticks_ms()
                    while self._subrc < 0:
                        if ticks_diff(ticks_ms(), t0) > self._resp_ms:
                            raise OSError(_ETIMEDOUT)
                        await asyncio.sleep_ms(_POLL_MS)
                except OSError as e:
                    self._lost(e)
                    continue
                if self._subrc == 0x80:
                    raise MQTTError(topic)
                return self._subrc
        finally:
            self._subpid = 0

    async def recv(self):
        """The next incoming message, oldest first: (topic bytes, payload bytes, retained bool)."""
        while not self._qn:
            await self._wait()
        i = self._qi
        r = self._qt[i], self._qm[i], bool(self._qr[i])
        self._qt[i] = self._qm[i] = None
        self._qi = (i + 1) % len(self._qt)
        self._qn -= 1
        return r

    def inflight(self):
        """QoS 1 publishes still waiting for their PUBACK."""
        return len(self._fpid) - self._fpid.count(0)

    async def disconnect(self):
        """Leave gracefully (DISCONNECT: the broker discards the Will) and stop reconnecting."""
        k = self._keeper
        self._keeper = None
        if k is not None and k is not asyncio.current_task():
            k.cancel()
        if self._st is not None:
            try:
                await self._send(b"\xe0\x00")
            except OSError:
                pass
        self._lost(None)

    # ------------------------------------------------------------ the keeper

    async def _keep(self):
        attempt = 0
        last_ping = 0
        tick = max(50, min(self._ping_ms, self._resp_ms) // 4)
        while True:
            if self._reader is None:  # no link and no attempt under way: start one
                self._reader = asyncio.create_task(self._read_loop())
                t0 = ticks_ms()
                while self._reader is not None and not self.up.is_set() and ticks_diff(ticks_ms(), t0) < self._resp_ms:
                    await asyncio.sleep_ms(_CONNECT_POLL_MS)
                if not self.up.is_set():  # refused, failed, or no CONNACK in time: back off
                    self._lost("no CONNACK" if self._reader is not None else None)
                    delay = random.randint(self._backoff // 2, min(self._backoff_max, self._backoff << min(attempt, 16)))
                    attempt += 1
                    log(_INFO, "mqtt", "no connection; again in %d ms", delay)
                    await asyncio.sleep_ms(delay)
                    continue
                attempt = 0
                last_ping = ticks_ms()
            try:
                now = ticks_ms()
                if ticks_diff(now, last_ping) >= self._ping_ms:
                    if self._pings >= _MAX_MISSED_PINGS:
                        self.dead += 1
                        raise OSError(_ETIMEDOUT)  # no ping response: the broker is gone
                    self._pings += 1
                    last_ping = now
                    await self._send(b"\xc0\x00")
                fp = self._fpid
                for k in range(len(fp)):
                    s = self._fsent[k]
                    if fp[k] and (not s or ticks_diff(now, s) >= self._resp_ms):
                        await self._send_slot(k, fp[k])
            except OSError as e:
                self._lost(e)
                continue
            if self.on_tick is not None:
                self.on_tick()
            await asyncio.sleep_ms(tick)

    def _lost(self, why):
        """Drop the link (once); the keeper brings it back."""
        if why is not None:
            log(_INFO, "mqtt", "link lost: %r", why)
        r = self._reader
        if r is not None and r is not asyncio.current_task():
            r.cancel()
        st = self._st
        self._reader = self._st = None
        if st is not None:
            try:
                st.close()
            except OSError:
                pass
        self.up.clear()
        self.down.set()
        self._ev.set()  # waiters look again (in-flight slots stay: they go out after the reconnect)

    def _new_pid(self):
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._fpid and self._pid != self._subpid:
                return self._pid

    async def _wait(self):
        """Until something arrives."""
        self._ev.clear()
        await self._ev.wait()

    # ------------------------------------------------------------ sending

    async def _ready(self):
        """Wait until the stream may be written (asyncio's Stream must not be written while it
        drains); OSError when there is no link. A packet built and written after this with no
        await in between goes out whole and in order."""
        while self._draining:
            await asyncio.sleep_ms(_POLL_MS)
        if self._st is None:
            raise OSError(_ENOTCONN)

    async def _flush(self):
        """Wait only when the kernel's send buffer is full, and then not longer than response_ms."""
        st = self._st
        if st is None or not st.out_buf:
            return
        if len(st.out_buf) > _MAX_OUTBUF:
            raise OSError(_ETIMEDOUT)
        self._draining = True
        try:
            await st.drain(self._resp_ms)
        except asyncio.TimeoutError:
            raise OSError(_ETIMEDOUT)
        finally:
            self._draining = False

    async def _send(self, buf):
        await self._ready()
        self._st.write(buf)
        await self._flush()

    async def _send_slot(self, k, pid):
        """(Re)send in-flight slot k if it still holds pid; on OSError schedule a reconnect."""
        try:
            await self._ready()
            if self._fpid[k] != pid:
                return  # acknowledged meanwhile
            f = self._fflag[k]
            if f & 2:
                self.retransmits += 1
            self._fflag[k] = f | 2
            self._fsent[k] = ticks_ms() or 1
            self._write_publish(self._ftopic[k], self._fmsg[k], f & 1, 1, pid, f >> 1)
            await self._flush()
        except OSError as e:
            self._lost(e)

    def _write_publish(self, topic, msg, retain, qos, pid, dup):
        sb = self._sb
        n = 2 + len(topic) + len(msg) + (2 if qos else 0)
        sb[0] = _PUBLISH | (dup << 3) | (qos << 1) | (1 if retain else 0)
        i = _put_str(sb, _vbi(sb, 1, n), topic)  # topics are short: they fit the scratch
        if qos:
            sb[i] = pid >> 8
            sb[i + 1] = pid & 0xFF
            i += 2
        if i + len(msg) <= _SCRATCH:  # the whole packet in one write: one TCP segment
            sb[i:i + len(msg)] = msg
            self._st.write(self._smv[:i + len(msg)])
        else:
            self._st.write(self._smv[:i])
            self._st.write(msg)

    # ------------------------------------------------------------ receiving

    async def _fill(self, need):
        """Have at least `need` (<= the buffer's size) unread bytes in the receive buffer."""
        if self._rs + need > len(self._rb):  # move what is left to the front
            n = self._re - self._rs
            self._rb[0:n] = self._rmv[self._rs:self._re]
            self._rs, self._re = 0, n
        while self._re - self._rs < need:
            k = await self._st.readinto(self._rmv[self._re:])
            if k == 0:
                raise OSError(_ECONNRESET)  # the broker closed the connection
            if k:
                self._re += k

    async def _read_packet(self):
        """One packet: (first byte, body index in _rb, body length); the body stays valid until
        the next read. A packet too big for the buffer is skipped: (0, its packet id, 0)."""
        rb = self._rb
        await self._fill(2)
        k = n = sh = 0
        while True:  # remaining length
            k += 1
            if k >= self._re - self._rs:
                await self._fill(k + 1)
            b = rb[self._rs + k]
            n |= (b & 0x7F) << sh
            sh += 7
            if not b & 0x80:
                break
            if k > 3:
                raise OSError(_EPROTO)
        k += 1
        op = rb[self._rs]
        if k + n <= len(rb):
            await self._fill(k + n)
            i = self._rs + k
            self._rs = i + n
            return op, i, n
        pid = 0
        if op & 0xF0 == _PUBLISH:
            # Topic (and packet id) into the buffer; a topic that alone overflows it drops the link.
            await self._fill(k + 2)
            j = k + 2 + ((rb[self._rs + k] << 8) | rb[self._rs + k + 1])
            if op & 6:
                await self._fill(j + 2)
                pid = (rb[self._rs + j] << 8) | rb[self._rs + j + 1]
                j += 2
            else:
                await self._fill(j)
            if n - (j - k) <= self._max_msg:
                # The payload goes straight into a buffer of its own size, handed to the app.
                body = self._big = bytearray(n - (j - k))
                i = self._rs + k
                start = self._rs + j
                have = min(self._re - start, len(body))
                body[0:have] = self._rmv[start:start + have]
                # Consumed through the payload's buffered part; the topic stays in place in _rb
                # (nothing is read into it before the caller has taken the topic).
                self._rs = start + have
                if have < len(body):
                    mv = memoryview(body)
                    while have < len(body):
                        m = await self._st.readinto(mv[have:])
                        if m == 0:
                            raise OSError(_ECONNRESET)
                        if m:
                            have += m
                return op, i, j - k
        n += k
        while n:  # read it through
            if self._re == self._rs:
                await self._fill(min(n, len(rb)))
            m = min(self._re - self._rs, n)
            self._rs += m
            n -= m
        if op & 0xF0 == _PUBLISH:
            self.oversize += 1
            log(_WARN, "mqtt", "skipped a message over max_msg")
        return 0, pid, 0

    async def _read_loop(self):
        """Connect, then read packets until the link fails (the keeper times the connect)."""
        rb = self._rb
        mv = self._rmv
        try:
            self._rs = self._re = 0
            self._draining = False
            s = self._connect_fn()
            if isinstance(s, _GEN):
                s = await s
            st = self._st = Stream(s)
            # CONNECT goes in the Stream's queue and drains once the socket is writable: connected.
            st.out_buf = self._cpkt
            await st.drain()
            op, i, n = await self._read_packet()
            if op != _CONNACK or n != 2:
                raise OSError(_EPROTO)
            if rb[i + 1]:
                raise MQTTError("CONNACK %d" % rb[i + 1])
            self.conns += 1
            self._pings = 0
            for k in range(len(self._fsent)):
                self._fsent[k] = 0  # whatever was in flight goes out again, first
            self.down.clear()
            self.up.set()
            log(_INFO, "mqtt", "connected (%d)", self.conns)
            while True:
                op, i, n = await self._read_packet()
                t = op & 0xF0
                pid = 0
                m = None  # a message for on_msg
                if t == _PUBLISH:
                    j = i + 2 + ((rb[i] << 8) | rb[i + 1])
                    topic = bytes(mv[i + 2:j])
                    if op & 6:
                        pid = (rb[j] << 8) | rb[j + 1]
                        j += 2
                    m = self._big
                    if m is None:
                        m = bytes(mv[j:i + n])
                    self._big = None
                    if self._on_msg is None:  # into the ring; when it is full the oldest goes
                        size = len(self._qt)
                        if self._qn == size:
                            self._qi = (self._qi + 1) % size
                            self._qn -= 1
                            self.drops += 1
                        q = (self._qi + self._qn) % size
                        self._qt[q] = topic
                        self._qm[q] = m
                        self._qr[q] = op & 1
                        self._qn += 1
                        self._ev.set()
                        topic = m = None  # not held while the next packet is awaited (a timeline's payload)
                elif t == _PUBACK:
                    p = (rb[i] << 8) | rb[i + 1]
                    fp = self._fpid
                    if p in fp:
                        k = fp.index(p)
                        fp[k] = 0
                        self._ftopic[k] = self._fmsg[k] = None
                        self._ev.set()
                elif t == _PINGRESP:
                    self._pings = 0
                elif t == _SUBACK:
                    if ((rb[i] << 8) | rb[i + 1]) == self._subpid:
                        self._subrc = rb[i + 2]
                        self._ev.set()
                elif not op:  # an oversize PUBLISH, skipped: acknowledge it all the same
                    pid = i
                try:
                    if pid:
                        await self._ready()
                        sb = self._sb  # the PUBACK in the send scratch: built and written with no await between
                        sb[0] = _PUBACK
                        sb[1] = 2
                        sb[2] = pid >> 8
                        sb[3] = pid & 0xFF
                        self._st.write(self._smv[:4])
                        await self._flush()
                finally:
                    if m is not None:
                        # handed on after its PUBACK (and even if the PUBACK failed: the message is
                        # here), as the ring's reader took it: a handler that never returns (a hung
                        # loop the watchdog resets) must not have the broker redeliver it to the next
                        # boot; a repeat is the handler's to drop (link.py: its recent ids)
                        h, m = m, None
                        self._on_msg(topic, h, bool(op & 1))
                        topic = h = None
        except Exception as e:  # OSError, MQTTError, a malformed packet: drop the link, start afresh
            self._lost(e)
