"""Device and kit health from what the store holds: pure functions, no database.

A device's status, worst last (``SEVERITY``):

* ``ok``: online and nothing to report.
* ``unknown``: never heard from (no state, no message since it was registered).
* ``degraded``: online, with reasons (printer out of paper, battery low or protected, BMS alarm,
  gaps in this boot's sequence, rejected messages, a desired config not applied, its clock unset
  or off the fleet's, ...).
* ``silent``: its retained state says online, but nothing arrived for longer than the heartbeat
  timeout: it (or its link) hung without the broker noticing, so no Last Will came.
* ``offline``: its retained state says offline (Last Will or shutdown), or its host agent is.

A kit is as healthy as its worst device; its last readiness report (the agent's power-up
self-test, event kind ``readiness``) is shown next to that, not folded into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

STATUSES = ("ok", "unknown", "degraded", "silent", "offline")  # best to worst
SEVERITY = {s: k for k, s in enumerate(STATUSES)}

# Roles that send no periodic telemetry, so silence is no sign of trouble (the panel is GPIO on the agent).
NO_HEARTBEAT_ROLES = frozenset({"panel"})
EMPTY_SOC = 10.0  # % under which a low battery is a fault, not a warning (as agent/batteries.py)


@dataclass(frozen=True)
class HealthConfig:
    heartbeat_timeout_s: float = 90.0  # silent after this long without a message ...
    heartbeat_periods: float = 3.0  # ... or this many telemetry periods (manifest), whichever is longer
    low_soc: float = 20.0  # %: a battery below this is degraded
    forecast_window_s: float = 900.0  # battery readings the time-to-empty is fitted on
    forecast_refit_s: float = 30.0  # a pass over every kit refits a pack's forecast at most this often (fleet/fits.py)
    rejected_window_s: float = 3600.0  # rejected messages this recent count against a device
    config_grace_s: float = 60.0  # a device may take this long to apply a new desired config
    clock_drift_s: float = 120.0  # a device's clock further than this off the fleet's is drifting

    @classmethod
    def from_settings(cls, s: Any) -> "HealthConfig":
        return cls(heartbeat_timeout_s=s.heartbeat_timeout_s, heartbeat_periods=s.heartbeat_periods,
                   low_soc=s.battery_low_soc, forecast_window_s=s.forecast_window_s,
                   forecast_refit_s=s.forecast_refit_s,
                   rejected_window_s=s.rejected_window_s, config_grace_s=s.config_grace_s,
                   clock_drift_s=s.clock_drift_s)


@dataclass
class DeviceFacts:
    """What the store knows of a device beyond its row and latest readings."""

    gaps: int = 0  # sequence numbers never received, all boots
    gaps_this_boot: int = 0  # ... in the boot the device's state reports
    rejected: int = 0  # dead letters on its topics within the rejected window
    desired_version: int | None = None
    desired_ts_ms: int | None = None


def worst(statuses) -> str:
    """The worst status of several; ``unknown`` for none."""
    return max(statuses, key=SEVERITY.__getitem__, default="unknown")


def heartbeat_timeout_s(cfg: HealthConfig, telemetry_s: float | None = None) -> float:
    if telemetry_s:
        return max(cfg.heartbeat_timeout_s, cfg.heartbeat_periods * telemetry_s)
    return cfg.heartbeat_timeout_s


def _reason(code: str, severity: str, what: str) -> dict:
    return {"code": code, "severity": severity, "what": what}


def clock_drift_ms(device: dict, cfg: HealthConfig) -> int | None:
    """How far the device's clock is off the fleet's, signed (positive: behind), when further than
    ``clock_drift_s``; else None. Judged from ``clock_lag_ms``, the smallest (received - ts) of its
    recent messages (Store): a message held through an outage arrives late, but the device's live
    ones arrive on time, so only a clock that is really behind makes even the smallest one late;
    a ts ahead of its receipt can only be a clock ahead. Not judged while its clock is unset (its
    ts means nothing then: ``clock_unset`` says so) nor for a device an agent drives (its
    messages carry the agent's clock, judged on the agent)."""
    lag = device.get("clock_lag_ms")
    if lag is None or device.get("clock") == "unset" or device.get("host_id"):
        return None
    return lag if abs(lag) > cfg.clock_drift_s * 1000 else None


def _clock_reasons(device: dict, cfg: HealthConfig) -> list[dict]:
    if not device.get("online"):
        return []
    if device.get("clock") == "unset":
        return [_reason("clock_unset", "warning", "clock not set: no time from the internet or the kit since boot")]
    drift = clock_drift_ms(device, cfg)
    if drift is not None:
        way = "behind" if drift > 0 else "ahead of"
        return [_reason("clock_drift", "warning", f"clock about {abs(drift) / 1000:.0f} s {way} the fleet's")]
    return []


def degraded_reasons(device: dict, facts: DeviceFacts, cfg: HealthConfig, now_ms: int,
                     battery_forecast: dict | None = None) -> list[dict]:
    """Why a device is not fine, from its latest readings and the facts: [{code, severity, what}]."""
    out: list[dict] = []
    latest = device.get("latest") or {}
    pr = latest.get("printer")
    if pr:
        if pr.get("online") is False:
            out.append(_reason("printer_not_answering", "fault", "printer does not answer (off or unplugged?)"))
        if pr.get("paper") == "out":
            out.append(_reason("paper_out", "fault", "printer is out of paper"))
        elif pr.get("paper") == "near_end":
            out.append(_reason("paper_near_end", "warning", "printer paper is running out"))
        if pr.get("cover_open"):
            out.append(_reason("cover_open", "fault", "printer cover is open"))
        if pr.get("error"):
            out.append(_reason("printer_error", "fault", "printer reports an error"))
    bat = latest.get("battery")
    if bat:
        if bat.get("protection"):
            out.append(_reason("bms_protection", "fault", "BMS protection active: " + ", ".join(bat["protection"])))
        if bat.get("alarm"):
            out.append(_reason("battery_alarm", "fault", f"battery alarm: {bat['alarm']}"))
        soc = bat.get("soc")
        if soc is not None and soc < cfg.low_soc:
            out.append(_reason("battery_low", "fault" if soc < EMPTY_SOC else "warning", f"battery at {soc:.0f} %"))
    if battery_forecast and battery_forecast.get("lasts_until_end") is False:
        short = -battery_forecast["margin_min"]
        out.append(_reason("battery_short", "warning",
                           f"battery runs out about {short:.0f} min before the event ends"))
    light = latest.get("light")
    if light and light.get("reachable") is False:
        out.append(_reason("light_unreachable", "fault", "light does not answer"))
    dev = latest.get("device")
    if dev and dev.get("dropped"):
        out.append(_reason("telemetry_dropped", "warning", f"{dev['dropped']} telemetry messages dropped since boot"))
    if facts.gaps_this_boot > 0:
        out.append(_reason("sequence_gaps", "warning", f"{facts.gaps_this_boot} messages missing in this boot"))
    if facts.rejected > 0:
        out.append(_reason("rejected_messages", "warning",
                           f"{facts.rejected} messages rejected in the last {cfg.rejected_window_s / 60:.0f} min"))
    if facts.desired_version:
        applied = device.get("config_version")
        behind = applied is None or applied < facts.desired_version
        if behind and now_ms - (facts.desired_ts_ms or 0) > cfg.config_grace_s * 1000:
            out.append(_reason("config_behind", "warning",
                               f"config {facts.desired_version} pushed, device reports {applied}"))
    out += _clock_reasons(device, cfg)
    return out


def device_health(device: dict, facts: DeviceFacts | None, cfg: HealthConfig, now_ms: int,
                  telemetry_s: float | None = None, battery_forecast: dict | None = None) -> dict:
    """The health of one device view (as Store._devices builds it)."""
    facts = facts or DeviceFacts()
    reasons = degraded_reasons(device, facts, cfg, now_ms, battery_forecast)
    timeout = heartbeat_timeout_s(cfg, telemetry_s)
    last_seen = device.get("last_seen_ms")
    age_s = max(0.0, (now_ms - last_seen) / 1000) if last_seen is not None else None
    expects_heartbeat = device.get("role") not in NO_HEARTBEAT_ROLES or bool(device.get("latest"))
    if not device.get("online"):
        never = last_seen is None and device.get("boot") is None
        status = "unknown" if never else "offline"
    elif expects_heartbeat and (age_s is None or age_s > timeout):
        status = "silent"
    elif reasons:
        status = "degraded"
    else:
        status = "ok"
    return dict(status=status, reasons=reasons, last_seen_ms=last_seen,
                since_seen_s=round(age_s, 1) if age_s is not None else None, heartbeat_timeout_s=timeout,
                fw=device.get("fw"), gaps=facts.gaps, gaps_this_boot=facts.gaps_this_boot,
                rejected=facts.rejected, rejected_window_s=cfg.rejected_window_s)


def kit_health(device_healths: list[dict]) -> dict:
    """The worst of a kit's devices, and how many are in each status."""
    counts = {s: 0 for s in STATUSES}
    for h in device_healths:
        counts[h["status"]] += 1
    return dict(status=worst(h["status"] for h in device_healths), counts=counts)


def readiness_view(device_id: str, body: dict) -> dict:
    """A ``readiness`` event as the API shows it: who reported, when, and the verdict."""
    data = body.get("data") or {}
    return dict(device_id=device_id, ts=body.get("ts"), status=data.get("status"),
                problems=data.get("problems") or [], took_ms=data.get("took_ms"))
