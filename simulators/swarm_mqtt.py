"""The swarm's MQTT 3.1.1 client: packets as bytes, and one asyncio Protocol per connection.

Why not paho: a paho client is a thread (or a loop slot), a socket pair and a
few kilobytes of Python state, and it decodes every packet through several
recv() calls; five thousand of them do not fit in one process. Here a
connection is a small object whose ``data_received`` parses every packet one
read brought (a buffered parser: one read, many packets) and answers incoming
QoS 1 PUBLISHes with one write at the end.

Only what a simulated ESP32 needs: CONNECT (persistent session, Will, login),
PUBLISH QoS 0/1 out, PUBLISH QoS 0/1 in (PUBACKed here), SUBSCRIBE, PINGREQ,
DISCONNECT. Retransmission, keepalive timing and reconnects belong to the owner
(simulators/swarm.py), which knows when a device is due for what.
"""

from __future__ import annotations

import asyncio

CONNECT = 0x10
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBACK = 9
PINGRESP = 13

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
MAX_PACKET = 1 << 20  # the brokers we talk to cap packets at 1 MiB (popkit/broker.py)

CONNACK_REASONS = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                   4: "bad user name or password", 5: "not authorized"}


class MqttProtocolError(Exception):
    """The broker sent bytes that are not the MQTT we speak; the connection is dropped."""


# ---------------------------------------------------------------- packets

def varint(n: int) -> bytes:
    """An MQTT variable byte integer (remaining length)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def lp(data: bytes) -> bytes:
    """A length-prefixed MQTT string or binary field."""
    if len(data) > 0xFFFF:
        raise ValueError(f"MQTT field of {len(data)} bytes is over 65535")
    return len(data).to_bytes(2, "big") + data


def connect_packet(client_id: bytes, keepalive: int, *, clean: bool = False,
                   will: tuple[bytes, bytes, int, bool] | None = None,
                   username: str | None = None, password: str | None = None) -> bytes:
    """CONNECT for MQTT 3.1.1; ``will`` is (topic, payload, qos, retain)."""
    flags = 0x02 if clean else 0
    payload = [lp(client_id)]
    if will is not None:
        w_topic, w_payload, w_qos, w_retain = will
        flags |= 0x04 | (w_qos << 3) | (0x20 if w_retain else 0)
        payload += [lp(w_topic), lp(w_payload)]
    if username is not None:
        flags |= 0x80
        payload.append(lp(username.encode()))
        if password is not None:
            flags |= 0x40
            payload.append(lp(password.encode()))
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + keepalive.to_bytes(2, "big") + b"".join(payload)
    return bytes((CONNECT,)) + varint(len(body)) + body


def subscribe_packet(mid: int, topics: list[tuple[bytes, int]]) -> bytes:
    body = mid.to_bytes(2, "big") + b"".join(lp(t) + bytes((qos,)) for t, qos in topics)
    return b"\x82" + varint(len(body)) + body


def publish_packet(topic_lp: bytes, payload: bytes, mid: int, retain: bool = False) -> bytes:
    """A QoS 1 PUBLISH. ``topic_lp`` is the topic already length-prefixed (a device builds it once).

    This is the hot path of the swarm (one per message): the usual 2-byte remaining length is
    written inline rather than through varint().
    """
    rem = len(topic_lp) + 2 + len(payload)
    head = 0x33 if retain else 0x32
    if rem < 0x80:
        hdr = bytes((head, rem))
    elif rem < 0x4000:
        hdr = bytes((head, (rem & 0x7F) | 0x80, rem >> 7))
    else:
        hdr = bytes((head,)) + varint(rem)
    return b"".join((hdr, topic_lp, mid.to_bytes(2, "big"), payload))


# ---------------------------------------------------------------- connection

class MqttConnection(asyncio.Protocol):
    """One TCP (or TLS) connection to the broker, reporting to its ``owner``.

    The owner implements ``on_connection(conn)`` (send CONNECT now), ``on_connack(conn,
    session_present, rc)``, ``on_message(conn, topic, payload)``, ``on_puback(conn, mid)``,
    ``on_suback(conn, codes)`` and ``on_lost(conn, exc)``. Incoming QoS 1 messages are
    PUBACKed here, after ``on_message`` returned: a receipt is taken in before the broker
    may forget it.
    """

    __slots__ = ("owner", "transport", "last_rx", "last_tx", "_buf", "_loop")

    def __init__(self, owner, loop: asyncio.AbstractEventLoop):
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self._loop = loop
        self._buf = b""
        self.last_rx = self.last_tx = loop.time()

    # asyncio calls these -------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.on_connection(self)

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.owner.on_lost(self, exc)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self._loop.time()
        buf = self._buf + data if self._buf else data
        n, pos, acks = len(buf), 0, None
        try:
            while n - pos >= 2:
                # Remaining length: 1 to 4 bytes, 7 bits each; -1 while not all of it is here.
                i, rem, shift = pos + 1, 0, 0
                while True:
                    if i >= n:
                        rem = -1
                        break
                    b = buf[i]
                    i += 1
                    rem |= (b & 0x7F) << shift
                    if b < 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MqttProtocolError("remaining length over 4 bytes")
                if rem < 0:
                    break
                end = i + rem
                if end > n:
                    if rem > MAX_PACKET:
                        raise MqttProtocolError(f"packet of {rem} bytes")
                    break
                ack = self._packet(buf[pos], buf, i, end)
                if ack is not None:
                    if acks is None:
                        acks = [ack]
                    else:
                        acks.append(ack)
                pos = end
        except (MqttProtocolError, IndexError, ValueError) as exc:
            self.owner.on_protocol_error(self, exc)
            self.abort()
            return
        self._buf = buf[pos:] if pos < n else b""
        if acks is not None and self.transport is not None:
            # One write for every PUBACK this read called for.
            self.transport.write(b"".join(acks))
            self.last_tx = self.last_rx

    def _packet(self, head: int, buf: bytes, i: int, end: int) -> bytes | None:
        kind = head >> 4
        if kind == PUBLISH:
            qos = (head >> 1) & 3
            tlen = (buf[i] << 8) | buf[i + 1]
            j = i + 2 + tlen
            topic = buf[i + 2:j]
            if qos == 0:
                self.owner.on_message(self, topic, buf[j:end])
                return None
            if qos != 1:
                raise MqttProtocolError("QoS 2 PUBLISH (we subscribe at QoS 1)")
            mid = buf[j:j + 2]
            self.owner.on_message(self, topic, buf[j + 2:end])
            return b"\x40\x02" + mid
        if kind == PUBACK:
            self.owner.on_puback(self, (buf[i] << 8) | buf[i + 1])
        elif kind == CONNACK:
            self.owner.on_connack(self, bool(buf[i] & 1), buf[i + 1])
        elif kind == SUBACK:
            self.owner.on_suback(self, buf[i + 2:end])
        elif kind != PINGRESP:
            raise MqttProtocolError(f"unexpected packet type {kind}")
        return None

    # the owner calls these -----------------------------------------------

    def send(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None:
            transport.write(data)
            self.last_tx = self._loop.time()

    def abort(self) -> None:
        """Drop the connection now (no DISCONNECT: the broker sends the Will)."""
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Send DISCONNECT and close once what is queued went out (no Will)."""
        if self.transport is not None:
            self.transport.write(DISCONNECT_PACKET)
            self.transport.close()
