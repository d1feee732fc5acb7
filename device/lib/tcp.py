# tcp.py: a non-blocking TCP connection whose connect has started; each board's connect_tcp uses it
# (pkmqtt waits for the connect to finish, so nothing blocks the app's loop), and the Stream that
# pkmqtt and the download read and write it through.

import select
import socket
from time import ticks_diff, ticks_ms
from asyncio import core  # type: ignore[attr-defined]  # (MicroPython's scheduler: its stubs have no core)
from errno import EINPROGRESS

_addr = {}  # type: dict  # (host, port) -> address: resolve once (getaddrinfo blocks)


def open_tcp(host, port):
    key = (host, port)
    ai = _addr.get(key)
    if ai is None:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        _addr[key] = ai
    s = socket.socket(ai[0], ai[1], ai[2])
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.errno != EINPROGRESS:
            s.close()
            raise
    return s


def connector(br, connect_tcp):
    """The broker part of a device config -> (connect function for pkmqtt, user, password).

    `br`: {"host", "port", "user", "password", "tls", "ca"} as `popkit kit provision` writes it
    (or [host, port], an open bench broker). With tls the socket is wrapped before its TCP connect
    has finished: the handshake runs in pkmqtt's Stream reads and writes, so it never blocks the
    app, and the broker must present a certificate the kit's CA signed."""
    if isinstance(br, (list, tuple)):
        host, port = br
        return (lambda: connect_tcp(host, port)), None, None
    host = br["host"]
    port = br.get("port", 8883 if br.get("tls") else 1883)
    if not br.get("tls"):
        return (lambda: connect_tcp(host, port)), br.get("user"), br.get("password")
    import ssl
    from binascii import a2b_base64

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # type: ignore[attr-defined]  # (in MicroPython, not its stubs)
    # mbedTLS here reads DER: the PEM's base64 lines, decoded
    ctx.load_verify_locations(cadata=a2b_base64("".join(
        ln for ln in br["ca"].split("\n") if ln and not ln.startswith("-----"))))

    def connect():
        return ctx.wrap_socket(connect_tcp(host, port), server_hostname=host, do_handshake_on_connect=False)

    return connect, br.get("user"), br.get("password")


class Stream:
    """asyncio's Stream as pkmqtt and fetch.py use it (readinto, write, drain, out_buf), and close()
    closing the socket. Not asyncio.StreamReader: that loads asyncio/stream.py whole, its server and
    helpers with it, ~1.9 KB of heap a device never uses; this is a third of that. readinto() and
    drain() are generators, awaited as asyncio's own are: each parks the task on the socket in the
    loop's I/O queue until it is ready."""

    def __init__(self, s):
        self.s = s
        self.out_buf = b""  # what the socket did not take yet

    def readinto(self, buf, ms=0):
        """Bytes read into buf (0: the peer closed). ``ms``: at most that long, then asyncio.TimeoutError,
        looking every 5 ms: no timer task and runner task beside the read, as asyncio.wait_for_ms takes
        (~0.6 KB of heap for as long as the read waits, which is most of a download)."""
        if not ms:
            yield core._io_queue.queue_read(self.s)
            return self.s.readinto(buf)
        t0 = ticks_ms()
        while True:
            n = self.s.readinto(buf)
            if n is not None:
                return n
            if ticks_diff(ticks_ms(), t0) >= ms:
                raise core.TimeoutError
            yield from core.sleep_ms(5)

    def write(self, buf):
        if not self.out_buf:  # straight to the socket; only what it does not take is queued
            n = self.s.write(buf)
            if n == len(buf):
                return
            if n is not None:
                buf = buf[n:]
        self.out_buf += buf

    def drain(self, ms=0):
        """Until the socket took all that is queued. ``ms``: at most that long, then asyncio.TimeoutError,
        looking every 5 ms through a poll of its own for writing (a write is not sure to wait for a
        connect under way), as readinto() does: no asyncio.wait_for_ms, whose module a door then never
        loads (~0.8 KB)."""
        if not self.out_buf:  # always yields: a loop of write and drain cannot starve the others
            return (yield from core.sleep_ms(0))
        mv = memoryview(self.out_buf)
        off = 0
        p = None
        if ms:
            t0 = ticks_ms()
            p = select.poll()
            p.register(self.s, select.POLLOUT)
        while off < len(mv):
            if p is None:
                yield core._io_queue.queue_write(self.s)
            else:
                while not p.poll(0):
                    if ticks_diff(ticks_ms(), t0) >= ms:
                        raise core.TimeoutError
                    yield from core.sleep_ms(5)
            n = self.s.write(mv[off:])
            if n is not None:
                off += n
        self.out_buf = b""

    def close(self):
        self.s.close()
