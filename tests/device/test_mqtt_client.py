"""The firmware's MQTT client (device/lib/pkmqtt.py) in the real MicroPython, 64 KB heap, against a real Mosquitto.

What the kit crew would see: messages go both ways, a lost acknowledgement is
made good, a crashed device is announced by its Will, and the device finds its
broker again by itself after the broker dies, hangs or restarts.
"""

from __future__ import annotations

import secrets
import socket
import time

import pytest

from tests.conftest import publisher, wait_until
from tests.device.firmware import Device, firmware  # noqa: F401 - fixture
from tests.device.mpy import run_mpy
from tests.device.tcpproxy import MqttProxy


@pytest.fixture
def prefix():
    return f"t{secrets.token_hex(3)}"


@pytest.fixture
def proxy(broker):
    p = MqttProxy(broker.port)
    yield p
    p.close()


def echo_device(firmware, port, prefix, keepalive=10, response_ms=2000, queue_len=8) -> Device:
    return Device(firmware, "echo.py", "127.0.0.1", port, prefix, keepalive, response_ms, queue_len)


def send(broker, topic, payload, qos=1, retain=False):
    client = publisher(broker.url)
    try:
        client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_publish_and_subscribe_round_trip(broker, collect, firmware, prefix):
    seen = collect(f"{prefix}/#")
    with echo_device(firmware, broker.port, prefix) as dev:
        dev.expect(r"SUBSCRIBED 1")
        dev.expect(r"HELLO")
        wait_until(lambda: len(seen.on("/hello")) == 2, 5, what="hello at QoS 0 and 1")
        assert sorted(seen.on("/hello")) == [b"hello0", b"hello1"]

        send(broker, f"{prefix}/in/a", b"ping-a", qos=1)
        send(broker, f"{prefix}/in/b", b"x" * 900, qos=0)
        dev.expect(r"ECHOED a 0")
        dev.expect(r"ECHOED b 0")
        wait_until(lambda: seen.on("/echo/a") and seen.on("/echo/b"), 5, what="echoes")
        assert seen.on("/echo/a") == [b"ping-a"]
        assert seen.on("/echo/b") == [b"x" * 900]

        # A retained message reaches a new subscription flagged as retained.
        send(broker, f"{prefix}/in/kept", b"r", qos=1, retain=True)
        dev.expect(r"ECHOED kept")


def test_message_larger_than_the_buffer_is_acknowledged_and_skipped(broker, collect, firmware, prefix):
    seen = collect(f"{prefix}/echo/#")
    with echo_device(firmware, broker.port, prefix) as dev:
        dev.expect(r"SUBSCRIBED 1")
        send(broker, f"{prefix}/in/big", b"y" * 5000, qos=1)  # max_msg is 1024
        send(broker, f"{prefix}/in/after", b"small", qos=1)
        dev.expect(r"ECHOED after")
        assert seen.on("/echo/big") == []
        assert not dev.matching(r"GOT .*/in/big")


def test_messages_past_the_receive_buffer_arrive_whole(broker, collect, firmware, prefix):
    """A payload over the 512-byte receive buffer but within max_msg is read into a buffer of its own
    size: back to back with small ones (in one TCP read), at QoS 0 and 1, at the limit."""
    seen = collect(f"{prefix}/echo/#")
    big1, big2 = bytes(range(256)) * 3 + b"end1", b"z" * 1024
    with echo_device(firmware, broker.port, prefix) as dev:
        dev.expect(r"SUBSCRIBED 1")
        pub = publisher(broker.url)
        for topic, payload, qos in ((f"{prefix}/in/b1", big1, 1), (f"{prefix}/in/s1", b"small-1", 1),
                                    (f"{prefix}/in/b2", big2, 0), (f"{prefix}/in/s2", b"small-2", 0)):
            pub.publish(topic, payload, qos=qos)  # no wait: they leave together
        dev.expect(r"ECHOED s2")
        pub.loop_stop()
        assert seen.on("/echo/b1") == [big1] and seen.on("/echo/b2") == [big2]
        assert seen.on("/echo/s1") == [b"small-1"] and seen.on("/echo/s2") == [b"small-2"]


def test_full_inbox_drops_the_oldest_and_counts(broker, firmware, prefix):
    with echo_device(firmware, broker.port, prefix, queue_len=4) as dev:
        dev.expect(r"SUBSCRIBED 1")
        send(broker, f"{prefix}/in/hold", b"3000")  # the app stops reading for 3 s
        dev.expect(r"GOT .*/in/hold")
        client = publisher(broker.url)
        try:
            for n in range(10):
                client.publish(f"{prefix}/in/m{n}", b"%d" % n, qos=1).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()
        dev.expect(r"DROPS 6")
        dev.expect(r"ECHOED m9")
        got = [m.group(1) for m in dev.matching(r"ECHOED (m\d)")]
        assert got == ["m6", "m7", "m8", "m9"]


def test_lost_puback_is_made_good_by_a_dup_retransmission(broker, proxy, collect, firmware, prefix):
    seen = collect(f"{prefix}/echo/#")
    with echo_device(firmware, proxy.port, prefix, response_ms=1000) as dev:
        dev.expect(r"SUBSCRIBED 1")
        dev.expect(r"HELLO")
        proxy.drop_pubacks = 1
        send(broker, f"{prefix}/in/r", b"retry-me")
        dev.expect(r"ECHOED r 1", timeout=5)  # the publish completed after one retransmission
        sent = [p for p in proxy.publishes() if p[2] == b"retry-me"]
        assert len(sent) == 2
        (flags1, pid1, _), (flags2, pid2, _) = sent
        assert pid1 == pid2 == proxy.dropped_pubacks[0]
        assert flags1 & 0x08 == 0 and flags2 & 0x08, "the second send carries DUP"
        assert flags1 & 0x06 == flags2 & 0x06 == 0x02, "QoS 1"
        wait_until(lambda: seen.on("/echo/r"), 5, what="the echo")


def test_will_is_delivered_when_the_device_is_killed(broker, collect, firmware, prefix):
    seen = collect(f"{prefix}/will")
    dev = echo_device(firmware, broker.port, prefix)
    dev.expect(r"SUBSCRIBED 1")
    assert seen.on("/will") == []
    dev.kill()
    wait_until(lambda: seen.on("/will"), 5, what="the Will")
    assert seen.on("/will") == [b"gone"]
    late = collect(f"{prefix}/will")  # retained: a subscriber arriving later sees it too
    wait_until(lambda: late.on("/will"), 5, what="the retained Will")


def test_will_is_not_sent_after_a_graceful_disconnect(broker, collect, firmware, prefix):
    seen = collect(f"{prefix}/#")
    code = (
        "import asyncio, board, pkmqtt\n"
        f"c = pkmqtt.Client(lambda: board.connect_tcp('127.0.0.1', {broker.port}), 'bye-{prefix}',"
        f" will=('{prefix}/will', b'gone'))\n"
        "async def main():\n"
        "    c.start()\n"
        "    await c.up.wait()\n"
        f"    await c.publish('{prefix}/bye', b'bye', qos=1)\n"
        "    await c.disconnect()\n"
        "    print('DISCONNECTED', c.up.is_set(), c.down.is_set())\n"
        "asyncio.run(main())\n"
    )
    out = run_mpy(code, firmware, timeout=20)
    assert "DISCONNECTED False True" in out.stdout
    wait_until(lambda: seen.on("/bye"), 5, what="the last publish")
    time.sleep(0.5)
    assert seen.on("/will") == []


def test_silent_broker_times_out_and_the_device_retries_until_one_answers(broker, proxy, firmware, prefix):
    proxy.silent = True  # accepts TCP, never sends CONNACK
    with echo_device(firmware, proxy.port, prefix, response_ms=500) as dev:
        wait_until(lambda: proxy.accepted >= 3, 10, what="three connection attempts")
        assert not dev.matching(r"UP")
        proxy.silent = False
        dev.expect(r"SUBSCRIBED 1", timeout=10)


def test_dead_broker_is_found_by_missed_pings_and_the_link_comes_back(broker, proxy, collect, firmware, prefix):
    seen = collect(f"{prefix}/echo/#")
    # keepalive 2 s: a PINGREQ every 500 ms; two unanswered when the next is due = dead
    with echo_device(firmware, proxy.port, prefix, keepalive=2, response_ms=1000) as dev:
        dev.expect(r"SUBSCRIBED 1")
        t0 = time.monotonic()
        proxy.freeze()  # TCP stays up, nothing comes back
        dev.expect(r"DOWN 1", timeout=5)
        detected = time.monotonic() - t0
        assert detected < 3.0, f"dead broker noticed after {detected:.1f}s"
        dev.expect(r"SUBSCRIBED 2", timeout=10)
        send(broker, f"{prefix}/in/again", b"alive")
        dev.expect(r"ECHOED again")
        wait_until(lambda: seen.on("/echo/again"), 5, what="the echo after the reconnect")


def test_broker_killed_and_restarted_the_device_reconnects_by_itself(broker, collect, firmware, prefix):
    with echo_device(firmware, broker.port, prefix, keepalive=5) as dev:
        dev.expect(r"SUBSCRIBED 1")
        broker.kill()
        dev.expect(r"DOWN", timeout=5)
        time.sleep(2.0)
        broker.start()
        dev.expect(r"SUBSCRIBED 2", timeout=10)
        seen = collect(f"{prefix}/echo/#")
        send(broker, f"{prefix}/in/back", b"again")
        dev.expect(r"ECHOED back")
        wait_until(lambda: seen.on("/echo/back"), 5, what="the echo after the restart")


def test_refused_connection_is_retried_with_backoff(firmware, prefix):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with echo_device(firmware, port, prefix) as dev:
        time.sleep(1.5)
        assert dev.proc.poll() is None, "the client gave up"
        assert not dev.matching(r"UP")
