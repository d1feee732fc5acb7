"""Battery time-to-empty from the recent discharge, and "will it last until the event ends?".

Pure functions over battery readings (the contract's ``BatteryTelemetry`` as dicts), so the
fleet's API and the tests share one arithmetic. Two methods, best first:

* ``remaining_ah``: a BMS (JBD) counts the charge left; divided by the average discharge
  current of the recent readings, that is the time left at the current draw.
* ``soc_slope``: a least-squares line through state of charge over time (one pass of outlier
  trimming; the slope must be significantly below zero), extrapolated to 0 %.

Only the latest discharge segment counts: readings before the last charging one (current above
``CHARGE_A``) describe another state of the pack. The device's own time-to-go (a Victron shunt's
TTG) is reported side by side, never used: it is exactly what this second opinion checks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any, Iterable

MIN_POINTS = 5  # readings needed in the discharge segment
MIN_SPAN_S = 120.0  # ... spread over at least this long
CHARGE_A = 0.05  # A: a current above this is charging (shunts read a few mA either way at rest)
MIN_DISCHARGE_A = 0.05  # A: below this the pack is idle, and the time left meaningless
MAX_POINTS = 240  # readings kept for the fit (evenly thinned): enough for the slope, cheap for 1,000 packs
T_SIGNIFICANT = 2.0  # the SOC slope must be this many standard errors below zero


@dataclass(frozen=True)
class Sample:
    ts_ms: int
    v: float | None = None
    i: float | None = None
    p: float | None = None
    soc: float | None = None
    remaining_ah: float | None = None
    capacity_ah: float | None = None
    ttg: int | None = None

    @classmethod
    def from_reading(cls, r: dict[str, Any]) -> "Sample":
        return cls(ts_ms=int(r["ts"]), v=r.get("v"), i=r.get("i"), p=r.get("p"), soc=r.get("soc"),
                   remaining_ah=r.get("remaining_ah"), capacity_ah=r.get("capacity_ah"), ttg=r.get("ttg"))


@dataclass
class Forecast:
    hours_left: float | None = None
    method: str | None = None  # remaining_ah | soc_slope
    reason: str | None = None  # why there is no forecast
    points: int = 0  # readings in the discharge segment used
    span_s: float = 0.0
    discharge_a: float | None = None  # time-weighted average discharge current, A (positive)
    soc_slope_pct_h: float | None = None  # fitted SOC change, %/h (negative when discharging)
    empty_at_ms: int | None = None
    device_ttg_min: int | None = None  # the device's own estimate, as sent (-1 = infinite)
    device_ttg_h: float | None = None  # the same in hours; null when absent or infinite
    event_ends_ms: int | None = None
    event_ended: bool = False
    lasts_until_end: bool | None = None
    margin_min: float | None = None  # empty_at - event end, minutes; negative: runs out that much before

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def discharge_segment(samples: list[Sample], charge_a: float = CHARGE_A) -> list[Sample]:
    """The readings since the last charging one (all of them when none charged); time order in, out."""
    start = 0
    for k in range(len(samples) - 1, -1, -1):
        i = samples[k].i
        if i is not None and i > charge_a:
            start = k + 1
            break
    return samples[start:]


def thin(samples: list[Sample], max_points: int = MAX_POINTS) -> list[Sample]:
    """At most ``max_points`` evenly spaced readings, always keeping the first and the last."""
    n = len(samples)
    if n <= max_points:
        return samples
    step = (n - 1) / (max_points - 1)
    return [samples[round(k * step)] for k in range(max_points)]


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float] | None:
    """Least squares y = a + b·x: (a, b, standard error of b); None when x does not vary."""
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    if n > 2:
        rss = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
        se = math.sqrt(rss / (n - 2) / sxx)
    else:
        se = 0.0
    return a, b, se


def robust_fit(xs: list[float], ys: list[float], min_points: int = MIN_POINTS) -> tuple[float, float, float] | None:
    """fit_line, then once more without the points far off the line (a glitched reading, a
    quantisation step): off by more than 3 robust standard deviations (1.4826·MAD), and never
    closer than 1 unit (SOC comes in whole percent from most monitors)."""
    fit = fit_line(xs, ys)
    if fit is None:
        return None
    a, b, _ = fit
    residuals = [y - a - b * x for x, y in zip(xs, ys)]
    sigma = 1.4826 * median(abs(r) for r in residuals)
    limit = max(3 * sigma, 1.0)
    keep = [k for k, r in enumerate(residuals) if abs(r) <= limit]
    if len(keep) == len(xs) or len(keep) < min_points:
        return fit
    return fit_line([xs[k] for k in keep], [ys[k] for k in keep]) or fit


def _average_discharge_a(seg: list[Sample]) -> float | None:
    """Time-weighted mean of -i over the segment (trapezoids); None without currents."""
    pts = [(s.ts_ms, -s.i) for s in seg if s.i is not None]
    if len(pts) < 2:
        return pts[0][1] if pts else None
    area = sum((t2 - t1) * (c1 + c2) / 2 for (t1, c1), (t2, c2) in zip(pts, pts[1:]))
    span = pts[-1][0] - pts[0][0]
    if span <= 0:
        return sum(c for _, c in pts) / len(pts)
    return area / span


def time_to_empty(samples: Iterable[Sample], *, min_points: int = MIN_POINTS, min_span_s: float = MIN_SPAN_S,
                  charge_a: float = CHARGE_A) -> Forecast:
    """Hours until empty at the recent rate, from readings in any order (duplicates of a ts kept once)."""
    by_ts = {s.ts_ms: s for s in samples}
    ordered = [by_ts[t] for t in sorted(by_ts)]
    out = Forecast()
    if not ordered:
        out.reason = "no battery readings"
        return out
    last = ordered[-1]
    if last.ttg is not None:
        out.device_ttg_min = last.ttg
        out.device_ttg_h = round(last.ttg / 60, 3) if last.ttg >= 0 else None
    if last.i is not None and last.i > charge_a:
        out.reason = "charging"
        return out
    seg = thin(discharge_segment(ordered, charge_a))
    out.points = len(seg)
    out.span_s = (seg[-1].ts_ms - seg[0].ts_ms) / 1000 if seg else 0.0
    if len(seg) < min_points or out.span_s < min_span_s:
        out.reason = (f"too few readings since the last charge: {len(seg)} over {out.span_s:.0f} s "
                      f"(need {min_points} over {min_span_s:.0f} s)")
        return out
    discharge = _average_discharge_a(seg)
    out.discharge_a = round(discharge, 4) if discharge is not None else None

    # SOC slope, reported whenever it can be fitted (a second opinion next to remaining_ah).
    soc_pts = [(s.ts_ms, s.soc) for s in seg if s.soc is not None]
    slope_hours: float | None = None
    slope_reason = "no state of charge in the readings"
    if len(soc_pts) >= min_points:
        t0 = soc_pts[0][0]
        xs = [(t - t0) / 3_600_000 for t, _ in soc_pts]  # hours
        fit = robust_fit(xs, [float(s) for _, s in soc_pts], min_points)
        if fit is not None:
            a, b, se = fit
            out.soc_slope_pct_h = round(b, 4)
            soc_now = min(100.0, max(0.0, a + b * xs[-1]))
            if b >= 0:
                slope_reason = "state of charge is not falling"
            elif -b <= T_SIGNIFICANT * se:
                slope_reason = "state of charge is not falling significantly (noise)"
            else:
                slope_hours = soc_now / -b

    remaining = next((s.remaining_ah for s in reversed(seg) if s.remaining_ah is not None), None)
    if remaining is not None and discharge is not None and discharge > MIN_DISCHARGE_A:
        out.hours_left, out.method = remaining / discharge, "remaining_ah"
    elif slope_hours is not None:
        out.hours_left, out.method = slope_hours, "soc_slope"
    elif discharge is not None and discharge <= MIN_DISCHARGE_A:
        out.reason = "not discharging (idle)"
    else:
        out.reason = slope_reason
    if out.hours_left is not None:
        out.empty_at_ms = last.ts_ms + round(out.hours_left * 3_600_000)
        out.hours_left = round(out.hours_left, 3)
    return out


def against_event(fc: Forecast, ends_ms: int | None, now_ms: int) -> Forecast:
    """Fill in whether the pack lasts until ``ends_ms`` and by how many minutes (negative: short)."""
    fc.event_ends_ms = ends_ms
    if ends_ms is None:
        return fc
    if ends_ms <= now_ms:
        fc.event_ended = True
        return fc
    if fc.empty_at_ms is None:
        return fc
    fc.margin_min = round((fc.empty_at_ms - ends_ms) / 60_000, 1)
    fc.lasts_until_end = fc.margin_min >= 0
    return fc


def forecast(readings: Iterable[dict[str, Any]], ends_ms: int | None = None, now_ms: int | None = None,
             **kwargs: Any) -> Forecast:
    """time_to_empty over battery readings (dicts as on the wire), then against the event's end."""
    fc = time_to_empty((Sample.from_reading(r) for r in readings), **kwargs)
    if now_ms is None:
        import time

        now_ms = int(time.time() * 1000)
    return against_event(fc, ends_ms, now_ms)
