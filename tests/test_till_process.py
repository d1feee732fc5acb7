"""The till in a real agent process (`popkit agent run --simulate`): a power cut (SIGKILL) while the crew
takes orders loses none that the till confirmed, and after the restart the fleet has each of them."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading

from agent import control
from kits.contract import Config, TillScan, decode, encode, topic
from kits.retail.catalog import catalog_json
from tests.conftest import publisher, start_fleet, wait_until
from tests.test_agent_process import spawn_agent
from tests.test_till_service import MUG, TEE, product

SHOP_KIT = """
id = "shop"
name = "Till kill test"
agent = "shop-agent"

[[devices]]
id = "shop-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:/dev/ttyUSB1"
telemetry_s = 5
"""
KIT, AGENT = "shop", "shop-agent"
CATALOG = [product(TEE, "Tee", 1250, 5, kit=KIT), product(MUG, "Mug", 800, 500, kit=KIT)]


def till(data, **args):
    *_, last = control.request(control.socket_path(data), KIT, "till", timeout=20, **args)
    return last["result"]


def till_pending(data) -> int | None:
    """Orders the restarted agent still owes the fleet; None while it is not listening yet."""
    try:
        return till(data, do="pending")["orders"]
    except control.NoAgent:
        return None


def orders_on_disk(data) -> set[str]:
    db = sqlite3.connect(data / f"{KIT}-till.db")
    try:
        return {i for (i,) in db.execute("SELECT id FROM sales WHERE kind = 'order'")}
    finally:
        db.close()


def fleet_orders(fleet) -> list[dict]:
    with fleet.store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT body FROM events WHERE kind = 'order'").all()
    return [json.loads(b)["data"] for (b,) in rows]


def test_orders_confirmed_before_a_sigkill_survive_it_and_reach_the_fleet_once_each(broker, collect, tmp_path):
    manifest = tmp_path / "kit.toml"
    manifest.write_text(SHOP_KIT)
    data = tmp_path / "agent"
    client = publisher(broker.url)  # the fleet's catalog, retained, as the fleet's push leaves it
    client.publish(topic(KIT, AGENT, "config"), Config(version=3, ts=1, data={"catalog": catalog_json(CATALOG)})
                   .model_dump_json().encode(), qos=1, retain=True).wait_for_publish(5)
    answers = collect(topic(KIT, "shop-scanner", "tilled"))
    agent = spawn_agent(manifest, broker.url, data)  # no fleet: the uplink is down all along
    confirmed: list[dict] = []
    try:
        wait_until(lambda: control.socket_path(data).exists(), timeout=30, what="the agent's control channel")
        wait_until(lambda: till(data, do="catalog")["version"] == 3, timeout=30, what="the catalog at the till")
        # A scanner in till mode reaches the till inside the agent process.
        client.publish(topic(KIT, "shop-scanner", "till"), encode(TillScan(id=1, code=TEE, ts=1)), qos=0)
        wait_until(lambda: answers.on("/tilled"), what="the till's answer to the scanner")
        assert decode("tilled", answers.on("/tilled")[0]).ok

        stop = threading.Event()

        def crew() -> None:  # sells until the power goes
            while not stop.is_set():
                try:
                    till(data, do="add", code=MUG)
                    confirmed.append(till(data, do="pay", payment="cash", by="anna"))
                except control.ControlError:
                    return  # the agent died under this call: not confirmed, may or may not be on disk

        seller = threading.Thread(target=crew)
        seller.start()
        wait_until(lambda: len(confirmed) >= 25, timeout=60, what="25 orders confirmed")
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        stop.set()
        seller.join(30)
        ids = {o["id"] for o in confirmed}
        assert ids <= orders_on_disk(data)
        assert confirmed[0]["lines"][0]["sku"] == TEE and confirmed[0]["oversold"] == []
        assert [o["n"] for o in confirmed] == list(range(1, len(confirmed) + 1))

        fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(manifest,))
        agent = spawn_agent(manifest, broker.url, data)
        try:
            wait_until(lambda: ids <= {o["id"] for o in fleet_orders(fleet)}, timeout=60,
                       what="every confirmed order at the fleet")
            wait_until(lambda: till_pending(data) == 0, timeout=60, what="nothing pending at the till")
            by_id: dict[str, dict] = {}
            for o in fleet_orders(fleet):  # a sale re-queued after the kill arrives as the same body
                assert by_id.setdefault(o["id"], o) == o
            assert set(by_id) == orders_on_disk(data)
            assert till(data, do="order", order=confirmed[-1]["id"])["uploaded"] is True
            left = {s["sku"]: s["left"] for s in till(data, do="stock")}
            assert left[MUG] == 500 - len(by_id) and left[TEE] == 5 - 1
        finally:
            fleet.ingest.stop()
            fleet.store.close()
    finally:
        client.disconnect()
        client.loop_stop()
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
