"""A TCP proxy between the firmware and a real broker that a test can make misbehave.

The broker stays the real Mosquitto; the proxy only withholds things, as a
bad network or a hung broker would:

* ``silent = True``: new connections are accepted and never answered (a broker
  process that is hung, or a captive portal that swallows the port);
* ``freeze()``: every open connection stops carrying bytes either way, with
  both TCP connections left open (a dead broker behind a live socket);
* ``drop_pubacks = n``: the next n PUBACKs on their way to the device vanish.

It parses MQTT framing in both directions and records what the device sent
(``sent``: list of (first byte, body)), so a test can see a retransmission's
DUP flag and packet id on the wire.
"""

from __future__ import annotations

import select
import socket
import threading

from popkit.broker import free_port


def split_packets(buf: bytearray) -> list[tuple[int, bytes, bytes]]:
    """Take the complete MQTT packets off the front of ``buf``: (first byte, body, raw bytes)."""
    out = []
    while len(buf) >= 2:
        n, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return out
            b = buf[i]
            n |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        if len(buf) < i + n:
            return out
        raw = bytes(buf[: i + n])
        out.append((buf[0], raw[i:], raw))
        del buf[: i + n]
    return out


class MqttProxy:
    def __init__(self, broker_port: int):
        self.broker_port = broker_port
        self.port = free_port()
        self.silent = False
        self.drop_pubacks = 0
        self.dropped_pubacks: list[int] = []
        self.sent: list[tuple[int, bytes]] = []
        self.accepted = 0
        self._frozen: set[int] = set()
        self._conns: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", self.port))
        self._srv.listen(8)
        self._srv.settimeout(0.2)
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def freeze(self) -> None:
        """Every connection open now goes silent both ways (new ones are served normally)."""
        with self._lock:
            self._frozen.update(id(c) for c, _ in self._conns)

    def close(self) -> None:
        self._stop = True
        self._srv.close()
        with self._lock:
            for c, u in self._conns:
                for s in (c, u):
                    if s is not None:
                        s.close()

    def publishes(self) -> list[tuple[int, int, bytes]]:
        """PUBLISH packets the device sent: (flags nibble, packet id or 0, payload)."""
        out = []
        for first, body in list(self.sent):
            if first & 0xF0 != 0x30:
                continue
            tl = int.from_bytes(body[:2], "big")
            i = 2 + tl
            pid = 0
            if first & 0x06:
                pid = int.from_bytes(body[i:i + 2], "big")
                i += 2
            out.append((first & 0x0F, pid, body[i:]))
        return out

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                client, _ = self._srv.accept()
            except OSError:
                continue
            self.accepted += 1
            upstream = None
            if not self.silent:
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.broker_port), timeout=2)
                except OSError:
                    client.close()
                    continue
            with self._lock:
                self._conns.append((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket | None) -> None:
        up_buf, down_buf = bytearray(), bytearray()
        socks = [client] + ([upstream] if upstream else [])
        try:
            while not self._stop:
                ready, _, _ = select.select(socks, [], [], 0.2)
                frozen = id(client) in self._frozen
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        if frozen:  # a dead broker never says goodbye
                            socks.remove(s)
                            continue
                        return
                    if upstream is None or frozen:
                        continue  # swallowed
                    if s is client:
                        up_buf += data
                        for first, body, raw in split_packets(up_buf):
                            self.sent.append((first, body))
                            upstream.sendall(raw)
                    else:
                        down_buf += data
                        for first, body, raw in split_packets(down_buf):
                            if first == 0x40 and self.drop_pubacks > 0:
                                self.drop_pubacks -= 1
                                self.dropped_pubacks.append(int.from_bytes(body[:2], "big"))
                                continue
                            client.sendall(raw)
        except OSError:
            pass
        finally:
            if id(client) not in self._frozen:
                client.close()
                if upstream:
                    upstream.close()
