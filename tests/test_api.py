"""The fleet API as ops use it: lists, one kit, one device, history, health, metrics, and clear 404s."""

from __future__ import annotations

import pytest
from fleet.auth.testing import ops_client

from fleet.api.app import create_app
from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import BatteryTelemetry, State, encode
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT


def reading(seq: int, ts: int) -> LedgerMessage:
    msg = BatteryTelemetry(boot="beef01", seq=seq, ts=ts, source="vedirect", v=12.5, i=-2.0, soc=90.0 - seq / 10)
    return LedgerMessage("demo-power", "telemetry", msg, encode(msg).decode())


@pytest.fixture
def api(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'api.db'}")
    store.registry.register_kit(load_manifest(DEMO_KIT))
    store.ledger.write_batch(Batch(ledger=[reading(s, 1_000_000 + s * 1000) for s in range(1, 26)],
                            states=[("demo-agent", State(boot="beef01", seq=0, ts=1, online=True, role="agent")),
                                    ("demo-power", State(boot="beef01", seq=0, ts=1, online=True, role="powerbank"))]),
                      received_ms=1_026_000)  # received live: just after the last reading
    yield ops_client(create_app(store))
    store.close()


def test_list_kits_shows_devices_and_battery(api):
    page = api.get("/api/v1/kits").json()
    kits = page["items"]
    assert len(kits) == 1 and kits[0]["id"] == "demo" and page["total"] == 1 and page["next_offset"] is None
    assert kits[0]["devices_total"] == 5 and kits[0]["devices_online"] == 2 and kits[0]["state"] == "degraded"
    assert kits[0]["battery"]["soc"] == pytest.approx(87.5)
    assert {d["id"]: d["online"] for d in kits[0]["devices"]}["demo-power"] is True


def test_get_kit_and_device_not_found_say_which(api):
    r = api.get("/api/v1/kits/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    r = api.get("/api/v1/devices/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert api.get("/api/v1/devices/nope/telemetry").status_code == 404


def test_get_device_telemetry_pages_by_since(api):
    first = api.get("/api/v1/devices/demo-power/telemetry", params={"limit": 10}).json()
    assert [i["seq"] for i in first["items"]] == list(range(1, 11))
    nxt = api.get("/api/v1/devices/demo-power/telemetry", params={"limit": 10, "since": first["next_since"]}).json()
    assert nxt["items"][0]["seq"] == 10  # since is inclusive: the boundary reading repeats, none is skipped
    tail = api.get("/api/v1/devices/demo-power/telemetry", params={"since": 1_020_000}).json()
    assert [i["seq"] for i in tail["items"]] == list(range(20, 26)) and tail["next_since"] is None


def test_raw_history_is_the_readings_as_sent_in_the_promised_shape(api):
    from fleet.api.routes.devices import TelemetryHistoryOut

    page = api.get("/api/v1/devices/demo-power/telemetry", params={"limit": 3, "kind": "battery"}).json()
    TelemetryHistoryOut.model_validate(page)
    assert page["resolution"] == "raw" and page["next_since"] == 1_003_000
    assert page["items"][0] == {**reading(1, 1_001_000).msg.model_dump(exclude_none=True), "kind": "battery"}
    assert api.get("/api/v1/devices/demo-power/telemetry", params={"kind": "printer"}).json()["items"] == []


def test_a_reading_the_kit_held_through_an_outage_is_marked_historical(api, tmp_path):
    """Received ten minutes after it happened (the kit's uplink was down): shown as sent, plus
    "historical" and when it arrived; the live readings around it are not marked."""
    store = Store.open(f"sqlite:///{tmp_path / 'api.db'}")
    late = reading(26, 1_026_500)
    store.ledger.write_batch(Batch(ledger=[late]), received_ms=1_026_500 + 600_000)
    store.close()
    items = api.get("/api/v1/devices/demo-power/telemetry", params={"since": 1_025_000}).json()["items"]
    assert [i["seq"] for i in items] == [25, 26]
    assert "historical" not in items[0] and "received_ms" not in items[0]
    assert items[1] == {**late.msg.model_dump(exclude_none=True), "kind": "battery",
                        "historical": True, "received_ms": 1_626_500}


def history_pages_in_time_order(store: Store) -> None:
    """Readings stored out of time order (ids against ts) come back in time order, page by page,
    the database joining each page (TelemetryViews.page): every reading once, none skipped."""
    import json
    import random

    seqs = list(range(1, 301))
    random.Random(5).shuffle(seqs)
    for i in range(0, 300, 50):
        store.ledger.write_batch(Batch(ledger=[reading(s, 5_000_000 + s * 1000) for s in seqs[i : i + 50]]))
    got, since, pages = [], 5_000_000, 0
    while since is not None:
        joined, n, since = store.telemetry.page("demo-power", since, None, 70, "battery")
        items = json.loads("[" + joined + "]")
        assert len(items) == n and [i["ts"] for i in items] == sorted(i["ts"] for i in items)
        got += [i["seq"] for i in items if not got or i["seq"] > got[-1]]  # since is inclusive: the edge repeats
        pages += 1
    assert got == list(range(1, 301)) and pages == 5


def test_history_pages_come_in_time_order_on_sqlite(tmp_path):
    store = Store.open(f"sqlite:///{tmp_path / 'order.db'}")
    try:
        store.registry.register_kit(load_manifest(DEMO_KIT))
        history_pages_in_time_order(store)
    finally:
        store.close()


def test_dead_letters_filter_by_reason_and_kit_and_page_back(api):
    from fleet.ledger import RejectedMessage

    store = api.app.state.store
    store.ledger.write_batch(Batch(rejected=[RejectedMessage(f"popkit/v1/{kit}/d/telemetry", b"x" * n, reason, "why")
                                      for n, (kit, reason) in enumerate([("demo", "bad_json"), ("other", "bad_json"),
                                                                         ("demo", "invalid"), ("demo", "bad_json")])]))
    page = api.get("/api/v1/dead-letters", params={"reason": "bad_json", "topic_prefix": "popkit/v1/demo/", "limit": 1}).json()
    assert [r["payload_head"] for r in page] == ["xxx"]
    rest = api.get("/api/v1/dead-letters", params={"reason": "bad_json", "topic_prefix": "popkit/v1/demo/",
                                                   "before_id": page[-1]["id"]}).json()
    assert [r["payload_head"] for r in rest] == [""]
    assert len(api.get("/api/v1/dead-letters").json()) == 4
    assert api.get("/api/v1/dead-letters", params={"before_id": 0}).status_code == 422


def test_bad_query_parameters_are_refused_with_the_reason(api):
    r = api.get("/api/v1/devices/demo-power/telemetry", params={"limit": 0})
    assert r.status_code == 422 and "limit" in r.text
    r = api.get("/api/v1/devices/demo-power/telemetry", params={"since": "yesterday"})
    assert r.status_code == 422 and "since" in r.text


def test_health_metrics_page_and_openapi(api):
    assert api.get("/healthz").json()["devices_online"] == 2
    metrics = api.get("/metrics").text
    assert "popkit_devices_online 2" in metrics and "popkit_devices 5" in metrics
    assert "PopKit fleet" in api.get("/").text
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/api/v1/kits", "/api/v1/kits/{kit_id}", "/api/v1/devices/{device_id}",
            "/api/v1/devices/{device_id}/telemetry", "/healthz", "/metrics"} <= set(paths)


def test_healthz_counts_a_hosted_device_offline_with_its_agent(api):
    store = api.app.state.store
    store.ledger.write_batch(Batch(states=[("demo-agent", State(boot="beef01", seq=0, ts=2, online=False, role="agent",
                                                         reason="lwt"))]))
    assert api.get("/healthz").json()["devices_online"] == 0  # the power bank's agent is gone: so is it
    assert api.get("/api/v1/kits").json()["items"][0]["devices_online"] == 0
    assert api.get("/api/v1/kits/demo").json()["devices_online"] == 0
