"""The power-up verdict: steps run, stuck or broken steps become faults, the battery is held to the event."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from agent.powerup import Step, StepResult, battery_problems, run_steps, runtime_hours
from agent.readiness import fault, warning

NOW = datetime(2026, 11, 21, 18, 0, tzinfo=timezone.utc)


def step(device: str, result: StepResult | None = None, delay: float = 0.0, boom: bool = False) -> Step:
    async def run() -> StepResult:
        await asyncio.sleep(delay)
        if boom:
            raise RuntimeError("driver exploded")
        return result or StepResult("fine")
    return Step(device, "thing", run)


def test_all_clear_is_ready_a_warning_degrades_a_fault_is_not_ready():
    ok = asyncio.run(run_steps([step("link")], [step("a"), step("b")]))
    assert ok.status == "ready" and ok.problems == [] and list(ok.results) == ["link", "a", "b"]
    warn = asyncio.run(run_steps([], [step("a", StepResult("low", [warning("a", "paper low", "have a spare roll")]))]))
    assert warn.status == "degraded"
    bad = asyncio.run(run_steps([], [step("a", StepResult("out", [fault("a", "paper out", "load a roll")])),
                                     step("b", StepResult("low", [warning("b", "x", "y")]))]))
    assert bad.status == "not_ready"
    assert bad.event_data()["problems"][0] == {"device": "a", "severity": "fault", "what": "paper out", "fix": "load a roll"}


def test_a_step_that_hangs_or_raises_is_a_fault_and_the_others_still_run():
    seen = []
    r = asyncio.run(run_steps([], [step("slow", delay=5), step("broken", boom=True), step("fine")],
                              progress=lambda s, res: seen.append((s.device, res is None)), timeout_s=0.2))
    assert r.status == "not_ready"
    assert "did not answer" in r.results["slow"].problems[0].what
    assert "driver exploded" in r.results["broken"].problems[0].what
    assert r.results["fine"].problems == []
    assert sorted(seen) == sorted([("slow", True), ("broken", True), ("fine", True),
                                   ("slow", False), ("broken", False), ("fine", False)])
    assert r.took_s < 5  # the hung step was cut at its timeout, not waited out (its own delay is 5 s)


def test_runtime_from_the_shunt_or_from_the_bms():
    assert runtime_hours(12.8, -6.0, 80, 130, None) == 130 / 60  # VE.Direct's own time-to-go
    assert runtime_hours(12.8, 2.0, 80, -1, None) is None  # charging: infinite
    assert runtime_hours(13.1, -10.0, 70, None, 50.0) == 5.0  # JBD: remaining Ah over the load
    assert runtime_hours(13.1, 0.0, 70, None, 50.0) is None  # no load: cannot run out


def test_a_pack_that_will_not_last_to_the_end_is_a_warning_with_the_numbers():
    ends = NOW + timedelta(hours=4, minutes=30)
    [p] = battery_problems("pack", 80, 2 + 10 / 60, now=NOW, ends=ends, doors_open=None, min_soc=None, min_runtime_h=None)
    assert p.severity == "warning"
    assert "will not last to the event's end" in p.what and "2 h 10" in p.what and "4 h 30" in p.what
    assert p.fix == "charge or swap the pack, or cut the load"
    assert battery_problems("pack", 80, 5.0, now=NOW, ends=ends, doors_open=None, min_soc=None, min_runtime_h=None) == []


def test_charge_under_the_doors_open_minimum_is_a_warning_and_a_past_end_uses_the_minimum_runtime():
    doors = NOW + timedelta(hours=1)
    [p] = battery_problems("pack", 45, None, now=NOW, ends=None, doors_open=doors, min_soc=60, min_runtime_h=None)
    assert p.what == "charge 45 % is under the 60 % wanted at doors-open"
    past = NOW - timedelta(hours=1)
    [q] = battery_problems("pack", 90, 1.0, now=NOW, ends=past, doors_open=None, min_soc=None, min_runtime_h=3)
    assert "1 h 00 left" in q.what and "3 h 00 needed" in q.what


def test_an_event_days_away_is_judged_on_its_own_length_not_the_days_until_it():
    doors, ends = NOW + timedelta(days=6), NOW + timedelta(days=6, hours=7)
    assert battery_problems("pack", 90, 14.5, now=NOW, ends=ends, doors_open=doors, min_soc=None, min_runtime_h=None) == []
    [p] = battery_problems("pack", 90, 5.0, now=NOW, ends=ends, doors_open=doors, min_soc=None, min_runtime_h=None)
    assert "7 h 00 needed" in p.what


def test_the_panel_code_is_the_lowest_check_among_the_faults_else_the_warnings():
    from agent.readiness import blink_code

    roles = {"k-agent": "agent", "door": "scanner", "stage": "lighting", "pr": "printer", "pack": "powerbank",
             "flood": "light"}
    assert blink_code([], roles) is None
    assert blink_code([warning("k-agent", "no link", "x"), fault("pr", "paper out", "load a roll")], roles) == 4
    assert blink_code([fault("flood", "relay", "x"), fault("door", "offline", "x")], roles) == 2
    assert blink_code([warning("pack", "low", "x"), warning("k-agent", "no link", "x")], roles) == 1
    assert blink_code([fault("stage", "offline", "x")], roles) == 3
    clock = warning("k-agent", "the Pi's clock is behind", "connect the uplink, or fit an RTC module", check="clock")
    assert blink_code([clock], roles) == 7 and blink_code([clock, warning("flood", "x", "y")], roles) == 6


def test_a_device_not_online_is_told_what_the_kit_really_shows():
    """The firmware has no lamp that blinks while it looks for Wi-Fi: the fix text must not promise one."""
    import asyncio

    from agent.checks import firmware_step
    from kits.manifest import DeviceSpec

    class NoneOnline:
        def wait_online(self, device, timeout):
            return None

    for role in ("scanner", "lighting"):
        res = asyncio.run(firmware_step(DeviceSpec(id="d1", role=role), NoneOnline(), wait_s=0).run())
        [p] = res.problems
        assert "blink" not in p.fix and "popkit device flash" in p.fix and "kit's Wi-Fi" in p.fix
        assert ("lights its lamp green or red" in p.fix) == (role == "scanner")  # a lighting controller has no lamp
        assert p.as_dict()["fix"] == p.fix  # whole in the fleet's readiness event (160 characters)


def test_no_link_to_a_broker_on_this_pi_points_at_the_kit_broker_not_the_venue():
    from agent.checks import link_fix

    assert "systemctl restart mosquitto" in link_fix("mqtts://127.0.0.1:8883?account=/etc/popkit/agent.json")
    assert "venue" not in link_fix("mqtt://localhost")
    assert "fleet.example.org" in link_fix("mqtts://fleet.example.org:8883")


def test_a_pi_clock_behind_its_last_known_time_blinks_its_own_count_not_the_brokers():
    import threading

    from agent.checks import link_step
    from agent.readiness import blink_code

    class Link:
        mqtt_url, outbox, clock = "mqtts://127.0.0.1:8883", [], "unset"
        connected = threading.Event()

    Link.connected.set()
    res = asyncio.run(link_step(Link(), "k-agent").run())
    [p] = res.problems
    assert p.severity == "warning" and p.check == "clock"
    assert blink_code(res.problems, {"k-agent": "agent"}) == 7
