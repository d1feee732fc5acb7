"""The till inside the agent daemon (in this process, a simulated kit): the catalog arrives as the agent's
own retained config, receipts print on the kit's printer, and the agent's device telemetry tells the
fleet how many sales it still owes and since when."""

from __future__ import annotations

import asyncio
import threading

import pytest

from agent import daemon
from agent.backends import open_hardware
from agent.daemon import Agent
from agent.link import FleetLink
from agent.settings import AgentSettings
from agent.statewatch import StateWatch
from agent.till.runner import TillRunner, till_wanted
from kits.contract import Config, decode, topic
from kits.manifest import load_manifest
from kits.retail.catalog import catalog_json
from simulators.kit import SimulatedKit
from tests.conftest import publisher, wait_until
from tests.test_till_service import MUG, TEE, product

KIT = """
id = "tk"
name = "Till kit"
agent = "tk-agent"

[[devices]]
id = "tk-printer"
role = "printer"
bus = "serial:/dev/ttyUSB1"
telemetry_s = 5
"""
CATALOG = [product(TEE, "Tee", 1250, 5, kit="tk"), product(MUG, "Mug", 800, 5, kit="tk")]


@pytest.fixture
def agent(broker, tmp_path, monkeypatch):
    monkeypatch.setattr(daemon, "HEALTH_PERIOD_S", 0.2)
    path = tmp_path / "kit.toml"
    path.write_text(KIT)
    manifest = load_manifest(path)
    settings = AgentSettings(mqtt_url=broker.url, agent_data=tmp_path)
    assert till_wanted(manifest, settings)  # auto: a kit with a printer sells
    link = FleetLink(manifest.id, manifest.agent, "agent", broker.url, tmp_path / "outbox.db",
                     own_config=True).start()
    watch = StateWatch(manifest.id, broker.url).start()
    hw = open_hardware(manifest, SimulatedKit())
    a = Agent(manifest, link, hw, watch, tmp_path, simulate=True)
    a.till = TillRunner(manifest, settings, tmp_path, link).start()
    loop = asyncio.new_event_loop()

    async def main():
        try:
            await a.run()
        finally:
            await hw.close()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    wait_until(lambda: a.last_report is not None, 15, what="the power-up self-test at start")
    yield a
    loop.call_soon_threadsafe(a.stop)
    t.join(15)
    a.till.stop()
    watch.stop()
    link.stop()


def test_the_agent_sells_from_its_configs_catalog_prints_and_reports_what_it_owes(broker, collect, agent):
    telemetry = collect(topic("tk", "tk-agent", "telemetry"))
    client = publisher(broker.url)
    client.publish(topic("tk", "tk-agent", "config"), Config(version=2, ts=1, data={"catalog": catalog_json(CATALOG)})
                   .model_dump_json().encode(), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    till = agent.till.till
    wait_until(lambda: agent.link.config_versions.get("tk-agent") == 2, what="the catalog from the agent's config")
    assert till.catalog_info()["version"] == 2

    till.add("main", TEE)
    order = till.pay("main", "cash", "anna")
    wait_until(lambda: (till.order(order.id)["receipt"] or {}).get("state") == "done", what="the receipt printed")

    def owed():  # no fleet in this test: nothing is receipted, so the order stays owed
        for payload in telemetry.on("/telemetry"):
            msg = decode("telemetry", payload)
            if msg.kind == "device" and msg.orders_pending == 1:
                return msg
    report = wait_until(owed, what="the agent's telemetry naming the order it owes")
    assert report.orders_oldest_ms == order.ts
