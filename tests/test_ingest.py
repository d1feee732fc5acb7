"""Fleet ingest against a real Mosquitto: what ops see when kits report, and when they report nonsense."""

from __future__ import annotations

import json

from agent.link import FleetLink
from kits.contract import BatteryTelemetry, DeviceTelemetry, Event, State, decode, encode
from tests.conftest import publisher, wait_until

TOPIC = "popkit/v1/demo/{device}/{channel}"


def battery(seq: int, boot: str = "b00710", ts: int = 1_700_000_000_000, soc: float = 80.0) -> bytes:
    return encode(BatteryTelemetry(boot=boot, seq=seq, ts=ts + seq, source="sim", v=12.6, i=-3.2, soc=soc))


def test_kit_reports_devices_online_and_battery_through_the_api(fleet, broker, tmp_path):
    link = FleetLink("demo", "demo-agent", "agent", broker.url, tmp_path / "outbox.db",
                     hosted={"demo-power": "powerbank", "demo-printer": "printer"}).start()
    try:
        link.emit("demo-power", "telemetry", BatteryTelemetry, source="vedirect", v=12.61, i=-4.2, soc=81.5, ttg=540)
        fleet.wait_ingested(1)
        kit = wait_until(lambda: (k := fleet.api.get("/api/v1/kits/demo").json())["devices_online"] == 3 and k,
                         what="agent, power bank and printer online")
        assert kit["battery"]["soc"] == 81.5 and kit["battery"]["ttg"] == 540
        online = {d["id"] for d in kit["devices"] if d["online"]}
        assert online == {"demo-agent", "demo-power", "demo-printer"}
        listed = fleet.api.get("/api/v1/kits").json()
        assert [k["id"] for k in listed["items"]] == ["demo"] and listed["items"][0]["devices_online"] == 3
        wait_until(lambda: len(link.outbox) == 0, what="the receipt emptying the outbox")
    finally:
        link.stop()
    # A graceful stop says "shutdown"; the devices the agent hosts go offline with it.
    kit = wait_until(lambda: (k := fleet.api.get("/api/v1/kits/demo").json())["devices_online"] == 0 and k,
                     what="kit offline after the agent stopped")
    assert all(not d["online"] for d in kit["devices"])


def test_malformed_messages_are_rejected_counted_and_kept_and_ingest_goes_on(fleet, broker):
    pub = publisher(broker.url)
    bad = [
        (TOPIC.format(device="demo-power", channel="telemetry"), b"{not json", "bad_json"),
        (TOPIC.format(device="demo-power", channel="telemetry"),
         b'{"boot":"b00710","seq":"one","ts":1,"kind":"battery","source":"sim","v":1,"i":1}', "invalid"),
        (TOPIC.format(device="demo-power", channel="telemetry"), b'{"pad":"' + b"x" * 5000 + b'"}', "oversize"),
        ("popkit/v1/Bad!Kit/demo-power/telemetry", battery(1), "unknown_topic"),
        (TOPIC.format(device="stranger", channel="telemetry"), battery(1), "unknown_device"),
        (TOPIC.format(device="demo-power", channel="event"),
         b'{"boot":"b00710","seq":9,"ts":1,"kind":"checkin","extra":true}', "invalid"),
    ]
    for topic, payload, _ in bad:
        pub.publish(topic, payload, qos=1).wait_for_publish(5)
    pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), battery(1), qos=1).wait_for_publish(5)
    fleet.wait_ingested(1)
    wait_until(lambda: sum(fleet.ingest.metrics.rejected.values()) == len(bad), what="all bad messages counted")
    assert fleet.ingest.metrics.rejected == {"bad_json": 1, "invalid": 2, "oversize": 1, "unknown_topic": 1, "unknown_device": 1}

    metrics = fleet.api.get("/metrics").text
    assert 'popkit_messages_rejected_total{reason="bad_json"} 1' in metrics
    assert 'popkit_messages_rejected_total{reason="unknown_device"} 1' in metrics
    assert "popkit_messages_ingested_total 1" in metrics

    letters = fleet.api.get("/api/v1/dead-letters").json()
    assert len(letters) == len(bad)
    by_reason = {r["reason"]: r for r in letters}
    assert by_reason["bad_json"]["payload_head"] == "{not json"
    assert by_reason["oversize"]["payload_size"] > 5000 and len(by_reason["oversize"]["payload_head"]) == 256
    assert "seq" in by_reason["invalid"]["detail"] or "extra" in by_reason["invalid"]["detail"]
    assert by_reason["unknown_device"]["topic"].endswith("stranger/telemetry")
    pub.loop_stop()


def test_a_resent_message_is_stored_once_and_receipted_again(fleet, broker, collect):
    receipts = collect("popkit/v1/demo/demo-power/receipt")
    pub = publisher(broker.url)
    for copy in range(1, 4):  # as a producer that missed two receipts would resend
        pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), battery(7), qos=1).wait_for_publish(5)
        wait_until(lambda: len(receipts.on("receipt")) == copy, what=f"receipt {copy}")
    assert fleet.ingest.metrics.duplicates == 2
    assert fleet.ingest.metrics.ingested == 1
    rows = fleet.api.get("/api/v1/devices/demo-power/telemetry").json()["items"]
    assert [(r["boot"], r["seq"]) for r in rows] == [("b00710", 7)]
    # Each copy is receipted: a resend means the producer missed the receipt before.
    got = receipts.on("receipt")
    assert len(got) == 3 and all(decode("receipt", p).seqs == [(7, 7)] for p in got)
    device = fleet.api.get("/api/v1/devices/demo-power").json()
    assert device["duplicates"] == 2 and device["received"] == 1
    pub.loop_stop()


def test_sequence_gaps_show_per_boot(fleet, broker):
    pub = publisher(broker.url)
    for seq in (1, 2, 5, 6):
        pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), battery(seq, boot="aaaa01"), qos=1)
    for seq in (1, 2, 3):
        pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), battery(seq, boot="bbbb02"), qos=1)
    fleet.wait_ingested(7)
    device = fleet.api.get("/api/v1/devices/demo-power").json()
    streams = {s["boot"]: s for s in device["streams"]}
    assert streams["aaaa01"]["missing"] == 2 and streams["aaaa01"]["max_seq"] == 6
    assert streams["bbbb02"]["missing"] == 0
    assert device["missing"] == 2
    # The late arrivals close the gap.
    for seq in (3, 4):
        pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), battery(seq, boot="aaaa01"), qos=1)
    fleet.wait_ingested(9)
    assert fleet.api.get("/api/v1/devices/demo-power").json()["missing"] == 0
    pub.loop_stop()


def test_last_will_marks_a_vanished_device_offline_and_an_old_will_cannot_undo_a_new_birth(fleet, broker):
    from plumbing.mqtt import new_client

    state_topic = TOPIC.format(device="demo-scanner-1", channel="state")
    born = 1_700_000_100_000
    client = new_client("scanner-sim")
    client.will_set(state_topic, encode(State(boot="cafe01", seq=0, ts=born, online=False, role="scanner", reason="lwt")),
                    qos=1, retain=True)
    client.connect("127.0.0.1", broker.port, keepalive=5)
    client.loop_start()
    client.publish(state_topic, encode(State(boot="cafe01", seq=0, ts=born, online=True, role="scanner", fw="1.0.0")),
                   qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: fleet.api.get("/api/v1/devices/demo-scanner-1").json()["online"], what="scanner online")
    # Pull the plug: the socket closes with no DISCONNECT, so the broker publishes the Will.
    client.loop_stop()
    client.socket().close()
    dev = wait_until(lambda: not (d := fleet.api.get("/api/v1/devices/demo-scanner-1").json())["online"] and d,
                     what="scanner offline by its Last Will")
    assert dev["fw"] == "1.0.0" or dev["fw"] is None

    pub = publisher(broker.url)
    later = born + 60_000
    pub.publish(state_topic, encode(State(boot="cafe02", seq=0, ts=later, online=True, role="scanner")), qos=1).wait_for_publish(5)
    wait_until(lambda: fleet.api.get("/api/v1/devices/demo-scanner-1").json()["online"], what="scanner back online")
    # A Will from the previous boot arriving late must not mark the new session offline.
    pub.publish(state_topic, encode(State(boot="cafe01", seq=0, ts=born, online=False, role="scanner", reason="lwt")),
                qos=1).wait_for_publish(5)
    wait_until(lambda: fleet.ingest.metrics.states >= 4, what="states applied")
    assert fleet.api.get("/api/v1/devices/demo-scanner-1").json()["online"] is True
    assert fleet.api.get("/api/v1/devices/demo-scanner-1").json()["boot"] == "cafe02"
    pub.loop_stop()


def test_events_and_device_health_are_kept(fleet, broker, tmp_path):
    link = FleetLink("demo", "demo-scanner-1", "scanner", broker.url, tmp_path / "flash.db").start()
    try:
        link.emit("demo-scanner-1", "event", Event, ts=1_700_000_000_123, kind="checkin",
                  data={"event": "DEMO-NIGHT", "ticket": "T1", "verdict": "admitted"})
        link.emit("demo-scanner-1", "telemetry", DeviceTelemetry, uptime_s=12, heap_free=51234, scans=1)
        fleet.wait_ingested(2)
        dev = fleet.api.get("/api/v1/devices/demo-scanner-1").json()
        assert dev["latest"]["device"]["heap_free"] == 51234
        with fleet.store.engine.connect() as conn:
            row = conn.exec_driver_sql("SELECT ts_ms, kind, body FROM events").one()
        assert row[0] == 1_700_000_000_123 and row[1] == "checkin"
        assert json.loads(row[2])["data"] == {"event": "DEMO-NIGHT", "ticket": "T1", "verdict": "admitted"}
    finally:
        link.stop()


def test_ingest_over_mqtt5_commits_receipts_and_rejects_the_same_way(broker, tmp_path, collect):
    """The fleet speaks 3.1.1 by default (faster in paho); v5, with its negotiated window, works alike."""
    from tests.conftest import start_fleet

    fleet = start_fleet(f"{broker.url}?protocol=5", f"sqlite:///{tmp_path / 'v5.db'}")
    receipts = collect("popkit/v1/demo/demo-power/receipt")
    try:
        assert fleet.ingest._client.protocol == 5
        pub = publisher(broker.url)
        for seq in range(1, 301):
            pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), battery(seq), qos=1)
        pub.publish(TOPIC.format(device="demo-power", channel="telemetry"), b"nope", qos=1)
        fleet.wait_ingested(300)
        wait_until(lambda: fleet.ingest.metrics.rejected["bad_json"] == 1, what="bad payload rejected")
        covered = wait_until(lambda: sum(b - a + 1 for p in receipts.on("receipt") for a, b in decode("receipt", p).seqs)
                             == 300 and True, what="receipts covering all 300")
        assert covered
        pub.loop_stop()
    finally:
        fleet.ingest.stop()
        fleet.store.close()


def test_a_receipt_for_a_fragmented_batch_is_split_so_every_part_fits_a_device(fleet, broker, collect):
    """Two workers on a shared subscription each get every other seq of a device: a batch's receipt
    of 300 single-seq ranges ran past the contract's 4 KB, and producers ignored it, so nothing
    left their outboxes. Every receipt now names at most RECEIPT_MAX_RANGES ranges."""
    from fleet.ledger import LedgerMessage
    from kits.contract import MAX_DEVICE_PAYLOAD, RECEIPT_MAX_RANGES

    receipts = collect("popkit/v1/demo/demo-power/receipt")
    odd = [LedgerMessage("demo-power", "telemetry", decode("telemetry", battery(seq)), battery(seq).decode())
           for seq in range(1, 600, 2)]
    fleet.ingest._send_receipts(odd)
    wait_until(lambda: sum(len(decode("receipt", p).seqs) for p in receipts.on("receipt")) >= 300,
               what="receipts naming all 300 seqs")
    got = receipts.on("receipt")
    assert all(len(p) <= MAX_DEVICE_PAYLOAD for p in got)
    parts = [decode("receipt", p).seqs for p in got]  # the contract refuses a receipt of more ranges
    assert [len(s) for s in parts] == [RECEIPT_MAX_RANGES] * 9 + [300 - 9 * RECEIPT_MAX_RANGES]
    assert sorted(a for s in parts for a, b in s if a == b) == list(range(1, 600, 2))
