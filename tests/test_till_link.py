"""The till through real Mosquitto: sales up to the fleet through the agent's outbox (uplink or not),
the catalog down as the agent's retained config, and the scanners' till-mode scans answered."""

from __future__ import annotations

import json

import pytest

from agent.link import FleetLink
from agent.till.intake import CatalogIntake
from agent.till.scans import TillScans
from agent.till.service import Till
from agent.till.uplink import LinkUplink
from kits.contract import Config, TillAnswer, TillScan, decode, encode, topic
from kits.retail.catalog import catalog_json
from tests.conftest import publisher, start_fleet, wait_until
from tests.test_till_service import CATALOG, MUG, TEE, Clock, product

KIT, AGENT, SCANNER = "demo", "demo-agent", "demo-scanner-1"


@pytest.fixture
def link(broker, tmp_path):
    lk = FleetLink(KIT, AGENT, "agent", broker.url, tmp_path / "outbox.db", resend_after_s=1.0,
                   own_config=True).start()
    assert lk.connected.wait(10)
    yield lk
    lk.stop()


@pytest.fixture
def till(link, tmp_path):
    t = Till(tmp_path / "till.db", KIT, "Demo stall", uplink=LinkUplink(link, AGENT), clock=Clock()).start()
    yield t
    t.close()


def fleet_sales(fleet) -> list[dict]:
    with fleet.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT body FROM events WHERE kind IN ('order', 'refund') ORDER BY id").all()
    return [json.loads(b)["data"] for (b,) in rows]


def test_sales_taken_with_no_fleet_upload_once_it_is_there_and_leave_pending(broker, tmp_path, till):
    till.load_catalog(CATALOG, "fleet", 1)
    orders = []
    for _ in range(3):
        till.add("main", TEE)
        till.add("main", MUG)
        orders.append(till.pay("main", "cash", "anna"))
    refund = till.refund(orders[0].id, [(MUG, 1)], "chipped", "anna", restock=False)
    # No fleet listens: nothing is receipted, the till knows what it owes and since when.
    assert till.pending() == {"orders": 4, "oldest_ms": orders[0].ts}

    fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    try:
        wait_until(lambda: till.pending()["orders"] == 0, timeout=30, what="every sale receipted by the fleet")
        assert till.pending() == {"orders": 0, "oldest_ms": None}
        stored = fleet_sales(fleet)
        assert [s["id"] for s in stored] == [o.id for o in orders] + [refund.id]
        assert stored[0] == orders[0].model_dump(mode="json", exclude_none=True)
        assert stored[3]["order"] == orders[0].id and stored[3]["restock"] is False
        assert all(o["uploaded"] for o in till.orders())
    finally:
        fleet.ingest.stop()
        fleet.store.close()


def retained_config(url: str, version: int, data: dict) -> None:
    client = publisher(url)
    info = client.publish(topic(KIT, AGENT, "config"),
                          Config(version=version, ts=1, data=data).model_dump_json().encode(), qos=1, retain=True)
    info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_the_catalog_arrives_as_the_agents_retained_config_and_a_bad_one_keeps_the_old(broker, link, till):
    intake = CatalogIntake(till, link, AGENT)
    link.set_config_handler(lambda device, cfg: intake.on_config(cfg) if device == AGENT else None)
    retained_config(broker.url, 5, {"catalog": catalog_json(CATALOG)})
    wait_until(lambda: link.config_versions.get(AGENT) == 5, what="the fleet's catalog applied at the till")
    assert {p.sku for p in till.catalog()} == {TEE, MUG} and till.catalog_info()["version"] == 5

    retained_config(broker.url, 6, {"catalog": {"format": "spreadsheet"}})
    retained_config(broker.url, 7, {"lights": []})
    retained_config(broker.url, 8, {"catalog": catalog_json([product(TEE, "Tee", 100, 1, kit="other")])})
    wait_until(lambda: till.counts["catalog_refused"] == 3, what="three bad catalogs refused")
    assert till.catalog_info()["version"] == 5 and link.config_versions[AGENT] == 5
    assert till.add("main", MUG).ok  # still selling from the old one


@pytest.fixture
def scans(broker, till):
    s = TillScans(KIT, broker.url, till).start()
    wait_until(s.ready.is_set, what="the till subscribed to the scanners")
    yield s
    s.stop()


def test_a_scanner_in_till_mode_adds_lines_and_hears_why_not(broker, collect, till, scans):
    till.load_catalog(CATALOG, "fleet", 1)
    answers = collect(topic(KIT, SCANNER, "tilled"))
    client = publisher(broker.url)
    try:
        for i, code in enumerate([TEE, TEE, "ZZZ-9", "not a sku", MUG]):
            client.publish(topic(KIT, SCANNER, "till"), encode(TillScan(id=i, code=code, ts=1)), qos=0)
        wait_until(lambda: len(answers.on("/tilled")) == 5, what="five answers")
    finally:
        client.disconnect()
        client.loop_stop()
    got = sorted((decode("tilled", p) for p in answers.on("/tilled")), key=lambda a: a.id)
    assert got == [TillAnswer(id=0, ok=True, sku=TEE, qty=1), TillAnswer(id=1, ok=True, sku=TEE, qty=2),
                   TillAnswer(id=2, ok=False, reason="unknown_sku"), TillAnswer(id=3, ok=False, reason="bad_code"),
                   TillAnswer(id=4, ok=True, sku=MUG, qty=1)]
    assert [(x["sku"], x["qty"]) for x in till.cart("main")["lines"]] == [(TEE, 2), (MUG, 1)]


def test_a_question_asked_again_is_answered_again_without_a_second_line(broker, collect, till, scans):
    """A scanner with no answer yet asks the same question again (QoS 0 loses either way): one scan is one
    line. The same id at another scan time is a new scan (a rebooted scanner numbers from 0 again)."""
    till.load_catalog(CATALOG, "fleet", 1)
    answers = collect(topic(KIT, SCANNER, "tilled"))
    client = publisher(broker.url)
    try:
        for scan in (TillScan(id=0, code=TEE, ts=1000), TillScan(id=0, code=TEE, ts=1000),
                     TillScan(id=0, code=TEE, ts=1000), TillScan(id=0, code=TEE, ts=2000)):
            client.publish(topic(KIT, SCANNER, "till"), encode(scan), qos=0)
        wait_until(lambda: len(answers.on("/tilled")) == 4, what="four answers")
    finally:
        client.disconnect()
        client.loop_stop()
    assert [decode("tilled", p) for p in answers.on("/tilled")] == [TillAnswer(id=0, ok=True, sku=TEE, qty=1)] * 3 + [
        TillAnswer(id=0, ok=True, sku=TEE, qty=2)]
    assert [(x["sku"], x["qty"]) for x in till.cart("main")["lines"]] == [(TEE, 2)]
    assert scans.counts["repeated"] == 2 and scans.counts["scanned"] == 2


def test_bad_scans_are_counted_and_the_till_answers_the_next_good_one(broker, collect, till, scans):
    till.load_catalog(CATALOG, "fleet", 1)
    answers = collect(topic(KIT, SCANNER, "tilled"))
    client = publisher(broker.url)
    try:
        for payload in (b"{not json", b'{"id": 1, "code": "", "ts": 1}', b'{"id": 2, "code": "X", "ts": 1, "x": 1}',
                        b"[" * 5000):
            client.publish(topic(KIT, SCANNER, "till"), payload, qos=0)
        client.publish(topic(KIT, SCANNER, "till"), encode(TillScan(id=9, code=MUG, till="bar", ts=1)), qos=0)
        wait_until(lambda: answers.on("/tilled"), what="the good scan's answer")
    finally:
        client.disconnect()
        client.loop_stop()
    assert [decode("tilled", p) for p in answers.on("/tilled")] == [TillAnswer(id=9, ok=True, sku=MUG, qty=1)]
    bad = {k: v for k, v in scans.counts.items() if k.startswith("bad:")}
    assert sum(bad.values()) == 4 and bad.get("bad:bad_json", 0) >= 1 and bad.get("bad:invalid", 0) >= 2
    assert till.cart("bar")["lines"][0]["sku"] == MUG and till.cart("main")["lines"] == []


def test_after_a_restart_the_same_retained_catalog_changes_nothing_and_the_state_names_its_version(broker, tmp_path):
    def start():
        lk = FleetLink(KIT, AGENT, "agent", broker.url, tmp_path / "outbox.db", own_config=True)
        t = Till(tmp_path / "till.db", KIT, uplink=LinkUplink(lk, AGENT), clock=Clock()).start()
        intake = CatalogIntake(t, lk, AGENT)
        lk.set_config_handler(lambda device, cfg: intake.on_config(cfg) if device == AGENT else None)
        return lk.start(), t

    retained_config(broker.url, 5, {"catalog": catalog_json(CATALOG)})
    link, till = start()
    wait_until(lambda: link.config_versions.get(AGENT) == 5, what="version 5 applied")
    till.load_catalog([product(MUG, "Mug", 700, 3)], "upload", None)  # the crew's own sheet, offline
    link.stop()
    till.close()

    link, till = start()  # the agent restarted: the broker hands it the same retained version 5
    try:
        wait_until(lambda: link.config_versions.get(AGENT) == 5, what="the agent's state naming version 5 again")
        assert till.catalog_info()["source"] == "upload" and [p.sku for p in till.catalog()] == [MUG]
        assert till.counts["catalog_refused"] == 0
    finally:
        link.stop()
        till.close()
