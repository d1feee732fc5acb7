"""A kit's networks as they are at a venue, in network namespaces: the kit LAN, the Pi between it and
the venue's uplink, and the fleet beyond it.

Topology (names from this process's pid, addresses from a free 10.79.N.0/24 for the uplink; the kit
LAN is the Pi's own 10.42.0.0/24 as `popkit kit provision` lays it out)::

    esp namespace (the ESP32s)          pi namespace (kit broker, agent)          fleet namespace
    10.42.0.20 ===== kit LAN veth ===== 10.42.0.1
                                        .1 ======== uplink veth (starts cut) ======== .2  fleet broker, fleet

No namespace has a default route, and none forwards: the kit LAN reaches the Pi and nothing else,
and the fleet is reachable only from the Pi, through its uplink. The test's own process has no link
into any of them: it reaches in with a thread that joins a namespace (:func:`call_in`), and a child
it starts from there (:func:`popen_in`) is born inside.

Root only (:func:`tests.netns.refusal` says why a machine cannot); :func:`tests.netns.sweep_stale`
removes what a crashed run left, as for the uplink tests.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from tests.netns import IF_PREFIX, PREFIX, _delete_ns, _free_net, _namespaces, run

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

KIT_LAN = "10.42.0"  # the Pi's hotspot network (NetworkManager's shared mode)
PI_LAN_ADDR = f"{KIT_LAN}.1"
ESP_LAN_ADDR = f"{KIT_LAN}.20"


@dataclass
class KitNet:
    esp_ns: str
    pi_ns: str
    fleet_ns: str
    uplink_if: str  # the Pi's end of the uplink
    pi_uplink_addr: str
    fleet_addr: str

    def uplink(self, up: bool) -> None:
        """Plug the venue's uplink in, or pull it."""
        run("ip", "-n", self.pi_ns, "link", "set", self.uplink_if, "up" if up else "down")


def _join(ns: str) -> None:
    fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(ns: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` on a thread inside namespace ``ns``: the sockets it makes live there
    (and so do the threads and processes it starts), whoever uses them afterwards."""
    box: dict = {}

    def body() -> None:
        try:
            _join(ns)
            box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    t = threading.Thread(target=body, name=f"in-{ns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def popen_in(ns: str, argv: list[str], **kwargs) -> subprocess.Popen:
    """A process started inside namespace ``ns``."""
    return call_in(ns, subprocess.Popen, argv, **kwargs)


def _veth(a: str, a_ns: str, b: str, b_ns: str) -> None:
    run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    run("ip", "link", "set", a, "netns", a_ns)
    run("ip", "link", "set", b, "netns", b_ns)


def _addr(ns: str, ifname: str, cidr: str, up: bool = True) -> None:
    run("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)
    if up:
        run("ip", "-n", ns, "link", "set", ifname, "up")


@contextlib.contextmanager
def kit_net() -> Iterator[KitNet]:
    """The topology in the module docstring, the uplink cut; always removed again, failure or not."""
    pid = os.getpid()
    net = _free_net(pid)
    esp_ns, pi_ns, fleet_ns = (f"{PREFIX}{pid}-{n}" for n in ("esp", "pi", "fleet"))

    def name(end: str) -> str:
        return f"{IF_PREFIX}{pid}{end}"

    kn = KitNet(esp_ns, pi_ns, fleet_ns, name("up"), f"{net}.1", f"{net}.2")
    try:
        for ns in (esp_ns, pi_ns, fleet_ns):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        _veth(name("le"), esp_ns, name("lp"), pi_ns)
        _addr(esp_ns, name("le"), f"{ESP_LAN_ADDR}/24")
        _addr(pi_ns, name("lp"), f"{PI_LAN_ADDR}/24")
        _veth(name("up"), pi_ns, name("uf"), fleet_ns)
        _addr(pi_ns, name("up"), f"{kn.pi_uplink_addr}/30", up=False)  # the venue's uplink starts cut
        _addr(fleet_ns, name("uf"), f"{kn.fleet_addr}/30")
        yield kn
    finally:
        for ns in (esp_ns, pi_ns, fleet_ns):
            if ns in _namespaces():
                _delete_ns(ns)
