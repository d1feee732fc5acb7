"""Event keys and revocations without re-flashing, as a door sees them: the real scanner firmware
(MicroPython unix port, from its ROMFS image), a real Mosquitto, the kit's agent parts (the door
hub, the kit's ticket list, its outbox link) and the real fleet on SQLite.

What the crew sees: a scanner flashed with no key admits tonight's tickets once the fleet gives it
the key; a key whose window is over leaves the scanner; a refund revoked at the kit with no uplink
and no fleet is refused at the door and at the hub at once; when the fleet comes, it keeps both its
own revocations and the kit's, pushes the union to the door, and the attendance says who revoked
each ticket and where.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from agent.hub import DoorHub
from agent.link import FleetLink
from agent.tickets import KIND, KitTickets
from kits.contract import Event, decode
from kits.tickets import EventKey, issue
from popkit.cli import main
from simulators.scanner import ScannerSim
from tests.conftest import DEMO_KIT, publisher, start_fleet, wait_until
from tests.device.firmware import Device, rom_images  # noqa: F401 - fixture
from tests.device.test_scanner_app import BUDGET, SCANNER, door, write_config

EVENT = "DOOR-K"


def boot(rom_images, tmp_path: Path, sim: ScannerSim, port: int) -> Device:
    """A scanner whose flashed file holds no event key at all, only its kit and broker."""
    cfg = write_config(tmp_path / "scanner.json", sim, port, tmp_path / "flash", keys=[], hub_ms=1000)
    n = sim.connections
    dev = Device.from_rom(rom_images["scanner"], cfg, budget=BUDGET)
    dev.expect(r"READY", timeout=10)
    sim.wait_connected(n + 1, timeout=10)
    return dev


def test_a_key_from_the_fleet_admits_its_event_and_leaves_when_its_window_ends(broker, fleet, rom_images, tmp_path):  # noqa: F811
    key = EventKey.generate(EVENT)
    now = int(time.time())
    good = [issue(key, EVENT, f"K{n}", "GA", now - 600, now + 3600) for n in range(3)]
    # A key whose window is over is refused at the API, naming the event and when it expired.
    r = fleet.api.put(f"/api/v1/events/{EVENT}/key", json={"key": key.secret.hex(), "not_before": now - 7200,
                                                           "expires": now - 60})
    assert r.status_code == 422 and EVENT in r.json()["detail"] and "expired" in r.json()["detail"], r.text
    sim = ScannerSim()
    dev = None
    try:
        dev = boot(rom_images, tmp_path, sim, broker.port)
        assert door(sim, good[0]) == "red"  # no key for this event on the scanner yet
        expires = now + 20
        r = fleet.api.put(f"/api/v1/events/{EVENT}/key", json={"key": key.secret.hex(), "not_before": now - 60,
                                                               "expires": expires})
        assert r.status_code == 200, r.text
        [pushed] = r.json()["pushed"]
        dev.expect(rf"CONFIG {pushed['version']} ", timeout=10)
        assert door(sim, good[1]) == "green"
        assert (tmp_path / "flash" / "gate" / f"redeemed-{EVENT}.log").exists()
        # Rebooted with no broker at all, it still has the key (saved on flash with its config).
        dev.kill()
        broker.kill()
        dev = boot(rom_images, tmp_path, sim, broker.port)
        assert door(sim, good[1]) == "red"  # admitted before the reboot: already_admitted
        assert door(sim, good[2]) == "green"
        # The key's window ends: the scanner drops it, and its redemption log, on its own.
        dev.expect(rf"KEY expired {EVENT}", timeout=expires - time.time() + 10)
        assert not (tmp_path / "flash" / "gate" / f"redeemed-{EVENT}.log").exists()
        assert door(sim, issue(key, EVENT, "K9", "GA", now - 600, now + 3600)) == "red"
        dev.expect(r"SCAN wrong_event K9 ", timeout=5)  # the lamp can come before the console line is read
        verdicts = [m.group(1) for m in dev.matching(r"SCAN (\w+) ")]
        assert verdicts == ["already_admitted", "admitted", "wrong_event"]
    finally:
        if dev is not None:
            dev.kill()
        sim.close()
        broker.start()


def test_a_ticket_revoked_at_the_kit_is_refused_at_once_and_the_fleet_keeps_the_union(broker, rom_images, tmp_path, capsys):  # noqa: F811
    """The kit's broker alone (no uplink, no fleet): the agent's parts and a door. Then the fleet comes."""
    key = EventKey.generate(EVENT)
    now = int(time.time())
    tickets = {t: issue(key, EVENT, t, "GA", now - 600, now + 3600) for t in ("R1", "R2", "R3", "OK1", "OK2")}
    # The scanner's config as the fleet pushed it before the uplink went: its key, retained at the kit broker.
    cfg = {"version": 1, "ts": now * 1000, "data": {"keys": [{"event": EVENT, "key": key.secret.hex(),
                                                              "not_before": now - 3600, "expires": now + 86400}]}}
    pub = publisher(broker.url)
    pub.publish(f"popkit/v1/demo/{SCANNER}/config", json.dumps(cfg), qos=1, retain=True).wait_for_publish(5)
    # The kit's agent: its outbox link, its ticket list and its door hub (agent/daemon.py wires them alike).
    link = FleetLink("demo", "demo-agent", "agent", broker.url, tmp_path / "outbox.db", resend_after_s=1.0).start()
    kit = KitTickets("demo", broker.url, tmp_path / "tickets.db",
                     emit=lambda d, ts: link.emit("demo-agent", "event", Event, ts=ts, kind=KIND, data=d)).start()
    hub = DoorHub("demo", broker.url, tmp_path / "claims.db", revoked=kit.is_revoked).start()
    sim = ScannerSim()
    fleet = dev = None
    try:
        assert hub.ready.wait(10) and kit.ready.wait(10)
        dev = boot(rom_images, tmp_path, sim, broker.port)
        dev.expect(r"CONFIG 1 0", timeout=10)
        wait_until(lambda: EVENT in kit.known_events(), what="the agent holding the scanner's key")
        assert door(sim, tickets["OK1"]) == "green"

        # At the kit's Pi, no agent control socket here: the request goes to the agent over the kit broker.
        revoke = ["tickets", "revoke", "--kit", str(DEMO_KIT), "--mqtt", broker.url, "--data", str(tmp_path / "nodaemon"),
                  "--event", EVENT, "--by", "crew-anna"]
        assert main(revoke + ["r1", "--timeout", "5"]) == 0
        assert "R1" in capsys.readouterr().out
        dev.expect(r"KIT 1$", timeout=10)  # the door has the kit's list
        assert door(sim, tickets["R1"]) == "red"
        # A revocation for an event the kit does not hold: refused, naming the event and the ones it knows.
        assert main(["tickets", "revoke", "--kit", str(DEMO_KIT), "--mqtt", broker.url, "--data",
                     str(tmp_path / "nodaemon"), "--event", "NOPE-1", "X1", "--timeout", "5"]) == 2
        err = capsys.readouterr().err
        assert "NOPE-1" in err and EVENT in err, err

        # The hub refuses a revoked ticket's claim whichever door asks, even one whose list is behind.
        answers = []
        sub = publisher(broker.url)
        sub.on_message = lambda _c, _u, m: answers.append(decode("claimed", m.payload))
        sub.subscribe("popkit/v1/demo/demo-scanner-9/claimed", 0)
        time.sleep(0.3)
        sub.publish("popkit/v1/demo/demo-scanner-9/claim",
                    json.dumps({"id": 7, "event": EVENT, "ticket": "R1", "ts": now * 1000}), qos=0)
        wait_until(lambda: answers, what="the hub's answer")
        assert answers[0].admit is False and answers[0].reason == "revoked"
        assert hub.book.count() == 1  # OK1 only: a refused revoked claim is not recorded

        # The fleet comes (the uplink is back): its own revocation, then the kit's arrive through the outbox.
        fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
        assert fleet.api.put(f"/api/v1/events/{EVENT}/key", json={
            "key": key.secret.hex(), "not_before": now - 3600, "expires": now + 86400}).status_code == 200
        r = fleet.api.post(f"/api/v1/events/{EVENT}/revocations", json={"tickets": ["R3"]})
        assert r.status_code == 200, r.text
        wait_until(lambda: {"R1", "R3"} <= set((fleet.store.config.desired(SCANNER)["data"].get("revoked") or {})
                                               .get(EVENT, [])), 20, what="the kit's revocation in the fleet's config")
        final = fleet.store.config.desired(SCANNER)
        dev.expect(rf"CONFIG {final['version']} ", timeout=10)
        assert door(sim, tickets["R3"]) == "red"  # revoked at the fleet
        assert door(sim, tickets["R1"]) == "red"  # revoked at the kit: still, whichever list came last
        assert door(sim, tickets["OK2"]) == "green"
        wait_until(lambda: fleet.api.get(f"/api/v1/events/{EVENT}/attendance").status_code == 200
                   and fleet.api.get(f"/api/v1/events/{EVENT}/attendance").json()["scans"] >= 5, 20,
                   what="the door's check-ins in the fleet")
        att = fleet.api.get(f"/api/v1/events/{EVENT}/attendance").json()
        who = {r["ticket"]: (r["revoked_by"], r["revoked_at"]) for r in att["revocations"]}
        assert who["R1"] == ("crew-anna", "kit demo/demo-agent")
        assert who["R3"][1] == "fleet" and who["R3"][0] != "crew-anna"
        assert att["by_verdict"]["revoked"] == 3
        wait_until(lambda: not len(link.outbox), 10, what="the agent's outbox drained by the fleet's receipts")
    finally:
        if dev is not None:
            dev.kill()
        sim.close()
        hub.stop()
        kit.stop()
        link.stop()
        if fleet is not None:
            fleet.ingest.stop()
            fleet.store.close()
