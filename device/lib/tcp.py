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
