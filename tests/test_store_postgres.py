"""The same store code on the local PostgreSQL server, end to end through a real broker."""

from __future__ import annotations

from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import DeviceTelemetry, State, encode
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT, publisher, start_fleet, wait_until


def msg(seq: int, boot: str = "feed01") -> LedgerMessage:
    m = DeviceTelemetry(boot=boot, seq=seq, ts=1_000 + seq, uptime_s=seq)
    return LedgerMessage("demo-scanner-1", "telemetry", m, encode(m).decode())


def test_postgres_store_dedups_tracks_gaps_and_orders_state(pg_url):
    store = Store.open(pg_url)
    try:
        store.registry.register_kit(load_manifest(DEMO_KIT))
        store.registry.register_kit(load_manifest(DEMO_KIT))  # registering again is an update, not an error
        r = store.ledger.write_batch(Batch(ledger=[msg(1), msg(2), msg(2), msg(5)]))
        assert (r.inserted, r.duplicates) == (3, 1)
        r = store.ledger.write_batch(Batch(ledger=[msg(1), msg(3)]))
        assert (r.inserted, r.duplicates) == (1, 1)
        dev = store.devices.get_device("demo-scanner-1")
        assert dev["received"] == 4 and dev["duplicates"] == 2 and dev["missing"] == 1
        assert dev["latest"]["device"]["uptime_s"] == 5
        new = State(boot="feed02", seq=0, ts=2_000, online=True, role="scanner")
        old_will = State(boot="feed01", seq=0, ts=1_000, online=False, role="scanner", reason="lwt")
        store.ledger.write_batch(Batch(states=[("demo-scanner-1", new), ("demo-scanner-1", old_will)]))
        assert store.devices.get_device("demo-scanner-1")["online"] is True
        assert [t["seq"] for t in store.telemetry.readings("demo-scanner-1", since_ms=1_002, limit=10)] == [2, 3, 5]
    finally:
        store.close()


def test_history_pages_come_in_time_order_on_postgres(pg_url):
    from tests.test_api import history_pages_in_time_order

    store = Store.open(pg_url)
    try:
        store.registry.register_kit(load_manifest(DEMO_KIT))
        history_pages_in_time_order(store)
    finally:
        store.close()


def test_fleet_ingests_into_postgres_through_the_broker(pg_url, broker):
    fleet = start_fleet(broker.url, pg_url)
    try:
        pub = publisher(broker.url)
        for seq in range(1, 201):
            m = DeviceTelemetry(boot="feed03", seq=seq, ts=5_000 + seq, uptime_s=seq)
            pub.publish("popkit/v1/demo/demo-scanner-1/telemetry", encode(m), qos=1)
        pub.publish("popkit/v1/demo/demo-scanner-1/telemetry", b"garbage", qos=1)
        fleet.wait_ingested(200)
        wait_until(lambda: fleet.ingest.metrics.rejected["bad_json"] == 1, what="garbage dead-lettered")
        with fleet.store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT reason, payload_head FROM dead_letters").all() == [("bad_json", b"garbage")]
        dev = fleet.api.get("/api/v1/devices/demo-scanner-1").json()
        assert dev["received"] == 200 and dev["missing"] == 0
        pub.loop_stop()
    finally:
        fleet.ingest.stop()
        fleet.store.close()
