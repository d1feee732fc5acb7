"""Network namespaces for tests: a kit and a fleet each in a namespace of its own, joined by a veth
uplink that a test impairs with what the kernel offers.

Topology (addresses from a free 10.77.N.0/24, names from this process's pid, so a crashed run never
blocks the next; :func:`sweep_stale` removes what a dead run left)::

    root namespace (this process)       kit namespace                      fleet namespace
    producers ---- clean veth ----> .6  kit broker
                                        | its bridge
                                        .1 ===== uplink veth (impaired) ===== .2  fleet broker
    fleet ingest ---- clean veth, routed to .2 -------------------------> .10 (delivers to .2)

Only the uplink is impaired, so what a test sees is exactly what the kit broker's bridge to the
fleet broker suffers. Impairment (:func:`impair`): ``tc netem`` (loss, delay, duplication,
reordering) where the kernel has it; where it refuses netem, nftables random loss and packet
duplication, an htb rate limit and an htb slow lane a random share of packets is steered into
(``meta priority``), which reorders them (tbf alone for the rate when htb is refused too).
:func:`flap` takes the uplink down and up; each is reported as applied or refused, never silently.

Root only; :func:`refusal` says why a machine cannot make namespaces (the only reason to skip).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

PREFIX = "popkit-t"  # namespaces: popkit-t<pid>-kit, popkit-t<pid>-fleet
IF_PREFIX = "pk"  # interfaces: pk<pid><end> (15 characters at most: a pid has 7 digits at most)
TABLE = "popkit_impair"
_NS_RE = re.compile(rf"^{PREFIX}(\d+)-")
_IF_RE = re.compile(rf"^{IF_PREFIX}(\d+)[a-z]{{2}}$")


class NetnsError(RuntimeError):
    """A namespace command failed where it must not."""


def run(*args: str, ns: str | None = None, check: bool = True, timeout: float = 10.0) -> subprocess.CompletedProcess:
    """``args`` as a command, inside namespace ``ns`` when given."""
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def refusal() -> str | None:
    """Why this machine cannot make network namespaces for a test, or None when it can."""
    if os.geteuid() != 0:
        return "not root (network namespaces and veth pairs need CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "no `ip` command (apt-get install iproute2)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"the kernel refuses `ip netns add`: {made.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    listed = run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def _delete_ns(name: str) -> None:
    """Stop what still runs in ``name`` (brokers a test started there), then remove it."""
    pids = run("ip", "netns", "pids", name, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run("ip", "netns", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Remove the namespaces and root-side veths of test runs whose process is gone; returns their names."""
    swept = []
    for name in _namespaces():
        m = _NS_RE.match(name)
        if m and not _alive(int(m.group(1))):
            _delete_ns(name)
            swept.append(name)
    for line in run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        ifname = line.split(": ", 2)[1].split("@")[0] if ": " in line else ""
        m = _IF_RE.match(ifname)
        if m and not _alive(int(m.group(1))):
            run("ip", "link", "del", ifname, check=False)
            swept.append(ifname)
    return swept


@dataclass
class Uplink:
    """Two namespaces, the uplink between them and the clean access links from the test's namespace."""

    kit_ns: str
    fleet_ns: str
    kit_if: str  # the uplink's kit end (in kit_ns)
    fleet_if: str  # the uplink's fleet end (in fleet_ns)
    kit_uplink_addr: str  # the kit end's address
    fleet_addr: str  # the fleet end's address: the fleet broker listens here (the test reaches it via its access link)
    kit_addr: str  # the kit namespace's address on its access link: the kit broker listens here
    root_ifs: tuple[str, ...] = ()

    def ns_of(self, ifname: str) -> str:
        return self.kit_ns if ifname == self.kit_if else self.fleet_ns

    def peer_of(self, ifname: str) -> str:
        return self.fleet_addr if ifname == self.kit_if else self.kit_uplink_addr


def _veth(a: str, a_ns: str | None, b: str, b_ns: str) -> None:
    run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    if a_ns:
        run("ip", "link", "set", a, "netns", a_ns)
    run("ip", "link", "set", b, "netns", b_ns)


def _addr(ns: str | None, ifname: str, cidr: str) -> None:
    run(*(["ip", "-n", ns] if ns else ["ip"]), "addr", "add", cidr, "dev", ifname)
    run(*(["ip", "-n", ns] if ns else ["ip"]), "link", "set", ifname, "up")


def _free_net(pid: int) -> str:
    """A 10.77.N /24 no route of this namespace uses yet (another run's), tried from one the pid picks."""
    used = run("ip", "-4", "route", "show", "table", "all", check=False).stdout
    for k in range(200):
        net = f"10.77.{20 + (pid + k) % 200}"
        if f"{net}." not in used:
            return net
    raise NetnsError("no free 10.77.N.0/24 for a test uplink (200 runs at once?)")


@contextlib.contextmanager
def uplink() -> Iterator[Uplink]:
    """Make the topology in the module docstring; always removes it again, failure or not."""
    pid = os.getpid()
    net = _free_net(pid)
    kit_ns, fleet_ns = f"{PREFIX}{pid}-kit", f"{PREFIX}{pid}-fleet"

    def name(end: str) -> str:
        return f"{IF_PREFIX}{pid}{end}"

    up = Uplink(kit_ns, fleet_ns, name("uk"), name("uf"), f"{net}.1", f"{net}.2", f"{net}.6",
                root_ifs=(name("ar"), name("br")))
    try:
        for ns in (kit_ns, fleet_ns):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        # the uplink: kit .1 <-> fleet .2
        _veth(up.kit_if, kit_ns, up.fleet_if, fleet_ns)
        _addr(kit_ns, up.kit_if, f"{up.kit_uplink_addr}/30")
        _addr(fleet_ns, up.fleet_if, f"{up.fleet_addr}/30")
        # the producers' access link: root .5 <-> kit .6
        _veth(name("ar"), None, name("ak"), kit_ns)
        _addr(None, name("ar"), f"{net}.5/30")
        _addr(kit_ns, name("ak"), f"{up.kit_addr}/30")
        # the fleet's access link: root .9 <-> fleet .10, and the fleet broker's address routed through it
        _veth(name("br"), None, name("bf"), fleet_ns)
        _addr(None, name("br"), f"{net}.9/30")
        _addr(fleet_ns, name("bf"), f"{net}.10/30")
        run("ip", "route", "add", f"{up.fleet_addr}/32", "via", f"{net}.10", "dev", name("br"))
        yield up
    finally:
        for ifname in up.root_ifs:  # takes its peer along
            run("ip", "link", "del", ifname, check=False)
        for ns in (kit_ns, fleet_ns):
            if ns in _namespaces():
                _delete_ns(ns)


# ------------------------------------------------------------------ impairment


@dataclass
class Profile:
    """What to do to each direction of the uplink."""

    loss_pct: int = 3
    duplicate_pct: int = 3
    delay_ms: int = 30
    jitter_ms: int = 15
    reorder_pct: int = 15  # netem: sent at once; the htb stand-in: steered into the slow lane
    rate_kbit: int = 2000
    slow_lane_kbit: int = 64  # the htb stand-in's lane for the reordered share


@dataclass
class Impairment:
    """What was applied to the uplink (both directions), and what the kernel refused and why."""

    up: Uplink
    applied: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    nft: bool = False

    def counters(self) -> dict[str, int]:
        """Packets each nftables impairment rule hit, both ends summed ({} where nftables was not used)."""
        totals: dict[str, int] = {}
        if not self.nft:
            return totals
        for ns in (self.up.kit_ns, self.up.fleet_ns):
            listed = run("nft", "-j", "list", "table", "ip", TABLE, ns=ns, check=False)
            if listed.returncode != 0:
                continue
            for item in json.loads(listed.stdout)["nftables"]:
                rule = item.get("rule")
                if not rule or "comment" not in rule:
                    continue
                packets = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), 0)
                totals[rule["comment"]] = totals.get(rule["comment"], 0) + packets
        return totals


def _each_end(imp: Impairment, what: str, commands) -> bool:
    """Run ``commands(dev, ns, peer)`` (a list of argvs) at both ends of the uplink; record ``what`` as
    applied, or as refused with the kernel's own words."""
    up = imp.up
    for dev, ns in ((up.kit_if, up.kit_ns), (up.fleet_if, up.fleet_ns)):
        for argv in commands(dev, ns, up.peer_of(dev)):
            done = run(*argv, ns=ns, check=False)
            if done.returncode != 0:
                imp.refused.append(f"{what}: `{' '.join(argv)}` refused: {done.stderr.strip() or done.stdout.strip()}")
                return False
    imp.applied.append(what)
    return True


def _nft_rule(chain: str, direction: str, dev: str, pct: int, name: str, *action: str) -> tuple[str, ...]:
    """A rule hitting a random ``pct`` % of the packets through ``dev`` (counted, named ``name``)."""
    return ("nft", "add", "rule", "ip", TABLE, chain, direction, dev, "numgen", "random", "mod", "100",
            "<", str(pct), "counter", *action, "comment", f'"{name}"')


def impair(up: Uplink, p: Profile | None = None) -> Impairment:
    """Impair both directions of the uplink as far as the kernel allows (see the module docstring)."""
    p = p or Profile()
    imp = Impairment(up)
    netem = ("delay", f"{p.delay_ms}ms", f"{p.jitter_ms}ms", "loss", f"{p.loss_pct}%", "duplicate",
             f"{p.duplicate_pct}%", "reorder", f"{p.reorder_pct}%", "50%", "rate", f"{p.rate_kbit}kbit")
    if _each_end(imp, f"netem {' '.join(netem)}",
                 lambda dev, _ns, _peer: [("tc", "qdisc", "replace", "dev", dev, "root", "netem", *netem)]):
        return imp
    # No netem: what the kernel does have. Loss where packets arrive (the sender is told nothing),
    # duplication and the lane a packet takes where they leave.
    imp.refused.append(f"delay and jitter ({p.delay_ms} ms ± {p.jitter_ms} ms): only netem delays every packet; "
                       "the slow lane below delays its share only")
    if shutil.which("nft") is None:
        imp.refused.append("nftables loss, duplication and reordering: no `nft` command (apt-get install nftables)")
    elif _each_end(imp, "nftables table", lambda _dev, _ns, _peer: [
            ("nft", "add", "table", "ip", TABLE),
            ("nft", "add", "chain", "ip", TABLE, "pre", "{ type filter hook prerouting priority -300; policy accept; }"),
            ("nft", "add", "chain", "ip", TABLE, "post", "{ type filter hook postrouting priority 0; policy accept; }"),
    ]):
        imp.applied.pop()  # the table is plumbing, not an impairment
        imp.nft = True
        _each_end(imp, f"nftables random loss {p.loss_pct}% (numgen random)", lambda dev, _ns, _peer: [
            _nft_rule("pre", "iifname", dev, p.loss_pct, "loss", "drop")])
        _each_end(imp, f"nftables packet duplication {p.duplicate_pct}% (dup to the peer)", lambda dev, _ns, peer: [
            _nft_rule("post", "oifname", dev, p.duplicate_pct, "duplicate", "dup", "to", peer, "device", dev)])
    rate, slow = f"{p.rate_kbit}kbit", f"{p.slow_lane_kbit}kbit"
    htb = _each_end(imp, f"htb rate limit {rate}", lambda dev, _ns, _peer: [
        ("tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "10"),
        ("tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate", rate, "ceil", rate)])
    if not htb:
        _each_end(imp, f"tbf rate limit {rate}", lambda dev, _ns, _peer: [
            ("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit", "latency", "400ms")])
    if htb and imp.nft:
        # htb takes a packet's class from its priority when the major number is the qdisc's: no tc filter needed.
        _each_end(imp, f"reordering: {p.reorder_pct}% of packets (numgen random) through an htb slow lane at {slow}",
                  lambda dev, _ns, _peer: [
                      ("tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:20", "htb",
                       "rate", slow, "ceil", slow, "burst", "1600b", "cburst", "1600b"),
                      _nft_rule("post", "oifname", dev, p.reorder_pct, "slow_lane", "meta", "priority", "set", "1:20")])
    else:
        imp.refused.append("reordering: needs netem, or htb and nftables together")
    return imp


def bridge_connections(up: Uplink, port: int) -> list[str]:
    """The established TCP connections from the kit namespace to the fleet broker (``ss`` lines)."""
    listed = run("ss", "-Htn", "state", "established", "dst", f"{up.fleet_addr}:{port}", ns=up.kit_ns, check=False)
    return [line for line in listed.stdout.splitlines() if line.strip()]


@dataclass
class Flap:
    down_s: float
    open_before: int | None = None  # bridge connections when the link went down (None: no reset asked)
    open_after: int | None = None  # ... and after `ss -K`

    @property
    def reset(self) -> int:
        return (self.open_before or 0) - (self.open_after or 0)

    def __str__(self) -> str:
        done = f"uplink down {self.down_s:.1f} s"
        if self.open_before is None:
            return done
        if self.reset:
            return done + f", the kit's TCP state to the fleet broker lost ({self.reset} connection(s) reset)"
        return done + f", no connection reset ({self.open_before} open before `ss -K`, {self.open_after} after)"


def flap(up: Uplink, down_s: float, *, port: int | None = None) -> Flap:
    """Take the uplink down for ``down_s`` seconds and up again, as a venue's link drops.

    With ``port`` (the fleet broker's), the kit side also loses its TCP state to it while down (as
    a router that restarts does: ``ss -K``), so the bridge really reconnects and sends its QoS 1
    messages in flight again; the fleet broker learns it when the link returns (the kit answers its
    retransmissions with a reset) or when the bridge logs in anew. A link down for seconds alone
    would only stall TCP, which retransmits, and the bridge's keepalive (60 s) notices nothing."""
    run("ip", "-n", up.kit_ns, "link", "set", up.kit_if, "down")
    result = Flap(down_s)
    try:
        if port is not None:
            result.open_before = len(bridge_connections(up, port))
            run("ss", "-K", "dst", f"{up.fleet_addr}:{port}", ns=up.kit_ns, check=False)
            result.open_after = len(bridge_connections(up, port))
        time.sleep(down_s)
    finally:
        run("ip", "-n", up.kit_ns, "link", "set", up.kit_if, "up")
    return result
