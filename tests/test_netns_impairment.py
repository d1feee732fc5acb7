"""A kit's uplink to the fleet that loses, doubles, reorders and drops out: the ledger still balances.

The real kit topology, in network namespaces this test makes (tests/netns.py draws it): the kit's
Mosquitto in one namespace, the fleet's in another, joined by a veth uplink; the kit broker
bridges to the fleet broker across it, as `popkit kit provision --bridge-to` configures it (TLS,
the bridge's own account, a persistent QoS 1 session), the fleet broker's certificate naming its
uplink address. The producers (three FleetLinks, the demo kit's agent, door and lighting
controller, in this process) reach the kit broker, and the fleet's ingest (SQLite) the fleet
broker, each over an access link of its own that nothing impairs: the only impaired path is the
bridge's, kit broker to fleet broker, both directions.

The uplink gets ``tc netem`` loss, delay, duplication and reordering where the kernel has netem;
where it refuses netem (a Firecracker VM's kernel does), nftables random loss and packet
duplication, an htb rate limit and an htb slow lane that reorders a random share of packets
(tests/netns.py). Whatever could not be applied is said loudly: a warning in pytest's summary and
a line on the terminal. Three times mid-stream the uplink goes down for seconds and the kit loses
its TCP state (a venue router restarting): the bridge really reconnects, redelivers what was in
flight and the producers resend what was not receipted in time (the second outage outlasts their
5 s), so the fleet sees hundreds of duplicates; the bridge's queue keeps each device's order, so a
row stored out of order is rare (the terminal line counts them), and the check is on seq anyway.

What ops must see afterwards: every message each device emitted stored exactly once, in each
device's order by sequence (its time increasing with its sequence), and every producer's outbox
empty (the fleet's receipts came back across the same link). Skipped only where the machine cannot
make network namespaces (not root, no `ip`, the kernel refuses), and the skip says so.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
import warnings

import pytest

from agent.link import FleetLink, now_ms
from kits.contract import BatteryTelemetry, DeviceTelemetry, Event
from kits.manifest import load_manifest
from popkit.broker import MosquittoBroker, free_port, mosquitto_binary
from popkit.provision import bridge_account, provision
from tests import netns
from tests.conftest import DEMO_KIT, start_fleet, wait_until

KIT = "demo"
RATE_HZ = 15  # each producer emits this often
TICKS = 300  # 20 s of emitting
# (seconds into the stream, seconds down): the second outlasts the producers' resend_after_s (5 s)
FLAPS = ((3.0, 3.0), (8.0, 6.0), (16.0, 2.5))
BALANCE_S = 60  # how long the ledger may take to balance once the stream ended


def say(request, line: str) -> None:
    """A line on the terminal, not captured (the figures and the refusals are for whoever runs this)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(f"[netns impairment] {line}")


@pytest.fixture
def uplink(request):
    reason = netns.refusal()
    if reason is not None:
        loud = f"NETWORK IMPAIRMENT NOT TESTED: cannot make network namespaces here: {reason}"
        say(request, loud)
        warnings.warn(UserWarning(loud))
        pytest.skip(loud)
    netns.sweep_stale()
    with netns.uplink() as up:
        yield up


@pytest.fixture
def bridged(uplink, tmp_path):
    """Provisioned like test_bridge_auth (the fleet side twice, so its broker knows the kit's bridge
    account), but each broker in its namespace and listening on its veth address."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    manifest = load_manifest(DEMO_KIT)
    up = uplink
    fleet_port, kit_port = free_port(), free_port()
    fleet_side = provision(manifest, tmp_path / "fleet-side", broker_host=up.fleet_addr, broker_port=fleet_port)
    kit_side = provision(manifest, tmp_path / "kit-side", broker_host=up.kit_addr, broker_port=kit_port,
                         bridge_to=(up.fleet_addr, fleet_port, fleet_side.tls.ca))
    fleet_side = provision(manifest, fleet_side.folder, broker_host=up.fleet_addr, broker_port=fleet_port,
                           bridge_to=(up.fleet_addr, fleet_port, fleet_side.tls.ca))
    conf = kit_side.conf_dir / "bridge.conf"
    text = conf.read_text().replace(kit_side.accounts[bridge_account(KIT)], fleet_side.accounts[bridge_account(KIT)])
    # A venue's bridge retries up to every 30 s; this test's outages last seconds, so it retries sooner.
    conf.write_text(text.replace("restart_timeout 2 30", "restart_timeout 1 3"))
    started = []
    try:
        fleet_broker = MosquittoBroker(port=fleet_port, data_dir=tmp_path / "fleet-broker", host=up.fleet_addr,
                                       netns=up.fleet_ns, password_file=fleet_side.passwd, acl_file=fleet_side.acl,
                                       tls=fleet_side.tls).start()
        started.append(fleet_broker)
        kit_broker = MosquittoBroker(port=kit_port, data_dir=tmp_path / "kit-broker", host=up.kit_addr,
                                     netns=up.kit_ns, password_file=kit_side.passwd, acl_file=kit_side.acl,
                                     tls=kit_side.tls, extra_conf=f"include_dir {kit_side.conf_dir}\n").start()
        started.append(kit_broker)
        fleet = start_fleet(f"mqtts://{up.fleet_addr}:{fleet_port}?account={fleet_side.fleet_file}",
                            f"sqlite:///{tmp_path / 'fleet.db'}")
        try:
            yield {"up": up, "fleet": fleet, "fleet_broker": fleet_broker, "kit_broker": kit_broker,
                   "kit_side": kit_side}
        finally:
            fleet.ingest.stop()
            fleet.store.close()
    finally:
        for broker in reversed(started):
            broker.close()


def producers(kit_side, kit_url, tmp_path) -> dict[str, FleetLink]:
    """The demo kit's agent (for its power bank and printer), its door and its lighting controller,
    each logged in to the kit broker as itself; a receipt overdue after 5 s means a resend."""
    def link(device, role, **kw):
        url = f"{kit_url}?account={kit_side.device_file(device)}"
        return FleetLink(KIT, device, role, url, tmp_path / f"{device}.outbox.db", resend_after_s=5, **kw).start()
    return {"agent": link("demo-agent", "agent", hosted={"demo-power": "powerbank", "demo-printer": "printer"}),
            "door": link("demo-scanner-1", "scanner"),
            "lights": link("demo-lights-1", "lighting")}


class Stream:
    """Emits at a steady rate from a thread; remembers (boot, seq, ts) of everything, per device."""

    def __init__(self, links: dict[str, FleetLink]):
        self.links = links
        self.emitted: dict[str, list[tuple[str, int, int]]] = {}
        self._last_ts: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="impairment-stream", daemon=True)
        self.error: Exception | None = None

    def _emit(self, link: FleetLink, device: str, channel: str, model: type, **fields) -> None:
        ts = max(now_ms(), self._last_ts.get(device, 0) + 1)  # a device's clock never repeats a millisecond
        self._last_ts[device] = ts
        seq = link.emit(device, channel, model, ts=ts, **fields)
        self.emitted.setdefault(device, []).append((link.boot, seq, ts))

    def _run(self) -> None:
        agent, door, lights = self.links["agent"], self.links["door"], self.links["lights"]
        t0 = time.monotonic()
        try:
            for n in range(TICKS):
                self._emit(door, "demo-scanner-1", "event", Event, kind="checkin",
                           data={"event": "DEMO-NIGHT", "ticket": f"T{n:05d}", "verdict": "admitted"})
                self._emit(lights, "demo-lights-1", "telemetry", DeviceTelemetry, uptime_s=n, scene="doors")
                if n % 2:
                    self._emit(agent, "demo-printer", "event", Event, kind="print_done", data={"job": n})
                else:
                    self._emit(agent, "demo-power", "telemetry", BatteryTelemetry, source="vedirect",
                               v=12.6, i=-4.0, soc=90 - n / 10)
                time.sleep(max(0.0, t0 + (n + 1) / RATE_HZ - time.monotonic()))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.emitted.values())


def stored(store, devices) -> dict[str, list[tuple[str, int, int, int]]]:
    """(boot, seq, ts, row id) of every ledger row of ``devices``, in the order rows were stored."""
    marks = ",".join("?" * len(devices))
    rows: dict[str, list[tuple[str, int, int, int]]] = {d: [] for d in devices}
    with store.engine.connect() as conn:
        for table in ("telemetry", "events"):
            for device, boot, seq, ts, rid in conn.exec_driver_sql(
                    f"SELECT device_id, boot, seq, ts_ms, id FROM {table} WHERE device_id IN ({marks}) ORDER BY id",
                    tuple(devices)).all():
                rows[device].append((boot, seq, ts, rid))
    return rows


def arrived_late(rows) -> int:
    """Rows stored after a row with a higher seq (of the same boot): arrivals out of the device's order."""
    late, highest = 0, {}
    for boot, seq, _ts, _rid in rows:
        if seq < highest.get(boot, 0):
            late += 1
        highest[boot] = max(highest.get(boot, 0), seq)
    return late


def test_through_a_lossy_doubling_reordering_flapping_uplink_the_fleet_stores_everything_once_in_order(
        bridged, tmp_path, request):
    up, fleet, fleet_broker = bridged["up"], bridged["fleet"], bridged["fleet_broker"]
    bridge_login = f"u'{bridge_account(KIT)}'"
    wait_until(lambda: bridge_login in fleet_broker.log(), 15, what="the bridge logged in at the fleet broker")
    port = fleet_broker.port

    imp = netns.impair(up)
    say(request, "applied to the uplink, both directions: " + ("; ".join(imp.applied) or "nothing"))
    for refused in imp.refused:
        say(request, f"NOT APPLIED: {refused}")
    if imp.refused:
        warnings.warn(UserWarning("network impairment: this kernel refused part of it, the test ran with the rest. "
                                  "NOT APPLIED: " + " | ".join(imp.refused)))
    assert imp.applied, "no impairment could be applied to the uplink at all"

    links: dict[str, FleetLink] = {}
    try:
        links.update(producers(bridged["kit_side"], f"mqtts://{up.kit_addr}:{bridged['kit_broker'].port}", tmp_path))
        for link in links.values():
            assert link.connected.wait(10), f"{link.device} could not reach the kit broker"
        stream = Stream(links)
        t0 = time.monotonic()
        stream.thread.start()
        flapped = []
        for at, down in FLAPS:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            # each flap cuts a live bridge (it may still be reconnecting from the last one)
            wait_until(lambda: netns.bridge_connections(up, port), 15, what="the bridge connected again")
            flapped.append(netns.flap(up, down, port=port))
        stream.thread.join(TICKS / RATE_HZ + 30)
        assert stream.error is None, f"emitting failed: {stream.error!r}"
        assert not stream.thread.is_alive(), "the stream did not finish"
        stream_end = time.monotonic()
        for flap in flapped:
            say(request, f"flap: {flap}")

        devices = sorted(stream.emitted)
        want = stream.emitted  # per device, (boot, seq, ts) in the order it emitted them

        def balanced() -> bool:
            if any(len(link.outbox) for link in links.values()):
                return False
            got = stored(fleet.store, devices)
            return all(sorted((b, s, t) for b, s, t, _ in got[d]) == want[d] for d in devices)

        def missing() -> str:
            got = stored(fleet.store, devices)
            return ", ".join(f"{d}: {len(want[d]) - len(got[d])} of {len(want[d])} missing" for d in devices) + \
                "; outboxes " + ", ".join(f"{n}: {len(link.outbox)}" for n, link in links.items())

        deadline = time.monotonic() + BALANCE_S
        while not balanced():
            if time.monotonic() > deadline:
                pytest.fail(f"the ledger did not balance within {BALANCE_S} s of the stream's end: {missing()}")
            time.sleep(0.1)
        balance_s = time.monotonic() - stream_end

        # Every (device, boot, seq) emitted, stored exactly once; by seq, in the device's order.
        got = stored(fleet.store, devices)
        late = {}
        for d in devices:
            by_seq = sorted(got[d], key=lambda r: (r[0], r[1]))
            assert [(b, s, t) for b, s, t, _ in by_seq] == want[d], f"{d}: stored rows differ from what it emitted"
            assert len({(b, s) for b, s, _, _ in got[d]}) == len(got[d]) == len(want[d]), f"{d}: a row twice"
            ts = [t for _, _, t, _ in by_seq]
            assert all(a < b for a, b in itertools.pairwise(ts)), f"{d}: time does not increase with seq"
            late[d] = arrived_late(got[d])
        assert all(len(link.outbox) == 0 for link in links.values())
        metrics = fleet.ingest.metrics
        assert metrics.ingested == stream.total, (metrics.ingested, stream.total)

        resets = sum(flap.reset > 0 for flap in flapped)
        # The fleet broker's log line for the last login can trail the messages the bridge sent
        # right after it (a loaded machine): wait for it rather than read the log once.
        wait_until(lambda: fleet_broker.log().count(bridge_login) >= 1 + resets, 20,
                   what=f"the bridge's logins at the fleet broker after {resets} connection resets")
        logins = fleet_broker.log().count(bridge_login)
        # The producers' own sessions, on their clean access link, lost along the way (the kit broker's word).
        kit_log = bridged["kit_broker"].log()
        producer_losses = sum(f"Client {KIT}-" in line and "disconnected: " in line for line in kit_log.splitlines())
        say(request, f"{stream.total} messages from {len(devices)} devices over {TICKS / RATE_HZ:.0f} s; "
                     f"fleet received {metrics.received} (states included), stored {metrics.ingested}, "
                     f"duplicates {metrics.duplicates}; "
                     f"stored out of arrival order (restored by seq): {sum(late.values())} {late}; "
                     f"bridge logins at the fleet broker {logins}; producer sessions lost on their clean access link "
                     f"{producer_losses}; nftables hits {imp.counters()}; "
                     f"balanced {balance_s:.1f} s after the stream ended")
        if resets < len(FLAPS):
            warnings.warn(UserWarning(f"network impairment: only {resets} of {len(FLAPS)} link flaps reset the "
                                      "bridge's TCP connection (`ss -K` needs CONFIG_INET_DIAG_DESTROY); the others "
                                      "only stalled it"))
        assert logins >= 1 + resets, f"the bridge logged in {logins} times through {resets} connection resets"
    finally:
        for link in links.values():
            link.stop()
