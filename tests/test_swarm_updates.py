"""The swarm's kits take updates as real kits do (simulators/swarm_updates.py), against a real
Mosquitto and the fleet's real ingest and command machinery: each agent acks the fleet's ``update``
command once its (simulated) fetch is done, fetches a release once per kit, refuses what it cannot
take with the reason, defers while its kit is in use; each ESP32 reports downloading, trial and its
outcome in its retained state, and the fleet's rollout follows. bench.updates rests on this."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from fleet.commands.delivery import Publisher
from fleet.db import now_ms
from fleet.updates.delivery import UpdateDelivery
from fleet.updates.model import Release, Target
from kits.contract import Command, UpdateCommandArgs, decode, encode, topic
from simulators.swarm import Swarm
from simulators.swarm_updates import FAIL_WHY, ROLLBACK_WHY, UpdateBehaviour
from tests.conftest import start_fleet, wait_until
from tests.test_swarm import assert_nothing_lost_or_doubled, register

QUICK = dict(fetch_s=(0.2, 0.4), download_s=(0.2, 0.5), trial_s=(0.2, 0.4))


@pytest.fixture
def swarm_fleet(broker, tmp_path):
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}", kits=())
    yield f
    f.ingest.stop()
    f.store.close()


def add_release(store, version: str = "0.4.0", role: str = "scanner") -> Release:
    release = Release(role, version, f"{role}-{version}", {"role": role, "version": version}, "0" * 16, 4096, now_ms())
    store.updates.add_release(release, "ab" * 32)
    return release


def args_for(offer: dict) -> dict:
    """What the fleet's worker sends for an offer (the url and token are the fleet's business here)."""
    return UpdateCommandArgs(rollout=offer["rollout"], release=offer["release"], device=offer["device"],
                             fw=offer["fw"], manifest_sha256=offer["manifest_sha256"], size=offer["size"],
                             url=f"http://fleet.invalid/api/v1/releases/{offer['release']}/bundle/",
                             token="t", downgrade=offer["downgrade"]).model_dump()


def test_a_share_of_updates_fails_or_rolls_back_as_set_and_the_same_seed_gives_the_same_devices():
    b = UpdateBehaviour(fail_p=0.1, rollback_p=0.05, seed=7)
    outcomes = Counter(b.outcome(f"k{i:04d}-scan-1", "scanner-0.4.0") for i in range(20_000))
    assert abs(outcomes["failed"] / 20_000 - 0.1) < 0.01 and abs(outcomes["rolled_back"] / 20_000 - 0.05) < 0.01
    again = UpdateBehaviour(fail_p=0.1, rollback_p=0.05, seed=7)
    other = UpdateBehaviour(fail_p=0.1, rollback_p=0.05, seed=8)
    devices = [f"k{i:04d}-scan-1" for i in range(200)]
    assert [b.outcome(d, "scanner-0.4.0") for d in devices] == [again.outcome(d, "scanner-0.4.0") for d in devices]
    assert [b.outcome(d, "scanner-0.4.0") for d in devices] != [other.outcome(d, "scanner-0.4.0") for d in devices]
    with pytest.raises(ValueError, match="together at most 1"):
        UpdateBehaviour(fail_p=0.7, rollback_p=0.5)
    with pytest.raises(ValueError, match="trial_s"):
        UpdateBehaviour(trial_s=(2.0, 1.0))


def test_the_states_and_acks_the_swarm_makes_are_the_contracts():
    swarm = Swarm(1, 5, "mqtt://127.0.0.1:1", seed=1)
    agent, scanner = swarm.devices[0], swarm.devices[2]
    scanner.fw = b"scanner-0.4.0"
    scanner.set_update(b'{"state":"rolled_back","fw":"scanner-0.4.0","why":"never healthy in 300 s"}')
    for online, reason in ((True, "birth"), (False, "lwt")):
        state = decode("state", scanner.state_payload(online, reason))
        assert (state.fw, state.update.state, state.update.fw, state.update.why) == (
            "scanner-0.4.0", "rolled_back", "scanner-0.4.0", ROLLBACK_WHY)
    assert decode("state", swarm.devices[1].state_payload(True, "birth")).update is None  # no news: no field
    agent.ack("c0ffee", "rejected", "x" * 300)
    ack = decode("ack", agent.outbox[agent.seq][1])
    assert (ack.cmd_id, ack.status, ack.boot, ack.seq, len(ack.detail)) == ("c0ffee", "rejected", agent.boot, 1, 200)


def test_a_rollout_through_the_swarms_kits_fetches_once_per_kit_and_every_device_reports_its_outcome(
        broker, swarm_fleet):
    def outcomes(seed: int) -> dict[str, str]:
        b = UpdateBehaviour(fail_p=0.3, rollback_p=0.3, seed=seed)
        return {f"k{k:04d}-scan-{j}": b.outcome(f"k{k:04d}-scan-{j}", "scanner-0.4.0") for k in (1, 2, 3) for j in (1, 2)}
    # A seed whose six scanners go all three ways: the test then covers each, and says which.
    seed = next(s for s in range(200) if set(outcomes(s).values()) == {"committed", "failed", "rolled_back"})
    expected = outcomes(seed)
    swarm = Swarm(3, 5, swarm_fleet.settings.mqtt_url, period_s=0.5, seed=seed, checkin_p=0.0,
                  updates=UpdateBehaviour(fail_p=0.3, rollback_p=0.3, seed=seed, **QUICK))
    register(swarm_fleet, swarm)
    store, fleet_pub = swarm_fleet.store, Publisher.for_ingest(swarm_fleet.store, swarm_fleet.ingest)
    swarm.start_in_thread()
    try:
        wait_until(lambda: swarm.stats().connected == 15, 20, what="15 devices connected")
        delivery = UpdateDelivery(store)
        rollout = delivery.create(add_release(store), Target(), ("100%",), 0.0, 1.0, 1000, "ops-test")
        offers = delivery.step()
        assert sorted(o["device"] for o in offers) == sorted(expected)
        sent = [fleet_pub.send_command(o["agent"], "update", args_for(o), ttl_s=3600) for o in offers]
        wait_until(lambda: all(store.commands.get(c["id"])["status"] == "ok" for c in sent), 20,
                   what="every update command acked ok")
        wait_until(lambda: {u.device: u.state for u in store.updates.updates(rollout.id)} == expected, 20,
                   what="the rollout's devices at their outcomes")
        # A copy of a command (the fleet resends what is unanswered when an agent comes back) is answered, not run again.
        agent = offers[0]["agent"]
        copy = Command(id=sent[0]["id"], ts=now_ms(), expires=now_ms() + 60_000, action="update",
                       args=args_for(offers[0]))
        fleet_pub._publish(topic(offers[0]["kit"], agent, "cmd"), encode(copy), retain=False)
        wait_until(lambda: swarm.update_log().duplicates == 1, 10, what="the copy answered")
        log = swarm.update_log()
    finally:
        swarm.stop(flush_s=20)
    assert log.fetches == 3, "one fetch per kit and release, not one per device"
    assert len(log.commands) == 6 and log.acks == Counter(ok=7)  # six, and the copy's answer again
    assert {d: s for d, (s, _r) in log.final.items()} == expected
    why = {u.device: u.reason for u in store.updates.updates(rollout.id)}
    assert {why[d] for d, s in expected.items() if s == "failed"} == {FAIL_WHY}
    assert {why[d] for d, s in expected.items() if s == "rolled_back"} == {ROLLBACK_WHY}
    wait_until(lambda: {d: fw for d, fw in delivery.running().items() if d in expected} == {
        d: "scanner-0.4.0" if s == "committed" else "swarm-0.1.0" for d, s in expected.items()}, 10,
        what="each device's stored fw: the release if committed, its old one otherwise")
    assert log.reports["downloading"] == 6 and log.reports["trial"] == 6 - list(expected.values()).count("failed")
    assert_nothing_lost_or_doubled(swarm_fleet, swarm)  # the acks too: ledger messages like any other


def test_what_a_kit_cannot_take_is_rejected_with_the_reason_and_plain_commands_are_answered(broker, swarm_fleet):
    swarm = Swarm(2, 3, swarm_fleet.settings.mqtt_url, period_s=1.0, seed=1, checkin_p=0.0,
                  updates=UpdateBehaviour(**QUICK))
    register(swarm_fleet, swarm)
    pub = Publisher.for_ingest(swarm_fleet.store, swarm_fleet.ingest)
    swarm.start_in_thread()
    try:
        wait_until(lambda: swarm.stats().connected == 6, 20, what="6 devices connected")
        good = args_for(dict(rollout=1, release="scanner-0.4.0", device="k0001-scan-1", fw="scanner-0.4.0",
                             manifest_sha256="ab" * 32, size=10, downgrade=False))
        cmds = {
            "other kit": pub.send_command("k0001-agent", "update", {**good, "device": "k0002-scan-1"}),
            "bad args": pub.send_command("k0001-agent", "update", {**good, "manifest_sha256": "nothex"}),
            "unknown": pub.send_command("k0001-agent", "dance", {}),
            "identify": pub.send_command("k0002-agent", "identify", {}),
            "expired": pub.send_command("k0002-agent", "identify", {}, ttl_s=0),
        }
        wait_until(lambda: all(swarm_fleet.store.commands.get(c["id"])["status"] != "pending" for c in cmds.values()),
                   15, what="every command answered")
        got = {k: (swarm_fleet.store.commands.get(c["id"])["status"], swarm_fleet.store.commands.get(c["id"])["detail"])
               for k, c in cmds.items()}
        log = swarm.update_log()
    finally:
        swarm.stop(flush_s=10)
    assert got["other kit"] == ("rejected", "k0002-scan-1 is not in kit k0001")
    assert got["bad args"][0] == "rejected" and got["bad args"][1].startswith("bad args: manifest_sha256")
    assert got["unknown"][0] == "rejected" and "'dance'" in got["unknown"][1]
    assert got["identify"] == ("ok", "ready") and got["expired"][0] == "expired"
    assert log.fetches == 0 and log.reports == Counter()  # nothing refused went any further


def test_a_kit_in_use_defers_its_offer_until_its_doors_go_quiet(broker, swarm_fleet):
    # Every tick a check-in: the kit is in use; quiet again 1.5 s after its last one.
    swarm = Swarm(1, 3, swarm_fleet.settings.mqtt_url, period_s=0.2, seed=2, checkin_p=1.0,
                  updates=UpdateBehaviour(in_use_s=1.5, **QUICK))
    register(swarm_fleet, swarm)
    pub = Publisher.for_ingest(swarm_fleet.store, swarm_fleet.ingest)
    swarm.start_in_thread()
    try:
        wait_until(lambda: swarm.stats().connected == 3 and swarm.updates.last_checkin, 20, what="the kit in use")
        cmd = pub.send_command("k0001-agent", "update", args_for(dict(
            rollout=1, release="scanner-0.4.0", device="k0001-scan-1", fw="scanner-0.4.0", manifest_sha256="ab" * 32,
            size=10, downgrade=False)), ttl_s=3600)
        wait_until(lambda: swarm.update_log().deferred >= 1, 10, what="the offer deferred")
        time.sleep(1.0)
        assert swarm_fleet.store.commands.get(cmd["id"])["status"] == "pending"  # not acked while deferred
        assert swarm.update_log().reports == Counter()
        swarm.checkin_p = 0.0  # the doors go quiet
        wait_until(lambda: swarm.update_log().final.get("k0001-scan-1") == ("committed", "scanner-0.4.0"), 15,
                   what="the update done once the kit is quiet")
        assert swarm_fleet.store.commands.get(cmd["id"])["status"] == "ok"
    finally:
        swarm.stop(flush_s=10)


def test_an_agent_release_updates_the_kits_agent_itself_or_rolls_it_back(broker, swarm_fleet):
    release = "agent-0.2.0"
    behaviour = UpdateBehaviour(rollback_p=0.5, seed=next(s for s in range(100) if {
        UpdateBehaviour(rollback_p=0.5, seed=s).outcome(a, release) for a in ("k0001-agent", "k0002-agent")} == {
        "committed", "rolled_back"}), **QUICK)
    expected = {a: behaviour.outcome(a, release) for a in ("k0001-agent", "k0002-agent")}
    swarm = Swarm(2, 3, swarm_fleet.settings.mqtt_url, period_s=1.0, seed=3, checkin_p=0.0, updates=behaviour)
    register(swarm_fleet, swarm)
    pub = Publisher.for_ingest(swarm_fleet.store, swarm_fleet.ingest)
    swarm.start_in_thread()
    try:
        wait_until(lambda: swarm.stats().connected == 6, 20, what="6 devices connected")
        for agent in expected:
            pub.send_command(agent, "update", args_for(dict(rollout=1, release=release, device=agent, fw=release,
                                                            manifest_sha256="ab" * 32, size=10, downgrade=False)))
        wait_until(lambda: len(swarm.update_log().final) == 2, 15, what="both agents' updates over")
        running = UpdateDelivery(swarm_fleet.store).running
        want = {a: release if s == "committed" else "swarm-0.1.0" for a, s in expected.items()}
        wait_until(lambda: {a: running().get(a) for a in expected} == want, 10, what="the agents' fw in the fleet")
        log = swarm.update_log()
    finally:
        swarm.stop(flush_s=10)
    assert {a: s for a, (s, _r) in log.final.items()} == expected
    assert log.reports["downloading"] == 0 and log.reports["trial"] == 0  # no ESP32 download, no A/B trial
    assert log.acks == Counter(ok=2) and log.fetches == 2
