"""Battery time-to-empty from the recent discharge, and whether it lasts until the event ends (pure)."""

from __future__ import annotations

import random

import pytest

from fleet.forecast import MIN_POINTS, forecast, time_to_empty, Sample

T0 = 1_800_000_000_000  # ms
MIN = 60_000


def readings(minutes: float, every_s: float, soc0: float, pct_per_h: float, i: float = -4.0, **extra) -> list[dict]:
    """Battery readings from T0 on, SOC changing by ``pct_per_h`` (negative: discharging)."""
    n = int(minutes * 60 / every_s) + 1
    out = []
    for k in range(n):
        t = T0 + int(k * every_s * 1000)
        out.append(dict(ts=t, v=12.4, i=i, soc=soc0 + pct_per_h * (t - T0) / 3_600_000, **extra))
    return out


def test_steady_discharge_gives_the_hours_left_from_the_soc_slope():
    r = readings(15, 10, soc0=80, pct_per_h=-10)  # 80 % -> 77.5 % in 15 min: 7.75 h left
    fc = forecast(r, now_ms=T0)
    assert fc.method == "soc_slope" and fc.reason is None
    assert fc.hours_left == pytest.approx(7.75, rel=0.01)
    assert fc.soc_slope_pct_h == pytest.approx(-10, rel=0.01)
    assert fc.empty_at_ms == pytest.approx(r[-1]["ts"] + 7.75 * 3_600_000, rel=1e-4)
    assert fc.discharge_a == pytest.approx(4.0)
    assert fc.points == len(r)


def test_a_bms_remaining_charge_over_the_average_current_wins_over_the_slope():
    r = readings(10, 5, soc0=50, pct_per_h=-20, i=-5.0, remaining_ah=10.0, capacity_ah=20.0)
    fc = forecast(r, now_ms=T0)
    assert fc.method == "remaining_ah" and fc.hours_left == pytest.approx(2.0)
    assert fc.soc_slope_pct_h == pytest.approx(-20, rel=0.01)  # still reported, as a second opinion


def test_whole_percent_soc_still_gives_a_sensible_slope():
    r = [dict(x, soc=round(x["soc"])) for x in readings(20, 5, soc0=70, pct_per_h=-12)]
    fc = forecast(r, now_ms=T0)
    assert fc.method == "soc_slope"
    assert fc.hours_left == pytest.approx(66 / 12, rel=0.1)


def test_charging_now_gives_no_forecast():
    r = readings(15, 10, soc0=40, pct_per_h=+30, i=+8.0)
    fc = forecast(r, now_ms=T0)
    assert fc.hours_left is None and fc.method is None and fc.reason == "charging"


def test_only_the_discharge_since_the_last_charge_counts():
    charged = readings(10, 10, soc0=40, pct_per_h=+60, i=+10.0)  # 40 -> 50 %
    after = [dict(x, ts=x["ts"] + 11 * MIN) for x in readings(10, 10, soc0=50, pct_per_h=-10)]
    fc = forecast(charged + after, now_ms=T0)
    assert fc.method == "soc_slope" and fc.points == len(after)
    assert fc.hours_left == pytest.approx((50 - 10 * 10 / 60) / 10, rel=0.01)


def test_too_few_points_or_too_short_a_span_is_none_with_a_reason():
    fc = forecast(readings(15, 300, soc0=80, pct_per_h=-10)[: MIN_POINTS - 1], now_ms=T0)
    assert fc.hours_left is None and "too few readings" in fc.reason
    fc = forecast(readings(0.5, 3, soc0=80, pct_per_h=-10), now_ms=T0)  # 11 readings over 30 s
    assert fc.hours_left is None and "30 s" in fc.reason
    fc = forecast([], now_ms=T0)
    assert fc.hours_left is None and fc.reason == "no battery readings"


def test_noisy_readings_with_glitches_still_forecast_close():
    rng = random.Random(7)
    r = readings(15, 5, soc0=60, pct_per_h=-20)
    for x in r:
        x["soc"] += rng.gauss(0, 0.4)
    r[40]["soc"], r[90]["soc"] = 5.0, 99.0  # two glitched readings
    fc = forecast(r, now_ms=T0)
    assert fc.method == "soc_slope"
    assert fc.hours_left == pytest.approx(55 / 20, rel=0.1)


def test_a_flat_noisy_soc_is_no_forecast_rather_than_a_made_up_one():
    rng = random.Random(3)
    r = readings(15, 5, soc0=60, pct_per_h=0, i=-0.5)
    for x in r:
        x["soc"] += rng.gauss(0, 0.5)
    fc = forecast(r, now_ms=T0)
    assert fc.hours_left is None and "not falling" in fc.reason


def test_idle_pack_with_a_bms_is_not_discharging():
    r = readings(10, 10, soc0=90, pct_per_h=0, i=0.0, remaining_ah=18.0)
    fc = forecast(r, now_ms=T0)
    assert fc.hours_left is None and fc.reason


def test_margin_is_positive_when_it_lasts_and_negative_when_short():
    r = readings(15, 10, soc0=80, pct_per_h=-20)  # 75 % left at 20 %/h: 3.75 h after the last reading
    last = r[-1]["ts"]
    lasts = forecast(r, ends_ms=last + 3 * 3_600_000, now_ms=last)
    assert lasts.lasts_until_end is True and lasts.margin_min == pytest.approx(45, abs=0.5)
    short = forecast(r, ends_ms=last + 5 * 3_600_000, now_ms=last)
    assert short.lasts_until_end is False and short.margin_min == pytest.approx(-75, abs=0.5)
    assert short.event_ends_ms == last + 5 * 3_600_000


def test_an_event_that_has_ended_gets_no_verdict():
    r = readings(15, 10, soc0=80, pct_per_h=-20)
    fc = forecast(r, ends_ms=T0 - MIN, now_ms=r[-1]["ts"])
    assert fc.event_ended is True and fc.lasts_until_end is None and fc.margin_min is None
    assert fc.hours_left is not None  # the forecast itself still stands


def test_no_event_end_no_verdict():
    fc = forecast(readings(15, 10, soc0=80, pct_per_h=-20), ends_ms=None, now_ms=T0)
    assert fc.lasts_until_end is None and fc.event_ends_ms is None and fc.hours_left is not None


def test_the_devices_own_ttg_is_reported_side_by_side():
    fc = forecast(readings(15, 10, soc0=80, pct_per_h=-10, ttg=540), now_ms=T0)
    assert fc.device_ttg_min == 540 and fc.device_ttg_h == 9.0 and fc.hours_left == pytest.approx(7.75, rel=0.01)
    fc = forecast(readings(15, 10, soc0=80, pct_per_h=-10, ttg=-1), now_ms=T0)
    assert fc.device_ttg_min == -1 and fc.device_ttg_h is None


def test_readings_out_of_order_and_duplicated_are_fine():
    r = readings(15, 10, soc0=80, pct_per_h=-10)
    shuffled = r[::-1] + r[:10]
    fc = time_to_empty(Sample.from_reading(x) for x in shuffled)
    assert fc.points == len(r) and fc.hours_left == pytest.approx(7.75, rel=0.01)


def test_long_windows_are_thinned_but_keep_the_latest_reading():
    r = readings(60, 1, soc0=90, pct_per_h=-10)  # 3,601 readings
    fc = forecast(r, now_ms=T0)
    assert fc.points <= 240 and fc.span_s == pytest.approx(3600)
    assert fc.hours_left == pytest.approx(8.0, rel=0.01)
