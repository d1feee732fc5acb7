"""The rollout planner (fleet/updates/model.py), pure: canary then groups, the success threshold that
moves a rollout on, the error threshold that pauses it, the rate limit, a kit in its show skipped
and updated once the show ends, a held kit waiting with the crew's name, and an abort."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleet.updates.model import (DeviceUpdate, KitWindow, Rollout, Target, apply_report, assign_groups,
                                 group_sizes, parse_groups, plan)

NOW = 1_800_000_000_000
MIN = 60_000
HOUR = 60 * MIN


def rollout(groups=("1", "50%", "100%"), success=1.0, error=0.2, rate=100, **kw) -> Rollout:
    return Rollout(id=1, release="scanner-0.3.1", role="scanner", target=Target(), groups=tuple(groups),
                   success_threshold=success, error_threshold=error, rate_per_min=rate, **kw)


def fleet_of(n: int, groups=("1", "50%", "100%"), kits: int = 1) -> list[DeviceUpdate]:
    devices = [(f"s{i:02d}", f"k{i % kits}") for i in range(n)]
    return [DeviceUpdate(d, k, 1, g) for d, k, g in assign_groups(tuple(groups), devices)]


def set_state(updates, devices, state, offered_ms=NOW - HOUR):
    return [replace(u, state=state, offered_ms=offered_ms) if u.device in devices else u for u in updates]


def test_groups_are_cumulative_counts_and_percentages_rounded_up():
    assert group_sizes(("1", "10%", "50%", "100%"), 10) == [1, 0, 4, 5]
    assert group_sizes(("1", "10%", "100%"), 100) == [1, 9, 90]
    assert group_sizes(("5", "1%"), 3) == [3, 0]  # never more than there are, never shrinking
    assert group_sizes(("1", "33%"), 10) == [1, 3]  # the last group below 100%: the rest are left out
    assert parse_groups([1, "10%", "100%"]) == ("1", "10%", "100%")
    for bad in ([], ["0"], ["101%"], ["-1"], ["ten"], ["0%"]):
        with pytest.raises(ValueError):
            parse_groups(bad)


def test_the_canary_goes_first_and_the_next_group_waits_for_it_with_the_count():
    updates = fleet_of(10)
    p = plan(rollout(), updates, {}, NOW)
    assert p.offer == ["s00"]  # the canary, alone
    assert p.waits["s01"] == "group 2 waits for group 1: 0/1 committed (needs 1)"
    assert p.waits["s05"] == "group 3 waits for group 1: 0/1 committed (needs 1)"
    assert p.active_group == 0 and not p.pause and not p.done

    updates = set_state(updates, {"s00"}, "trial")  # on trial: not committed yet
    p = plan(rollout(), updates, {}, NOW)
    assert p.offer == [] and p.waits["s01"].startswith("group 2 waits for group 1: 0/1")

    updates = set_state(updates, {"s00"}, "committed")
    p = plan(rollout(), updates, {}, NOW)
    assert p.offer == ["s01", "s02", "s03", "s04"]  # group 2: up to 50 %
    assert p.waits["s09"] == "group 3 waits for group 2: 0/4 committed (needs 4)"


def test_the_success_threshold_lets_the_next_group_start_before_every_device_committed():
    updates = set_state(fleet_of(10), {"s00"}, "committed")
    updates = set_state(updates, {"s01", "s02", "s03"}, "committed")  # 3 of group 2's 4
    assert plan(rollout(success=1.0), updates, {}, NOW).offer == ["s04"]  # s04 still pending in group 2
    updates = set_state(updates, {"s04"}, "downloading")
    p = plan(rollout(success=0.75), updates, {}, NOW)
    assert p.offer == ["s05", "s06", "s07", "s08", "s09"] and p.active_group == 2
    p = plan(rollout(success=1.0), updates, {}, NOW)
    assert p.offer == [] and p.waits["s05"] == "group 3 waits for group 2: 3/4 committed (needs 4)"


def test_the_error_threshold_pauses_the_rollout_and_a_resume_acknowledges_what_failed():
    updates = set_state(fleet_of(10), {"s00"}, "committed")
    updates = set_state(updates, {"s01", "s02", "s03", "s04"}, "trial")
    updates = set_state(updates, {"s01"}, "rolled_back")  # 1/4 = 25 % >= 20 %
    p = plan(rollout(error=0.2), updates, {}, NOW)
    assert p.pause == "error threshold: group 2 has 1/4 failed or rolled back (pauses at 20%)"
    assert p.offer == [] and p.waits["s09"].startswith("rollout paused: error threshold")
    assert plan(rollout(error=0.3), updates, {}, NOW).pause is None  # under its threshold

    # Resumed by ops (the failure acknowledged): it goes on, until a new failure.
    resumed = rollout(error=0.2, failures_acknowledged=1)
    updates = set_state(updates, {"s02", "s03", "s04"}, "committed")
    p = plan(resumed, updates, {}, NOW)
    assert p.pause is None and p.offer == []  # group 2 has 3/4 committed, needs 4: s01 failed
    p = plan(replace(resumed, success_threshold=0.75), updates, {}, NOW)
    assert p.pause is None and p.offer == ["s05", "s06", "s07", "s08", "s09"]
    updates = set_state(set_state(updates, {"s05", "s06", "s07", "s08", "s09"}, "trial"), {"s05"}, "failed")
    assert plan(replace(resumed, success_threshold=0.75), updates, {}, NOW).pause.startswith(
        "error threshold: group 2 has 1/4")

    paused = rollout(state="paused", pause_reason="by ops: looking at s01")
    p = plan(paused, fleet_of(10), {}, NOW)
    assert p.offer == [] and p.waits["s00"] == "rollout paused: by ops: looking at s01"


def test_the_rate_limit_counts_offers_in_the_last_minute():
    updates = set_state(fleet_of(10, groups=("100%",)), set(), "pending")
    p = plan(rollout(groups=("100%",), rate=3), updates, {}, NOW)
    assert p.offer == ["s00", "s01", "s02"] and p.waits["s03"] == "rate limit: 3 devices a minute"
    updates = set_state(updates, {"s00", "s01"}, "offered", offered_ms=NOW - 30_000)
    assert plan(rollout(groups=("100%",), rate=3), updates, {}, NOW).offer == ["s02"]
    # A minute later those two no longer count.
    assert plan(rollout(groups=("100%",), rate=3), updates, {}, NOW + 31_000).offer == ["s02", "s03", "s04"]


def test_a_kit_in_its_show_is_skipped_then_updated_after_the_event_ends():
    updates = fleet_of(4, groups=("100%",), kits=2)  # k0: s00, s02; k1: s01, s03
    show = {"k1": KitWindow(doors_open_ms=NOW - HOUR, ends_ms=NOW + 2 * HOUR)}
    p = plan(rollout(groups=("100%",)), updates, show, NOW)
    assert p.offer == ["s00", "s02"]
    ends = "in show until 10:00 UTC"  # NOW is 2027-01-15 08:00 UTC
    assert p.waits == {"s01": ends, "s03": ends}
    # Doors not open yet, but they open within the lead: the update could still be on trial then.
    p = plan(rollout(groups=("100%",)), updates, {"k1": KitWindow(NOW + 10 * MIN, NOW + 4 * HOUR)}, NOW)
    assert p.waits["s01"] == "doors open at 08:10 UTC: in show until 12:00 UTC"
    assert plan(rollout(groups=("100%",)), updates, {"k1": KitWindow(NOW + 2 * HOUR, NOW + 4 * HOUR)},
                NOW).offer == ["s00", "s01", "s02", "s03"]
    # No doors-open time: it may be open already, so it waits for the end.
    p = plan(rollout(groups=("100%",)), updates, {"k1": KitWindow(None, NOW + HOUR)}, NOW)
    assert p.waits["s01"] == "in show until 09:00 UTC (doors-open time unknown)"
    # The event over: its devices are offered.
    assert plan(rollout(groups=("100%",)), updates, show, NOW + 2 * HOUR).offer == ["s00", "s01", "s02", "s03"]


def test_a_held_kit_waits_with_the_crews_name_until_the_hold_is_lifted():
    updates = fleet_of(4, groups=("100%",), kits=2)
    held = {"k0": KitWindow(held_by="crew-a", hold_reason="soundcheck")}
    p = plan(rollout(groups=("100%",)), updates, held, NOW)
    assert p.offer == ["s01", "s03"]
    assert p.waits == {"s00": "held by crew crew-a: soundcheck", "s02": "held by crew crew-a: soundcheck"}
    assert plan(rollout(groups=("100%",)), updates, {}, NOW).offer == ["s00", "s01", "s02", "s03"]


def test_an_aborted_rollout_offers_nothing_and_a_finished_one_is_done():
    updates = fleet_of(4, groups=("100%",))
    p = plan(rollout(groups=("100%",), state="aborted"), updates, {}, NOW)
    assert p.offer == [] and set(p.waits.values()) == {"rollout aborted"} and not p.done
    finished = set_state(updates, {"s00", "s01", "s02", "s03"}, "committed")
    assert plan(rollout(groups=("100%",)), finished, {}, NOW).done
    assert not plan(rollout(groups=("100%",)), set_state(finished, {"s03"}, "trial"), {}, NOW).done


def test_a_device_report_only_moves_an_update_forward():
    offered = DeviceUpdate("s00", "k0", 1, 0, "offered", offered_ms=NOW)
    trial = apply_report(offered, "trial", None, NOW + 1)
    assert trial.state == "trial"
    assert apply_report(trial, "downloading", None, NOW + 2) is None  # late, behind: nothing
    failed = apply_report(trial, "rolled_back", "self-check failed", NOW + 3)
    assert failed.state == "rolled_back" and failed.reason == "self-check failed"
    assert apply_report(failed, "committed", None, NOW + 4) is None  # final is final
    assert apply_report(DeviceUpdate("s01", "k0", 1, 0), "committed", None, NOW) is None  # never offered
    assert apply_report(offered, "bogus", None, NOW) is None
