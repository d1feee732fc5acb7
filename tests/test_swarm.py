"""`popkit sim fleet`: many simulated kits in one process, against a real Mosquitto and a real fleet ingest.

What the lead's load test relies on: every message a simulated device makes reaches the fleet's
database exactly once and is receipted back (the swarm's ledger balances), the payloads are the
contract's, and after a broker restart every device is back within minutes with nothing lost.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import text

from kits.contract import Receipt, decode, encode, parse_topic
from kits.manifest import KitManifest
from simulators.swarm import Swarm, manifests
from tests.conftest import REPO, publisher, start_fleet, wait_until


@pytest.fixture
def swarm_fleet(broker, tmp_path):
    """The fleet's ingest on SQLite, with no kits yet: each test registers its swarm's."""
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=())
    yield f
    f.ingest.stop()
    f.store.close()


def register(fleet, swarm: Swarm) -> None:
    for m in swarm.manifests():
        fleet.store.registry.register_kit(m)
    fleet.ingest.refresh_devices()


def stored_keys(fleet) -> Counter:
    """(device, boot, seq) of every ledger row in the fleet's database, with how often it is there."""
    with fleet.store.engine.connect() as conn:
        rows = conn.execute(text("SELECT device_id, boot, seq FROM telemetry "
                                 "UNION ALL SELECT device_id, boot, seq FROM events")).all()
    return Counter(tuple(r) for r in rows)


def emitted_keys(swarm: Swarm) -> set[tuple[str, str, int]]:
    return {(d.device, d.boot, seq) for d in swarm.ledger().values() for seq in range(1, d.emitted + 1)}


def assert_nothing_lost_or_doubled(fleet, swarm: Swarm) -> None:
    s = swarm.stats()
    assert s.outstanding == 0, f"{s.outstanding} messages never receipted"
    assert all(d.balanced for d in swarm.ledger().values())
    stored = stored_keys(fleet)
    assert [k for k, n in stored.items() if n > 1] == []
    emitted = emitted_keys(swarm)
    assert len(emitted) == s.emitted == s.receipted
    assert set(stored) == emitted
    assert fleet.ingest.metrics.rejected == {}


class _Owner:
    """Records what a connection reports, as a device would receive it."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        return lambda _conn, *args: self.calls.append((name, *args))


class _Transport:
    def __init__(self):
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))


def test_the_swarms_mqtt_parser_takes_many_packets_from_one_read_and_one_packet_from_many():
    import asyncio

    from simulators.swarm_mqtt import MqttConnection, connect_packet, lp, publish_packet

    loop = asyncio.new_event_loop()
    owner, transport = _Owner(), _Transport()
    conn = MqttConnection(owner, loop)
    conn.transport = transport
    t = lp(b"popkit/v1/k0001/k0001-scan-1/receipt")
    two = publish_packet(t, b'{"a":1}', 7) + publish_packet(t, b"x" * 300, 8)  # 300: a 2-byte length
    conn.data_received(b"\x20\x02\x01\x00" + b"\x40\x02\x00\x05" + two)  # CONNACK, PUBACK, 2 PUBLISH
    assert owner.calls[:2] == [("on_connack", True, 0), ("on_puback", 5)]
    assert [c[2] for c in owner.calls[2:]] == [b'{"a":1}', b"x" * 300]
    assert transport.writes == [b"\x40\x02\x00\x07\x40\x02\x00\x08"]  # both PUBACKs in one write
    for byte in publish_packet(t, b"late", 9):  # then one packet a byte at a time
        conn.data_received(bytes([byte]))
    assert owner.calls[-1][2] == b"late" and transport.writes[-1] == b"\x40\x02\x00\x09"
    packet = connect_packet(b"k1-d1", 30, will=(b"w/t", b"gone", 1, True), username="u", password="p")
    # MQTT 3.1.1; flags: login, retained QoS 1 Will, persistent session; keepalive 30 s.
    assert packet[2:12] == b"\x00\x04MQTT\x04" + bytes([0b11101100]) + b"\x00\x1e"
    loop.close()


def test_simulated_kits_are_valid_manifests_of_an_agent_its_power_bank_and_esp32s():
    kits = manifests(3, devices_per_kit=5, period_s=2.0)
    assert [k.id for k in kits] == ["k0001", "k0002", "k0003"]
    assert all(isinstance(k, KitManifest) for k in kits)
    assert [(d.id, d.role) for d in kits[0].all_devices()] == [
        ("k0001-agent", "agent"), ("k0001-power", "powerbank"), ("k0001-scan-1", "scanner"),
        ("k0001-scan-2", "scanner"), ("k0001-light-1", "lighting")]
    assert kits[2].agent == "k0003-agent" and kits[0].devices[0].telemetry_s == 2.0
    assert kits[0].devices[0].hosted  # the fleet shows the pack online only while its agent is
    esp32s = manifests(1, devices_per_kit=5, power=False)[0]
    assert [(d.id, d.role) for d in esp32s.devices] == [
        ("k0001-scan-1", "scanner"), ("k0001-scan-2", "scanner"), ("k0001-scan-3", "scanner"),
        ("k0001-light-1", "lighting"), ("k0001-light-2", "lighting")]
    swarm = Swarm(2, 5, "mqtt://127.0.0.1:1", power=True)
    assert [d.id for d in swarm.devices] == [d.id for m in swarm.manifests() for d in m.all_devices()]


def test_every_payload_the_templates_make_is_the_contracts():
    swarm = Swarm(2, 4, "mqtt://127.0.0.1:1", period_s=1.0, seed=3)
    assert sorted({d.role for d in swarm.devices}) == ["agent", "lighting", "powerbank", "scanner"]
    now = int(time.time() * 1000)
    for device in swarm.devices:
        for seq in range(1, 40):
            msg = decode("telemetry", device.telemetry_payload(seq, now + seq))
            assert (msg.boot, msg.seq) == (device.boot, seq)
            assert msg.kind == ("battery" if device.role == "powerbank" else "device")
            if device.role == "powerbank":
                assert msg.i < 0 and 0 <= msg.soc <= 100 and 11.5 < msg.v < 13.5 and msg.ttg > 0
                continue
            assert (msg.scans is not None) == (device.role == "scanner")
            assert (msg.scene is not None) == (device.role == "lighting")
            event = decode("event", device.checkin_payload(seq, now))
            assert event.kind == "checkin" and event.data["event"] == f"SWARM-{device.kit.upper()}"
        for online, reason in ((True, "birth"), (False, "lwt"), (False, "shutdown")):
            state = decode("state", device.state_payload(online, reason))
            assert (state.online, state.reason, state.seq, state.ts) == (online, reason, 0, device.started_ms)
            assert state.role == device.role
    assert len({d.boot for d in swarm.devices}) == len(swarm.devices)  # a boot per device, new each run


def test_a_simulated_power_bank_discharges_as_the_fleet_can_forecast():
    """What the fleet fits per pack (fleet/forecast.py) finds the pack's own draw in its readings."""
    from fleet.forecast import forecast

    swarm = Swarm(1, 5, "mqtt://127.0.0.1:1", seed=4)
    pack = next(d for d in swarm.devices if d.role == "powerbank")
    pack.soc, pack.draw_a = 80.0, 4.0  # 4 A from 100 Ah: 4 %/h, 20 h to empty
    t0 = int(time.time() * 1000) - 900_000
    readings = []
    for seq in range(1, 181):  # 15 minutes at 5 s
        readings.append(decode("telemetry", pack.telemetry_payload(seq, t0 + seq * 5000)).model_dump())
        pack.discharge(5.0)
    fc = forecast(readings, now_ms=t0 + 181 * 5000)
    assert fc.method == "soc_slope" and fc.hours_left is not None, fc
    assert 16 < fc.hours_left < 24, fc  # 79 % left at 4 %/h: 19.75 h
    pack.soc = 5.001
    pack.discharge(5.0)
    assert pack.soc >= 90  # an empty pack is swapped for a charged one, not driven below zero


def test_twenty_kits_report_every_message_once_and_get_every_receipt(broker, swarm_fleet, collect):
    sample = collect("popkit/v1/k0001/+/telemetry", "popkit/v1/+/+/event")
    swarm = Swarm(20, 5, broker.url, period_s=0.3, seed=11, checkin_p=0.3)
    register(swarm_fleet, swarm)
    swarm.start_in_thread()
    try:
        wait_until(lambda: swarm.stats().connected == 100, 20, what="100 devices connected")
        births = collect("popkit/v1/k0002/+/state")  # subscribed late: what it gets was retained
        wait_until(lambda: swarm.stats().emitted >= 1500, 30, what="1500 messages emitted")
    finally:
        swarm.stop(flush_s=30)
    s = swarm.stats()
    print(f"\n{s.emitted} emitted, {s.publishes} publishes, {s.resends} resends, {s.receipts} receipts; "
          f"all connected {s.startup_s:.2f}s after start")
    assert_nothing_lost_or_doubled(swarm_fleet, swarm)
    assert s.connects == 100 and s.reconnects == 0
    # What went over the wire is what the contract says (the fleet refused none of it either).
    seen = Counter()
    for t, payload, _ in sample.messages[:600]:
        _kit, _device, channel = parse_topic(t)
        msg = decode(channel, payload)
        seen[channel if channel != "event" else msg.kind] += 1
    assert seen["telemetry"] and seen["checkin"]
    retained = [decode("state", p) for _, p, r in births.messages if r]
    assert len(retained) == 5 and all(m.online and m.reason == "birth" for m in retained)


def test_after_a_broker_restart_every_device_is_back_within_three_minutes_and_nothing_is_lost(broker, swarm_fleet):
    swarm = Swarm(100, 5, broker.url, period_s=2.0, seed=5)
    register(swarm_fleet, swarm)
    swarm.start_in_thread()
    try:
        wait_until(lambda: swarm.stats().connected == 500, 30, what="500 devices connected")
        wait_until(lambda: swarm.stats().receipted >= 500, 20, what="the first receipts")
        before = swarm.stats()
        # SIGTERM: Mosquitto saves the sessions (and the receipts queued in them). Away for 3 s, so
        # the devices' first attempts fail and their backoff spreads them out.
        broker.stop()
        t0 = time.monotonic()
        wait_until(lambda: swarm.stats().waves == 1, 10, what="the devices noticing the broker left")
        time.sleep(3.0)
        broker.start()
        s = wait_until(lambda: (s := swarm.stats()).connected == 500 and s.last_recovery_s is not None and s,
                       180, interval=0.2, what="all 500 devices back")
        print(f"\nall 500 devices back {s.last_recovery_s:.1f}s after the first dropped "
              f"({time.monotonic() - t0:.1f}s after the restart); {s.connect_failures} failed attempts")
        assert s.reconnects - before.reconnects == 500
        # Messages made while the broker was away, and after, still arrive.
        wait_until(lambda: swarm.stats().emitted >= s.emitted + 500, 20, what="emitting after the restart")
    finally:
        swarm.stop(flush_s=60)
    assert_nothing_lost_or_doubled(swarm_fleet, swarm)


def test_a_receipt_naming_missing_messages_gets_them_sent_again_at_once(broker, collect):
    sent = collect("popkit/v1/k0001/k0001-scan-1/telemetry")
    # No fleet: no receipts but ours. No check-ins: seqs 1-4 are all telemetry.
    swarm = Swarm(1, 1, broker.url, period_s=0.1, seed=1, checkin_p=0.0, resend_after_s=60.0)
    swarm.start_in_thread()
    try:
        wait_until(lambda: len(sent.messages) >= 4, 10, what="four telemetry messages")
        device = swarm.devices[0]
        receipt = Receipt(boot=device.boot, seqs=[(1, 1)], ts=int(time.time() * 1000), missing=[(2, 3)])
        pub = publisher(broker.url)
        pub.publish("popkit/v1/k0001/k0001-scan-1/receipt", encode(receipt), qos=1).wait_for_publish(5)
        pub.loop_stop()

        def copies() -> Counter:
            return Counter(decode("telemetry", p).seq for p in sent.on("telemetry"))
        wait_until(lambda: copies()[2] == 2 and copies()[3] == 2, 10, what="seqs 2 and 3 sent again")
        ledger = swarm.ledger()["k0001-scan-1"]
        assert ledger.receipted == 1 and 1 not in ledger.outstanding and {2, 3} <= set(ledger.outstanding)
        assert swarm.stats().missing_resends == 2 and copies()[4] == 1
    finally:
        swarm.stop()


def test_an_unreceipted_message_is_sent_again_less_and_less_often(broker, collect):
    sent = collect("popkit/v1/k0001/k0001-light-1/telemetry")
    swarm = Swarm(1, 2, broker.url, period_s=2.0, seed=2, resend_after_s=0.5)  # no fleet: no receipt ever

    def copies_of_the_first() -> int:
        return sum(decode("telemetry", p).seq == 1 for p in sent.on("telemetry"))
    swarm.start_in_thread()
    try:
        wait_until(lambda: copies_of_the_first() >= 3, 15, what="the first reading sent again twice")
        device = next(d for d in swarm.devices if d.id == "k0001-light-1")
        assert device.resend_after >= 2.0  # 0.5, then 1, then 2: the resend interval backs off
        assert swarm.stats().resends >= 2
    finally:
        swarm.stop()


def test_popkit_sim_fleet_registers_its_kits_reports_and_stops_cleanly_on_sigterm(broker, swarm_fleet, tmp_path):
    db = swarm_fleet.settings.db_url
    proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "sim", "fleet", "--kits", "3", "--period", "0.5",
                             "--mqtt", broker.url, "--register", db, "--seed", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_until(lambda: swarm_fleet.ingest.metrics.ingested >= 60 or proc.poll() is not None, 30,
                   what="the swarm's messages ingested")
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "registered 3 kits (15 devices)" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("done after") and " 0 outstanding" in summary, out
    assert swarm_fleet.ingest.metrics.rejected == {}
    # The graceful stop (state: shutdown) told the fleet: no device of the swarm is left online.
    wait_until(lambda: _online(swarm_fleet) == 0, 10, what="the swarm's devices offline")


def _online(fleet) -> int:
    with fleet.store.engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM devices WHERE online AND kit_id LIKE 'k%'")).scalar()
