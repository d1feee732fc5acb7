"""The agent daemon with a whole simulated kit: fleet commands reach the parts and are answered,
telemetry flows for every part, the panel's button reruns the self-test.

The agent runs in this process (its simulators are objects the test can look at); commands go
through the real fleet API and broker, as ops would send them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import contextmanager

import pytest

from agent.backends import open_hardware
from agent.daemon import Agent
from agent.drivers.receipt import Receipt
from agent.link import FleetLink
from agent.statewatch import StateWatch
from kits.contract import decode
from kits.manifest import load_manifest
from simulators.kit import SimulatedKit
from tests.conftest import start_fleet, wait_until

KIT = """
id = "dk"
name = "Daemon kit"
agent = "dk-agent"

[[devices]]
id = "dk-power"
role = "powerbank"
model = "jbd-sp04s034"
bus = "ble:A4:C1:38:5E:22:10"
telemetry_s = 0.5

[[devices]]
id = "dk-printer"
role = "printer"
bus = "serial:/dev/ttyUSB1"
telemetry_s = 0.5

[[devices]]
id = "dk-flood"
role = "light"
model = "relay"
bus = "gpio:17"
telemetry_s = 0.5
expect = { safety = true }

[[devices]]
id = "dk-lamp"
role = "light"
model = "elk-bledom"
bus = "ble:BE:16:02:00:11:01"
telemetry_s = 0.5

[[devices]]
id = "dk-panel"
role = "panel"
bus = "gpio"
pins = { button = 27, red = 5, green = 6, blue = 13 }
"""


@contextmanager
def running_kit(broker, tmp_path, before=None):
    """The fleet and the agent of KIT running in this process (hardware simulated), past the agent's
    power-up self-test; ``before(fleet)`` runs once the fleet is up and before the agent starts."""
    path = tmp_path / "kit.toml"
    path.write_text(KIT)
    manifest = load_manifest(path)
    fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=(path,))
    if before is not None:
        before(fleet)
    hosted = {s.id: s.role for s in manifest.devices if s.hosted}
    link = FleetLink(manifest.id, manifest.agent, "agent", broker.url, tmp_path / "outbox.db", hosted=hosted).start()
    watch = StateWatch(manifest.id, broker.url).start()
    hw = open_hardware(manifest, SimulatedKit())
    agent = Agent(manifest, link, hw, watch, tmp_path, simulate=True)
    loop = asyncio.new_event_loop()

    async def main():
        try:
            await agent.run()
        finally:
            await hw.close()

    t = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    t.start()
    wait_until(lambda: agent.last_report is not None, 15, what="the power-up self-test at start")
    try:
        yield fleet, agent, hw
    finally:
        loop.call_soon_threadsafe(agent.stop)
        t.join(15)
        watch.stop()
        link.stop(flush_s=1)
        fleet.ingest.stop()
        fleet.store.close()


@pytest.fixture
def kit(broker, tmp_path):
    with running_kit(broker, tmp_path) as parts:
        yield parts


def command(fleet, device: str, action: str, **args) -> dict:
    r = fleet.api.post(f"/api/v1/devices/{device}/commands", json={"action": action, "args": args, "ttl_s": 30})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]

    def settled():
        for c in fleet.api.get(f"/api/v1/devices/{device}/commands").json():
            if c["id"] == cid and c["status"] != "pending":
                return c
    return wait_until(settled, 15, what=f"the ack of {action} on {device}")


def test_print_set_and_identify_reach_the_parts_and_are_acked(kit):
    fleet, agent, hw = kit
    receipt = Receipt().text("Table 4: 2x lemonade").qr("ORDER-1234").cut().to_dict()
    done = command(fleet, "dk-printer", "print", receipt=receipt)
    assert done["status"] == "ok" and "queued" in done["detail"]
    roll = hw.sims["dk-printer"].roll
    wait_until(lambda: "Table 4: 2x lemonade" in roll.text, 10, what="the receipt on paper")
    assert "ORDER-1234" in roll.codes("qr")

    assert command(fleet, "dk-lamp", "set", rgb=[255, 80, 0], level=255)["status"] == "ok"
    lamp = hw.sims["dk-lamp"]
    assert lamp.is_on and lamp.rgb == (255, 80, 0)
    assert command(fleet, "dk-flood", "identify")["status"] == "ok"
    assert hw.lights["dk-flood"].is_on  # a safety light ends a flash lit

    bad = command(fleet, "dk-printer", "print", receipt={"blocks": [{"kind": "hologram"}]})
    assert bad["status"] == "rejected" and "print" in bad["detail"]
    assert command(fleet, "dk-lamp", "explode")["status"] == "rejected"


def test_every_part_reports_telemetry_that_fits_the_contract(kit):
    fleet, agent, hw = kit

    def kinds():
        with fleet.store.engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT device_id, body FROM telemetry").all()
        return {(d, decode("telemetry", b.encode() if isinstance(b, str) else b).kind) for d, b in rows}
    want = {("dk-power", "battery"), ("dk-printer", "printer"), ("dk-flood", "light"), ("dk-lamp", "light")}
    wait_until(lambda: want <= kinds(), 15, what=f"telemetry from every part (have {kinds()})")


def test_the_panel_button_reruns_the_self_test_and_the_led_shows_the_verdict(kit):
    fleet, agent, hw = kit
    first = agent.last_report
    assert first.status == "ready", first.problems
    hw.sims["dk-printer"].paper_out()
    button = hw.pin_factory.pin(27)
    button.drive_low()
    time.sleep(0.1)
    button.drive_high()  # a press (released well before the hold time)
    wait_until(lambda: agent.last_report is not first, 15, what="a second self-test")
    assert agent.last_report.status == "not_ready"
    assert [str(p) for p in agent.last_report.problems] == ["dk-printer: paper out, load a roll"]
    assert agent.panel.status == "not_ready"
    assert agent.panel.code == 4  # four red blinks, then a pause: look at the printer (agent/panel.py)



def test_an_expired_command_is_answered_expired_and_not_run(kit, broker, collect):
    import json

    from tests.conftest import publisher

    fleet, agent, hw = kit
    acks = collect("popkit/v1/dk/dk-lamp/ack")
    now = int(time.time() * 1000)
    pub = publisher(broker.url)
    try:
        stale = {"id": "old-1", "ts": now - 60_000, "expires": now - 1, "action": "set", "args": {"rgb": [0, 0, 255]}}
        pub.publish("popkit/v1/dk/dk-lamp/cmd", json.dumps(stale), qos=1).wait_for_publish(5)
        wait_until(lambda: acks.on("/ack"), 10, what="the ack of the expired command")
        [ack] = [decode("ack", p) for p in acks.on("/ack")]
        assert (ack.cmd_id, ack.status) == ("old-1", "expired")
        assert hw.sims["dk-lamp"].rgb != (0, 0, 255)
    finally:
        pub.loop_stop()


def test_a_retained_command_found_at_connect_never_runs_and_a_redelivered_one_runs_once(broker, tmp_path):
    import json

    from tests.conftest import publisher

    now = int(time.time() * 1000)
    cmd = {"id": "c-1", "ts": now, "expires": now + 60_000, "action": "identify", "args": {}}
    pub = publisher(broker.url)
    ran = []
    link = None
    try:
        pub.publish("popkit/v1/dk/dk-lamp/cmd", json.dumps({**cmd, "id": "kept-1"}), qos=1, retain=True).wait_for_publish(5)
        link = FleetLink("dk", "dk-agent", "agent", broker.url, tmp_path / "o.db", hosted={"dk-lamp": "light"},
                         on_command=lambda device, c: ran.append((device, c.id))).start()
        assert link.connected.wait(10)
        for _ in range(2):  # the same id twice: a QoS 1 redelivery
            pub.publish("popkit/v1/dk/dk-lamp/cmd", json.dumps(cmd), qos=1).wait_for_publish(5)
        wait_until(lambda: ran, 10, what="the live command")
        time.sleep(0.3)  # a second run, if there were one, would land by now
        assert ran == [("dk-lamp", "c-1")]
    finally:
        pub.publish("popkit/v1/dk/dk-lamp/cmd", b"", qos=1, retain=True).wait_for_publish(5)
        pub.loop_stop()
        if link is not None:
            link.stop()


def test_kit_down_tells_the_crew_and_the_fleet_what_the_kit_did_since_last_time(kit, broker, tmp_path):
    from agent.hub import ClaimBook
    from agent.kitdown import kit_down

    fleet, agent, hw = kit
    receipt = Receipt().text("Thanks for coming").cut().to_dict()
    for _ in range(2):
        assert command(fleet, "dk-printer", "print", receipt=receipt)["status"] == "ok"
    wait_until(lambda: hw.sims["dk-printer"].roll.text.count("Thanks for coming") == 2, 10, what="two receipts")
    book = ClaimBook(tmp_path / "dk-claims.db")  # what the door hub recorded at the doors
    for n in range(3):
        book.claim("NIGHT-1", f"T{n}", "door-a", 1000 + n)
    book.claim("NIGHT-1", "T9", "door-b", 2000)
    book.close()
    wait_until(lambda: agent.energy.wh.get("dk-power", 0) > 0, 10, what="energy drawn from the pack")
    agent.energy.save()

    lines: list[str] = []
    assert kit_down(agent.manifest, broker.url, tmp_path, wait_s=15, out=lines.append) == 0
    text = "\n".join(lines)
    assert "check-ins   4  (door-a 3)  (door-b 1)" in text and "printed     3 label(s)" in text  # 2 + the self-test's
    assert "dk-power:" in text and "outbox      empty" in text

    def summaries():
        with fleet.store.engine.connect() as conn:
            return [decode("event", b.encode() if isinstance(b, str) else b).data for (b,) in conn.exec_driver_sql(
                "SELECT body FROM events WHERE kind = 'summary' ORDER BY ts_ms")]
    wait_until(lambda: summaries(), 10, what="the summary at the fleet")
    s = summaries()[0]
    assert (s["checkins"], s["checkins_by_door"], s["labels_printed"]) == (4, {"door-a": 3, "door-b": 1}, 3)
    assert s["energy_wh"]["dk-power"] >= 0

    lines.clear()  # the next event starts from here
    assert kit_down(agent.manifest, broker.url, tmp_path, wait_s=15, out=lines.append) == 0
    assert "check-ins   0" in "\n".join(lines) and "printed     0 label(s)" in "\n".join(lines)


def test_reboot_restarts_the_agent_once_and_a_redelivery_after_it_does_not(kit):
    """The kit page's "reboot" on the agent: acked, then the agent stops asking its supervisor for a
    restart (run_agent exits RESTART_EXIT: systemd or `popkit demo` start it again). The same
    command reaching the next process (issued before it started) is answered, not obeyed."""
    from kits.contract import Command

    fleet, agent, _hw = kit
    done = command(fleet, "dk-agent", "reboot")
    assert (done["status"], done["detail"]) == ("ok", "restarting")
    wait_until(lambda: agent._stop.is_set(), 5, what="the agent stopping to restart")
    assert agent.restart is True

    earlier = Command(id="c-again", ts=agent.link.started_ms - 1, expires=agent.link.started_ms + 60_000,
                      action="reboot")
    again = Agent(agent.manifest, agent.link, agent.hw, agent.watch, agent.data)
    assert again._restart(earlier) == ("ok", f"restarted at {agent.link.started_ms}") and again.restart is False


def test_holding_the_button_darkens_the_led_at_once_and_stops_the_agent(kit):
    """The LED table says dark means shutting down: the crew sees the hold was taken, not "booting"."""
    _fleet, agent, hw = kit
    button = hw.pin_factory.pin(27)
    button.drive_low()  # held past the panel's hold time (3 s): a safe shutdown (no poweroff when simulated)
    wait_until(lambda: agent._stop.is_set(), 15, what="the agent stopping on the hold")
    button.drive_high()
    assert agent.panel.status == "off"
