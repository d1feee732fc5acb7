"""Tell systemd how the agent is doing (``sd_notify``), with no dependency.

The unit (``deploy/popkit-agent.service``) is ``Type=notify`` with ``WatchdogSec=30``: systemd
counts the agent as started only after :func:`ready`, and restarts it when no :func:`watchdog`
arrives within 30 s. Ping from the main loop (not from a side thread that would keep pinging
while the loop is stuck), every :func:`watchdog_period` seconds. :func:`stopping` before a
clean shutdown; :func:`status` for the line ``systemctl status`` shows.

systemd passes ``$NOTIFY_SOCKET``: a datagram unix socket, a path or, starting with ``@``, a name
in the abstract namespace. Without the variable (a terminal, the tests, the demo) every call is a
no-op that returns False; a send that fails is logged and returns False, never raises: losing a
notification must not take the agent down (systemd will restart it if the watchdog starves).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Mapping

log = logging.getLogger(__name__)


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``, newline-separated assignments) to systemd; True if sent."""
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("sd_notify: unsupported NOTIFY_SOCKET %r (only unix sockets)", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify: cannot send %r: %s", state.split("\n", 1)[0], exc)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """The agent is up (its drivers opened, the outbox loaded): systemd marks the unit started."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def watchdog() -> bool:
    """Still alive; send every :func:`watchdog_period` seconds."""
    return notify("WATCHDOG=1")


def stopping(status: str | None = None) -> bool:
    return notify("STOPPING=1" + (f"\nSTATUS={status}" if status else ""))


def status(text: str) -> bool:
    return notify(f"STATUS={text}")


def watchdog_period(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None when systemd wants none.

    Follows ``sd_watchdog_enabled()``: ``$WATCHDOG_USEC`` set and, if ``$WATCHDOG_PID`` is set,
    equal to this process.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = env.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2_000_000
