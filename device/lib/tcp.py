# tcp.py: a non-blocking TCP connection whose connect has started; each board's connect_tcp uses it
# (pkmqtt waits for the connect to finish, so nothing blocks the app's loop).

import socket
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
