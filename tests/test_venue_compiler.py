"""fleet.venues: the venue lighting model, sunrise/sunset, and the compiler to a controller's
format-1 timeline (docs/lighting-timeline.md). Pure: no database, no network."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from fleet.venues import (CompileError, OnceWindow, Output, Override, Scene, ScheduleConflict, SunEdge, SunWindow,
                          Venue, WeeklyWindow, Zone, ZoneLevel, compile_timeline, local_to_utc, preview, sun_times)

UTC = timezone.utc
LONDON = ZoneInfo("Europe/London")
SYDNEY = ZoneInfo("Australia/Sydney")
EVERY_DAY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def ts(s: str) -> int:
    """'2026-03-29T18:00Z' -> epoch seconds."""
    return int(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp())


def at(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


# ------------------------------------------------------------------ the structural check

LEVEL_KEYS = {"r", "g", "b", "w", "dmx"}


def check_levels(levels, where: str, universe: int = 512) -> None:
    assert isinstance(levels, dict), where
    assert set(levels) <= LEVEL_KEYS, f"{where}: unknown keys {set(levels) - LEVEL_KEYS}"
    for k in "rgbw":
        if k in levels:
            v = levels[k]
            assert isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255, f"{where}.{k}: {v!r}"
    used: set[int] = set()
    for slot, run in levels.get("dmx", {}).items():
        assert isinstance(slot, str) and slot.isdigit() and 1 <= int(slot) <= 512, f"{where}.dmx: slot {slot!r}"
        assert isinstance(run, list) and run, f"{where}.dmx.{slot}"
        assert int(slot) + len(run) - 1 <= universe, f"{where}.dmx.{slot}: runs past slot {universe}"
        for i, v in enumerate(run):
            assert isinstance(v, int) and 0 <= v <= 255, f"{where}.dmx.{slot}[{i}]: {v!r}"
            assert int(slot) + i not in used, f"{where}.dmx: slot {int(slot) + i} is set twice"
            used.add(int(slot) + i)


def check_timeline(tl: dict) -> None:
    """What the controller validates (docs/lighting-timeline.md, "Format 1"), as assertions."""
    assert set(tl) <= {"format", "scenes", "default", "windows", "floor", "meta"}, set(tl)
    assert tl["format"] == 1
    scenes = tl["scenes"]
    assert 1 <= len(scenes) <= 255
    for sid, sc in scenes.items():
        assert set(sc) <= {"levels", "fade_ms"}, sid
        check_levels(sc["levels"], f"scenes.{sid}.levels")
        assert 0 <= sc.get("fade_ms", 0) <= 3_600_000
    if "default" in tl:
        assert tl["default"] in scenes
    windows = tl["windows"]
    assert len(windows) <= 1024
    for i, w in enumerate(windows):
        start, end, scene, prio = w
        assert all(isinstance(x, int) for x in (start, end, prio)), f"windows[{i}]"
        assert end > start, f"windows[{i}]: end {end} is not after start {start}"
        assert scene in scenes, f"windows[{i}]: unknown scene {scene!r}"
        assert 0 <= prio <= 255
        if i:
            assert windows[i - 1][0] <= start, f"windows[{i}] comes before windows[{i - 1}]"
    for i, a in enumerate(windows):
        for j in range(i + 1, len(windows)):
            b = windows[j]
            if a[3] == b[3]:
                assert not (a[0] < b[1] and b[0] < a[1]), f"windows[{i}] and windows[{j}] overlap at priority {a[3]}"
    if "floor" in tl:
        assert set(tl["floor"]) == {"levels", "open"}
        check_levels(tl["floor"]["levels"], "floor.levels")
        for s, e in tl["floor"]["open"]:
            assert isinstance(s, int) and isinstance(e, int) and e > s
    json.dumps(tl, separators=(",", ":"))  # it must travel as JSON


# ------------------------------------------------------------------ a small venue

def venue(tz="Europe/London", lat=51.5074, lon=-0.1278, hours=None) -> Venue:
    return Venue(id="demo", name="Demo room", tz=tz, latitude=lat, longitude=lon,
                 hours=hours if hours is not None else [{"days": EVERY_DAY, "open": "18:00", "close": "02:00"}])


ZONES = [
    Zone(id="stage", name="Stage", outputs=[Output(controller="ctl-a", kind="pwm", channel=c) for c in "rgb"]),
    Zone(id="wash", name="Wash", outputs=[Output(controller="ctl-a", kind="dmx", slot=1, count=3)]),
    Zone(id="exit", name="Exits", safety=True, floor_level=90,
         outputs=[Output(controller="ctl-a", kind="pwm", channel="w"),
                  Output(controller="ctl-b", kind="dmx", slot=23, count=2)]),
    Zone(id="bar", name="Bar", outputs=[Output(controller="ctl-b", kind="dmx", slot=1, count=4)]),
]
SCENES = [
    Scene(id="dark"),
    Scene(id="show", levels={"stage": ZoneLevel(level=255, rgb=(255, 128, 0)), "wash": ZoneLevel(level=200)},
          fade_ms=2000),
    Scene(id="house", levels={"stage": ZoneLevel(level=100), "bar": ZoneLevel(level=255, rgb=(255, 0, 51))}),
]


def compile_(schedules, overrides=(), controller="ctl-a", start="2026-03-27T12:00Z", hours=72, **kw):
    v = kw.pop("venue", None) or venue()
    tl = compile_timeline(v, kw.pop("zones", ZONES), kw.pop("scenes", SCENES), schedules, list(overrides),
                          controller, at(start), hours, compiled_at=at("2026-03-01T00:00Z"))
    check_timeline(tl)
    return tl


def weekly(id="evening", start="19:00", end="23:00", scene="show", priority=10, **kw) -> WeeklyWindow:
    return WeeklyWindow(id=id, scene=scene, priority=priority, days=kw.pop("days", EVERY_DAY),
                        start=start, end=end, **kw)


def spans(tl, prio=None):
    return [(w[0], w[1]) for w in tl["windows"] if prio is None or w[3] == prio]


# ------------------------------------------------------------------ DST, Europe/London

def test_weekly_window_across_london_spring_forward():
    # Clocks go forward 01:00 GMT on Sunday 29 March 2026: 19:00 local is 19:00 UTC before, 18:00 after.
    tl = compile_([weekly()], start="2026-03-27T12:00Z", hours=72)
    assert spans(tl) == [(ts("2026-03-27T19:00Z"), ts("2026-03-27T23:00Z")),
                         (ts("2026-03-28T19:00Z"), ts("2026-03-28T23:00Z")),
                         (ts("2026-03-29T18:00Z"), ts("2026-03-29T22:00Z"))]


def test_weekly_window_across_london_fall_back():
    # Clocks go back 02:00 BST on Sunday 25 October 2026.
    tl = compile_([weekly()], start="2026-10-24T12:00Z", hours=48)
    assert spans(tl) == [(ts("2026-10-24T18:00Z"), ts("2026-10-24T22:00Z")),
                         (ts("2026-10-25T19:00Z"), ts("2026-10-25T23:00Z"))]


def test_overnight_window_spanning_the_fall_back_is_an_hour_longer():
    # 22:00 BST Saturday to 03:00 GMT Sunday: 5 local hours, 6 real ones.
    tl = compile_([weekly(start="22:00", end="03:00", days=["sat"])], start="2026-10-24T12:00Z", hours=24)
    assert spans(tl) == [(ts("2026-10-24T21:00Z"), ts("2026-10-25T03:00Z"))]


def test_gap_and_ambiguous_local_times_rule():
    # Spring-forward gap (01:00..02:00 local does not exist): the instant the clocks jump.
    assert local_to_utc(datetime(2026, 3, 29, 1, 30), LONDON) == at("2026-03-29T01:00Z")
    assert local_to_utc(datetime(2026, 3, 29, 0, 59), LONDON) == at("2026-03-29T00:59Z")
    assert local_to_utc(datetime(2026, 3, 29, 2, 0), LONDON) == at("2026-03-29T01:00Z")
    # Fall-back hour (01:00..02:00 happens twice): the first occurrence, still BST.
    assert local_to_utc(datetime(2026, 10, 25, 1, 30), LONDON) == at("2026-10-25T00:30Z")
    assert local_to_utc(datetime(2026, 10, 25, 2, 0), LONDON) == at("2026-10-25T02:00Z")


def test_windows_in_the_gap():
    partly = OnceWindow(id="early", scene="show", date=date(2026, 3, 29), start="01:30", end="03:00")
    wholly = OnceWindow(id="ghost", scene="house", priority=5, date=date(2026, 3, 29), start="01:15", end="01:45")
    tl = compile_([partly, wholly], start="2026-03-28T12:00Z", hours=24)
    # 01:30 does not exist: the window starts when the clocks jump (02:00 BST) and ends 03:00 BST;
    # the one wholly inside the gap never happens.
    assert tl["windows"] == [[ts("2026-03-29T01:00Z"), ts("2026-03-29T02:00Z"), "show", 0]]


# ------------------------------------------------------------------ DST, southern hemisphere

def test_sydney_weekly_window_across_both_transitions():
    v = venue(tz="Australia/Sydney", lat=-33.8688, lon=151.2093)
    # DST ends 03:00 AEDT Sunday 5 April 2026 (UTC+11 -> +10).
    tl = compile_([weekly()], venue=v, start="2026-04-04T00:00Z", hours=48)
    assert spans(tl) == [(ts("2026-04-04T08:00Z"), ts("2026-04-04T12:00Z")),
                         (ts("2026-04-05T09:00Z"), ts("2026-04-05T13:00Z"))]
    # DST starts 02:00 AEST Sunday 4 October 2026 (UTC+10 -> +11).
    tl = compile_([weekly()], venue=v, start="2026-10-03T00:00Z", hours=48)
    assert spans(tl) == [(ts("2026-10-03T09:00Z"), ts("2026-10-03T13:00Z")),
                         (ts("2026-10-04T08:00Z"), ts("2026-10-04T12:00Z"))]
    assert local_to_utc(datetime(2026, 10, 4, 2, 30), SYDNEY) == at("2026-10-03T16:00Z")  # gap -> 03:00 AEDT
    assert local_to_utc(datetime(2026, 4, 5, 2, 30), SYDNEY) == at("2026-04-04T15:30Z")  # first, AEDT


def test_opening_hours_floor_follows_dst():
    tl = compile_([weekly()], start="2026-03-28T12:00Z", hours=36)
    # 18:00 GMT Sat -> 02:00 BST Sun (= 01:00 UTC), then 18:00 BST Sun (17:00 UTC) -> 02:00 BST Mon.
    assert tl["floor"]["open"] == [[ts("2026-03-28T18:00Z"), ts("2026-03-29T01:00Z")],
                                   [ts("2026-03-29T17:00Z"), ts("2026-03-30T01:00Z")]]


# ------------------------------------------------------------------ the sun

# Expected values: the brief's figures (as published by e.g. timeanddate.com, to the minute), which
# astral 3.2 reproduces here to within a minute. They were not re-checked against a published table
# in this offline session, so the tolerance is +-2 minutes and no finer.
@pytest.mark.parametrize("day, lat, lon, tz, local_sunset", [
    (date(2026, 6, 21), 51.5074, -0.1278, "Europe/London", datetime(2026, 6, 21, 21, 21)),  # BST
    (date(2026, 12, 21), 51.5074, -0.1278, "Europe/London", datetime(2026, 12, 21, 15, 53)),  # GMT
    (date(2026, 12, 21), -33.8688, 151.2093, "Australia/Sydney", datetime(2026, 12, 21, 20, 5)),  # AEDT
])
def test_sunset_matches_published_times(day, lat, lon, tz, local_sunset):
    got = sun_times(day, lat, lon, tz).sunset
    assert got is not None and got.tzinfo is not None
    want = local_sunset.replace(tzinfo=ZoneInfo(tz))
    assert abs(got - want) <= timedelta(minutes=2), (got.astimezone(ZoneInfo(tz)), want)


def test_sunrise_is_for_the_local_date():
    # Sydney's sunrise on its 21 December is on 20 December UTC (about 05:41 AEDT).
    rise = sun_times(date(2026, 12, 21), -33.8688, 151.2093, "Australia/Sydney").sunrise
    assert rise is not None and rise.astimezone(SYDNEY).date() == date(2026, 12, 21)
    assert 5 <= rise.astimezone(SYDNEY).hour <= 6


def test_polar_day_and_night_are_none_not_errors():
    for day in (date(2026, 6, 21), date(2026, 12, 21)):  # Longyearbyen, 78 N
        st = sun_times(day, 78.22, 15.65, "Arctic/Longyearbyen")
        assert st.sunrise is None and st.sunset is None
    # ... and a sun-relative schedule there simply has no window that day.
    v = venue(tz="Arctic/Longyearbyen", lat=78.22, lon=15.65)
    tl = compile_([SunWindow(id="dusk", scene="show", start=SunEdge(event="sunset"), end=time(23, 0))],
                  venue=v, start="2026-06-20T00:00Z", hours=48)
    assert tl["windows"] == []


def test_sunset_offset_window():
    sched = SunWindow(id="dusk", scene="show", days=["sun"], start=SunEdge(event="sunset", offset_min=-30),
                      end=time(1, 0))
    tl = compile_([sched], start="2026-06-21T00:00Z", hours=24)
    [(s, e)] = spans(tl)
    # Sunset about 21:21 BST (20:21 UTC), 30 minutes before: about 19:51 UTC; ends 01:00 BST Monday.
    assert abs(s - ts("2026-06-21T19:51Z")) <= 120
    assert e == ts("2026-06-22T00:00Z")


def test_sunset_to_sunrise_runs_overnight():
    sched = SunWindow(id="night", scene="house", days=["sun"], start=SunEdge(event="sunset"),
                      end=SunEdge(event="sunrise", offset_min=15))
    tl = compile_([sched], start="2026-12-20T12:00Z", hours=24)
    [(s, e)] = spans(tl)
    assert abs(s - ts("2026-12-20T15:53Z")) <= 120
    rise = sun_times(date(2026, 12, 21), 51.5074, -0.1278, "Europe/London").sunrise
    assert e == int((rise + timedelta(minutes=15)).timestamp())


# ------------------------------------------------------------------ conflicts and priorities

def test_equal_priority_overlap_names_both_schedules():
    a = weekly(id="evening", start="19:00", end="23:00")
    b = weekly(id="late-set", start="22:00", end="23:30", scene="house")
    with pytest.raises(ScheduleConflict) as err:
        compile_([a, b], start="2026-06-01T00:00Z", hours=24)
    msg = str(err.value)
    assert "'evening'" in msg and "'late-set'" in msg and "priority 10" in msg
    assert "22:00" in msg and "23:00" in msg and "Europe/London" in msg and "BST" in msg  # local, not UTC
    assert set(err.value.schedules) == {"evening", "late-set"}


def test_different_priorities_may_overlap():
    a = weekly(id="evening", start="19:00", end="23:00", priority=10)
    b = weekly(id="late-set", start="22:00", end="23:30", scene="house", priority=20)
    tl = compile_([a, b], start="2026-06-01T00:00Z", hours=24)
    assert tl["windows"] == [[ts("2026-06-01T18:00Z"), ts("2026-06-01T22:00Z"), "show", 10],
                             [ts("2026-06-01T21:00Z"), ts("2026-06-01T22:30Z"), "house", 20]]
    p = preview(venue(), ZONES, SCENES, [a, b], [], at("2026-06-01T21:30Z"))
    assert p["stage"]["scene"] == "house" and p["stage"]["level"] == 100


def test_touching_windows_are_not_an_overlap():
    a = weekly(id="doors", start="18:00", end="19:00", scene="house")
    b = weekly(id="set", start="19:00", end="23:00")
    compile_([a, b], start="2026-06-01T00:00Z", hours=24)


# ------------------------------------------------------------------ overrides

def test_override_expires_back_to_the_schedule():
    sched = [weekly()]
    ov = Override(id="ov-1", scene="house", expires=at("2026-06-01T19:00Z"))
    p = preview(venue(), ZONES, SCENES, sched, [ov], at("2026-06-01T18:59Z"))
    assert p["stage"] == {"level": 100, "rgb": None, "scene": "house", "layer": "override"}
    p = preview(venue(), ZONES, SCENES, sched, [ov], at("2026-06-01T19:00Z"))
    assert p["stage"] == {"level": 255, "rgb": [255, 128, 0], "scene": "show", "layer": "schedule"}
    tl = compile_(sched, [ov], start="2026-06-01T12:00Z", hours=12)
    assert [ts("2026-06-01T12:00Z"), ts("2026-06-01T19:00Z"), "house", 255] in tl["windows"]
    assert [ts("2026-06-01T18:00Z"), ts("2026-06-01T22:00Z"), "show", 10] in tl["windows"]


def test_zone_override_keeps_the_rest_of_the_scene():
    sched = [weekly(id="doors", start="18:00", end="19:00", scene="house"), weekly()]
    ov = Override(id="spot", zone="wash", level=ZoneLevel(level=40), fade_ms=500,
                  starts=at("2026-06-01T17:30Z"), expires=at("2026-06-01T18:30Z"))
    tl = compile_(sched, [ov], start="2026-06-01T12:00Z", hours=12)
    top = [w for w in tl["windows"] if w[3] == 255]
    # Split where the schedule's scene changes (house -> show at 18:00 UTC = 19:00 BST).
    assert top == [[ts("2026-06-01T17:30Z"), ts("2026-06-01T18:00Z"), "house+spot", 255],
                   [ts("2026-06-01T18:00Z"), ts("2026-06-01T18:30Z"), "show+spot", 255]]
    assert tl["scenes"]["house+spot"] == {"levels": {"r": 100, "g": 100, "b": 100, "dmx": {"1": [40, 40, 40]}},
                                          "fade_ms": 500}
    assert tl["scenes"]["show+spot"]["levels"] == {"r": 255, "g": 128, "dmx": {"1": [40, 40, 40]}}
    p = preview(venue(), ZONES, SCENES, sched, [ov], at("2026-06-01T18:10Z"))
    assert p["wash"]["level"] == 40 and p["wash"]["layer"] == "override"
    assert p["stage"]["scene"] == "show+spot" and p["stage"]["layer"] == "schedule"


def test_override_beats_the_highest_schedule_priority():
    sched = [weekly(priority=254)]
    ov = Override(id="kill", scene="dark", expires=at("2026-06-01T20:00Z"))
    tl = compile_(sched, [ov], start="2026-06-01T12:00Z", hours=12)
    assert [ts("2026-06-01T12:00Z"), ts("2026-06-01T20:00Z"), "dark", 255] in tl["windows"]
    with pytest.raises(ValidationError, match="priority"):
        weekly(priority=255)


# ------------------------------------------------------------------ outputs and the safety floor

def test_scene_translated_to_each_controllers_outputs():
    tl_a = compile_([weekly(scene="house")], controller="ctl-a", start="2026-06-01T12:00Z", hours=12)
    tl_b = compile_([weekly(scene="house")], controller="ctl-b", start="2026-06-01T12:00Z", hours=12)
    assert tl_a["scenes"] == {"house": {"levels": {"r": 100, "g": 100, "b": 100}}}  # the bar is not on ctl-a
    # The bar's rgb tints its first three slots; the fourth (white) takes the level.
    assert tl_b["scenes"] == {"house": {"levels": {"dmx": {"1": [255, 0, 51, 255]}}}}
    show = compile_([weekly()], start="2026-06-01T12:00Z", hours=12)["scenes"]["show"]
    assert show == {"levels": {"r": 255, "g": 128, "dmx": {"1": [200, 200, 200]}}, "fade_ms": 2000}


def test_safety_floor_beats_a_dark_scene():
    sched = [weekly(scene="dark", start="17:00", end="23:59")]
    tl = compile_(sched, start="2026-06-01T12:00Z", hours=24)
    assert tl["floor"]["levels"] == {"w": 90}
    assert tl["scenes"]["dark"] == {"levels": {}}
    assert compile_(sched, controller="ctl-b", start="2026-06-01T12:00Z", hours=24)["floor"]["levels"] == \
        {"dmx": {"23": [90, 90]}}
    # Open 18:00 BST (17:00 UTC): the dark scene runs from 16:00 UTC, the floor from 17:00 UTC.
    closed = preview(venue(), ZONES, SCENES, sched, [], at("2026-06-01T16:30Z"))
    open_ = preview(venue(), ZONES, SCENES, sched, [], at("2026-06-01T17:30Z"))
    assert closed["exit"] == {"level": 0, "rgb": None, "scene": "dark", "layer": "off"}
    assert open_["exit"] == {"level": 90, "rgb": None, "scene": "dark", "layer": "floor"}
    assert open_["stage"]["level"] == 0
    # Overrides cannot put the exits out either.
    ov = Override(id="blackout", zone="exit", level=ZoneLevel(level=0), expires=at("2026-06-02T00:00Z"))
    assert preview(venue(), ZONES, SCENES, sched, [ov], at("2026-06-01T17:30Z"))["exit"]["level"] == 90


def test_no_floor_for_a_controller_without_safety_outputs():
    zones = [z for z in ZONES if not z.safety]
    tl = compile_([weekly()], zones=zones, start="2026-06-01T12:00Z", hours=12)
    assert "floor" not in tl
    assert tl["meta"] == {"venue": "demo", "tz": "Europe/London", "compiled": "2026-03-01T00:00:00Z",
                          "horizon_end": "2026-06-02T00:00:00Z"}


def test_empty_schedule_still_a_valid_timeline():
    tl = compile_([], start="2026-06-01T12:00Z", hours=12)
    assert tl["windows"] == [] and len(tl["scenes"]) == 1


# ------------------------------------------------------------------ validation names the field

@pytest.mark.parametrize("build, field", [
    (lambda: venue(tz="Europe/Lundon"), "tz"),
    (lambda: Output(controller="ctl-a", kind="pwm"), "channel"),
    (lambda: Output(controller="ctl-a", kind="dmx", slot=510, count=4), "count"),
    (lambda: Zone(id="exit", name="E", safety=True, outputs=[{"controller": "c", "kind": "pwm", "channel": "w"}]),
     "floor_level"),
    (lambda: Scene(id="x", levels={"stage": {"level": 256}}), "level"),
    (lambda: OnceWindow(id="x", scene="show", date=date(2026, 1, 1), start="19:00", end_at=datetime(2026, 1, 1)),
     "start_at"),
    (lambda: weekly(valid_from=date(2026, 2, 1), valid_until=date(2026, 1, 1)), "valid_until"),
    (lambda: weekly(days=["mon", "mon"]), "days"),
    (lambda: Override(id="o", scene="show", expires=datetime(2026, 1, 1)), "expires"),
    (lambda: Override(id="o", zone="stage", expires=at("2026-01-01T00:00Z")), "zone"),
    (lambda: Venue(id="v", name="n", tz="UTC", latitude=0, longitude=0, colour="red"), "colour"),
])
def test_validation_errors_name_the_field(build, field):
    with pytest.raises(ValidationError) as err:
        build()
    assert field in str(err.value)


def test_unknown_references_are_named():
    with pytest.raises(CompileError, match=r"schedules\[0\] \('evening'\)\.scene: unknown scene 'disco'"):
        compile_([weekly(scene="disco")])
    with pytest.raises(CompileError, match="scenes.bad.levels: unknown zone 'nowhere'"):
        compile_([], scenes=SCENES + [Scene(id="bad", levels={"nowhere": {"level": 1}})])
    clash = Zone(id="clash", name="C", outputs=[Output(controller="ctl-a", kind="dmx", slot=3, count=2)])
    with pytest.raises(CompileError, match="DMX slot 3 of ctl-a is also zone 'wash'"):
        compile_([], zones=ZONES + [clash])


def test_valid_range_limits_a_weekly_schedule():
    sched = weekly(valid_from=date(2026, 6, 2), valid_until=date(2026, 6, 3))
    tl = compile_([sched], start="2026-06-01T00:00Z", hours=96)
    assert spans(tl) == [(ts("2026-06-02T18:00Z"), ts("2026-06-02T22:00Z")),
                         (ts("2026-06-03T18:00Z"), ts("2026-06-03T22:00Z"))]


# ------------------------------------------------------------------ scale

def test_ten_zones_twenty_schedules_compile_for_48h():
    zones = [Zone(id=f"z{i}", name=f"Zone {i}", safety=i == 0, floor_level=80 if i == 0 else None,
                  outputs=[Output(controller="ctl-a", kind="dmx", slot=1 + 4 * i, count=4)]) for i in range(10)]
    scenes = [Scene(id=f"s{j}", levels={f"z{i}": ZoneLevel(level=(i * 25 + j * 7) % 256) for i in range(10)})
              for j in range(20)]
    # Twenty schedules at distinct priorities, overlapping freely.
    schedules = [weekly(id=f"w{j}", scene=f"s{j}", priority=j, start=f"{(12 + j) % 24:02d}:{j % 4 * 15:02d}",
                        end=f"{(14 + j) % 24:02d}:00") for j in range(20)]
    tl = compile_(schedules, zones=zones, scenes=scenes, start="2026-10-24T00:00Z", hours=48)
    assert len(tl["windows"]) >= 40
    assert tl["floor"]["levels"] == {"dmx": {"1": [80, 80, 80, 80]}}
