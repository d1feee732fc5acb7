"""Alerts: rules over the current facts of each device and kit, and the evaluator that keeps the
``alerts`` table in step with them.

Each rule is a small function of what the store knows now (latest readings, health, battery
forecast, readiness, the kit's event window, recent check-ins) and yields ``Firing`` values: a
subject (device or kit id), the rule, a severity, a message and its details. ``evaluate`` then, in
one transaction (``AlertStore.sync``):

* opens an alert for each (subject, rule) firing without one;
* updates the one already open or acknowledged (last seen, message, severity; ``count`` goes up
  when the evidence is new, e.g. another low reading, so repeats never pile up as rows);
* resolves by itself (``resolved_by = "auto"``) each one whose rule no longer fires: back to normal.

At most one non-resolved alert per (subject, rule) is the database's guarantee (a partial unique
index), so several fleet workers may evaluate at once: a duplicate insert does nothing and the
row another worker opened is updated instead.

Rules (thresholds from FleetSettings, POPKIT_*):

==============  =======  ==================================================================
rule            subject  fires when
==============  =======  ==================================================================
low_soc         device   battery state of charge < battery_low_soc (critical < EMPTY_SOC)
forecast_short  device   the time-to-empty forecast runs out before the kit's event ends
                         (critical when it empties within CRITICAL_EMPTY_MIN)
device_offline  device   offline or silent, with no message for alert_offline_grace_s
                         (a hosted device whose host agent is down is covered by the host's)
paper_out       device   printer telemetry says paper ``out``
bms_protection  device   battery telemetry lists active protection flags
scanner_errors  device   >= alert_scanner_errors scans with verdict malformed/bad_signature
                         in the last alert_scanner_window_s
kit_not_ready   kit      at or after doors-open (until the event ends) the kit's last
                         readiness report says not_ready
config_not_     device   a desired config (a controller's lighting timeline, a scanner's
applied                  revocations) not reported applied config_grace_s after it was pushed
clock_unset     device   online, and its state has said its clock is unset (no time since boot)
                         for alert_clock_grace_s
clock_drift     device   online, and its clock is off the fleet's by more than clock_drift_s:
                         even the least late of its recent messages arrived that late (behind),
                         or one arrived with a ts that far ahead of its receipt (ahead)
orders_not_     kit      the kit's till last reported an order (or refund) not yet uploaded
uploaded                 taken more than retail_pending_alert_s ago (24 h, Square's rule;
                         critical past three times that), judged against the clock, so a kit
                         silent since still alerts (fleet/retail/pending.py)
double_entry    kit      a ticket admitted twice (two doors each let it in: a hub that was
                         down, or a backlog reconciled late), the later admission at one of
                         the kit's doors in the last double_entry_window_s (12 h); the
                         details hold both scans of each ticket
==============  =======  ==================================================================
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from fleet.health import EMPTY_SOC, HealthConfig, clock_drift_ms

log = logging.getLogger("popkit.fleet.alerts")

RULES = ("low_soc", "forecast_short", "device_offline", "paper_out", "bms_protection", "scanner_errors",
         "kit_not_ready", "config_not_applied", "clock_unset", "clock_drift", "orders_not_uploaded", "double_entry")
SEVERITIES = ("warning", "critical")
STATES = ("open", "acknowledged", "resolved")
SCANNER_ERROR_VERDICTS = ("malformed", "bad_signature")
CRITICAL_EMPTY_MIN = 30.0  # forecast_short is critical when the pack empties within this many minutes


@dataclass(frozen=True)
class AlertConfig:
    health: HealthConfig = field(default_factory=HealthConfig)
    low_soc: float = 20.0
    critical_soc: float = EMPTY_SOC
    offline_grace_s: float = 300.0
    scanner_errors: int = 5
    scanner_window_s: float = 600.0
    clock_grace_s: float = 120.0
    orders_pending_s: float = 24 * 3600.0
    # A night's doors: a double entry stays on the crew's screen through the event it happened in.
    double_entry_window_s: float = 12 * 3600.0

    @classmethod
    def from_settings(cls, s: Any) -> "AlertConfig":
        return cls(health=HealthConfig.from_settings(s), low_soc=s.battery_low_soc,
                   offline_grace_s=s.alert_offline_grace_s, scanner_errors=s.alert_scanner_errors,
                   scanner_window_s=s.alert_scanner_window_s,
                   clock_grace_s=s.alert_clock_grace_s, orders_pending_s=s.retail_pending_alert_s)


@dataclass(frozen=True)
class Firing:
    """One (subject, rule) firing now. ``evidence`` identifies the observation (a reading's ts, a
    count): a new one increments the alert's count, the same one seen again does not."""

    subject: str
    kit_id: str
    rule: str
    severity: str
    message: str
    details: dict = field(default_factory=dict)
    evidence: Any = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.rule)


@dataclass
class Assessment:
    firing: list[Firing]
    # (subject, rule) pairs this process could not judge (e.g. a kit whose manifest, and so whose
    # event window, it never loaded): their alerts are left as they are, never auto-resolved.
    unknown: set[tuple[str, str]]


@dataclass
class EvalResult:
    opened: int = 0
    updated: int = 0
    resolved: int = 0
    firing: int = 0


# ------------------------------------------------------------ rules


def _minutes(ms: float) -> str:
    return f"{ms / 60_000:.0f} min"


def low_soc(dev: dict, cfg: AlertConfig, now_ms: int) -> Firing | None:
    bat = (dev.get("latest") or {}).get("battery") or {}
    soc = bat.get("soc")
    if soc is None or soc >= cfg.low_soc:
        return None
    severity = "critical" if soc < cfg.critical_soc else "warning"
    return Firing(dev["id"], dev["kit_id"], "low_soc", severity,
                  f"{dev['id']}: battery at {soc:.0f} % (alert below {cfg.low_soc:.0f} %)",
                  dict(soc=soc, threshold=cfg.low_soc, reading_ts=bat.get("ts")), bat.get("ts"))


def bms_protection(dev: dict, cfg: AlertConfig, now_ms: int) -> Firing | None:
    bat = (dev.get("latest") or {}).get("battery") or {}
    flags = bat.get("protection") or []
    if not flags:
        return None
    return Firing(dev["id"], dev["kit_id"], "bms_protection", "critical",
                  f"{dev['id']}: BMS protection active: {', '.join(flags)}",
                  dict(protection=list(flags), reading_ts=bat.get("ts")), bat.get("ts"))


def paper_out(dev: dict, cfg: AlertConfig, now_ms: int) -> Firing | None:
    pr = (dev.get("latest") or {}).get("printer") or {}
    if pr.get("paper") != "out":
        return None
    return Firing(dev["id"], dev["kit_id"], "paper_out", "critical", f"{dev['id']}: printer is out of paper",
                  dict(paper="out", reading_ts=pr.get("ts")), pr.get("ts"))


def device_offline(dev: dict, cfg: AlertConfig, now_ms: int, host_down: bool = False) -> Firing | None:
    health = dev.get("health") or {}
    status = health.get("status")
    last_seen = dev.get("last_seen_ms")
    if status not in ("offline", "silent") or last_seen is None or host_down:
        return None
    away_ms = now_ms - last_seen
    if away_ms < cfg.offline_grace_s * 1000:
        return None
    what = "offline" if status == "offline" else "silent (online, but sends nothing)"
    return Firing(dev["id"], dev["kit_id"], "device_offline", "critical",
                  f"{dev['id']}: {what} for {_minutes(away_ms)}",
                  dict(status=status, last_seen_ms=last_seen, grace_s=cfg.offline_grace_s), last_seen)


def forecast_short(battery: dict, kit_id: str, cfg: AlertConfig, now_ms: int) -> Firing | None:
    """``battery``: one entry of a kit's ``batteries`` (HealthViews.kits_with_health: reading + forecast)."""
    if battery.get("lasts_until_end") is not False:
        return None
    short_min = -battery["margin_min"]
    empty_at = battery.get("empty_at_ms")
    left_min = (empty_at - now_ms) / 60_000 if empty_at is not None else None
    severity = "critical" if left_min is not None and left_min <= CRITICAL_EMPTY_MIN else "warning"
    return Firing(battery["device_id"], kit_id, "forecast_short", severity,
                  f"{battery['device_id']}: battery runs out about {short_min:.0f} min before the event ends",
                  dict(margin_min=battery["margin_min"], hours_left=battery.get("hours_left"),
                       empty_at_ms=empty_at, event_ends_ms=battery.get("event_ends_ms"),
                       method=battery.get("method"), soc=battery.get("soc")),
                  battery.get("ts"))


def scanner_errors(dev: dict, errors: int, cfg: AlertConfig, now_ms: int) -> Firing | None:
    if errors < cfg.scanner_errors:
        return None
    return Firing(dev["id"], dev["kit_id"], "scanner_errors", "warning",
                  f"{dev['id']}: {errors} unreadable or forged tickets in the last {_minutes(cfg.scanner_window_s * 1000)}",
                  dict(errors=errors, threshold=cfg.scanner_errors, window_s=cfg.scanner_window_s,
                       verdicts=list(SCANNER_ERROR_VERDICTS)), errors)


def kit_not_ready(kit: dict, info: Any, cfg: AlertConfig, now_ms: int) -> Firing | None:
    """``info``: the kit's KitInfo (event window); the caller skips kits without doors-open."""
    if now_ms < info.doors_open_ms or (info.ends_ms is not None and now_ms >= info.ends_ms):
        return None
    ready = kit.get("readiness") or {}
    if ready.get("status") != "not_ready":
        return None
    problems = ready.get("problems") or []
    said = "; ".join(str(p.get("what") or p.get("code") or p) if isinstance(p, dict) else str(p) for p in problems[:5])
    return Firing(kit["id"], kit["id"], "kit_not_ready", "critical",
                  f"kit {kit['id']} not ready at doors-open" + (f": {said}" if said else ""),
                  dict(readiness_ts=ready.get("ts"), reported_by=ready.get("device_id"), problems=problems[:20],
                       doors_open_ms=info.doors_open_ms),
                  ready.get("ts"))


def config_not_applied(dev: dict, cfg: AlertConfig, now_ms: int) -> Firing | None:
    """The device's health says a pushed config is still not applied after config_grace_s."""
    behind = next((r for r in (dev.get("health") or {}).get("reasons") or [] if r["code"] == "config_behind"), None)
    if behind is None:
        return None
    return Firing(dev["id"], dev["kit_id"], "config_not_applied", "warning", f"{dev['id']}: {behind['what']}",
                  dict(applied_version=dev.get("config_version"), grace_s=cfg.health.config_grace_s),
                  dev.get("config_version"))


def clock_unset(dev: dict, cfg: AlertConfig, now_ms: int) -> Firing | None:
    """Online with no time since boot, for longer than the grace: a scanner then checks tickets by
    signature and event only, a lighting controller shows its fallback scene. The grace runs from
    when the fleet received the state that said so (a reboot starts it again)."""
    since = dev.get("clock_since_ms")
    if not dev.get("online") or dev.get("clock") != "unset" or since is None:
        return None
    if now_ms - since < cfg.clock_grace_s * 1000:
        return None
    return Firing(dev["id"], dev["kit_id"], "clock_unset", "warning",
                  f"{dev['id']}: clock not set for {_minutes(now_ms - since)} (no time from the internet or the kit)",
                  dict(clock="unset", since_ms=since, grace_s=cfg.clock_grace_s, reset_cause=dev.get("reset_cause")),
                  dev.get("boot"))


def clock_drift(dev: dict, cfg: AlertConfig, now_ms: int) -> Firing | None:
    """The device's clock is off the fleet's by more than clock_drift_s (fleet/health.py clock_drift_ms:
    from the least late of its recent messages, so a backlog delivered after an outage does not count)."""
    drift = clock_drift_ms(dev, cfg.health) if dev.get("online") else None
    if drift is None:
        return None
    way = "behind" if drift > 0 else "ahead of"
    return Firing(dev["id"], dev["kit_id"], "clock_drift", "warning",
                  f"{dev['id']}: clock about {abs(drift) / 1000:.0f} s {way} the fleet's "
                  f"(alert beyond {cfg.health.clock_drift_s:.0f} s)",
                  dict(drift_ms=drift, bound_s=cfg.health.clock_drift_s, clock=dev.get("clock")), dev.get("boot"))


def orders_not_uploaded(kit_id: str, report: dict | None, cfg: AlertConfig, now_ms: int) -> Firing | None:
    """``report``: the kit's latest pending report (fleet/retail/pending.py). Judged against now, not
    the report's time: a kit that went silent still holds those orders, and they only grow older."""
    if not report or not report["orders"] or report["oldest_ms"] is None:
        return None
    age_ms = now_ms - report["oldest_ms"]
    if age_ms < cfg.orders_pending_s * 1000:
        return None
    severity = "critical" if age_ms >= 3 * cfg.orders_pending_s * 1000 else "warning"
    n = report["orders"]
    silent = now_ms - report["reported_ms"]
    return Firing(kit_id, kit_id, "orders_not_uploaded", severity,
                  f"kit {kit_id}: {n} order{'s' if n != 1 else ''} not uploaded, the oldest taken {age_ms / 3_600_000:.0f} h "
                  f"ago (alert past {cfg.orders_pending_s / 3600:.0f} h)"
                  + (f"; the kit last reported {_minutes(silent)} ago" if silent >= 15 * 60_000 else ""),
                  dict(orders=n, oldest_ms=report["oldest_ms"], reported_ms=report["reported_ms"],
                       reported_by=report.get("device"), threshold_s=cfg.orders_pending_s),
                  report["oldest_ms"])


def double_entry(kit_id: str, doubles: list[dict], cfg: AlertConfig, now_ms: int) -> Firing | None:
    """``doubles``: the kit's tickets admitted twice lately (AlertStore.double_entries), each with both
    (or every) admitting scan. The evidence is how many: another double entry counts up the alert."""
    if not doubles:
        return None
    n = len(doubles)
    named = ", ".join(f"{d['ticket']} ({' and '.join(s['device_id'] for s in d['scans'])})" for d in doubles[:3])
    return Firing(kit_id, kit_id, "double_entry", "warning",
                  f"kit {kit_id}: {n} ticket{'s' if n != 1 else ''} admitted twice: {named}" + (" ..." if n > 3 else ""),
                  dict(doubles=doubles[:20], window_s=cfg.double_entry_window_s), n)


DEVICE_RULES: tuple[Callable[[dict, AlertConfig, int], Firing | None], ...] = (low_soc, bms_protection, paper_out,
                                                                                config_not_applied, clock_unset,
                                                                                clock_drift)


def assess(store: Any, cfg: AlertConfig, now_ms: int, kits: list[dict] | None = None) -> Assessment:
    """Every (subject, rule) firing now, from the store's current facts (read-only). ``kits``: the
    fleet's views already computed (KitViews.snapshot); None: computed here."""
    if kits is None:
        kits = store.health.kits_with_health(cfg.health, now=now_ms)
    errors = store.alerts.scanner_error_counts(now_ms - int(cfg.scanner_window_s * 1000), SCANNER_ERROR_VERDICTS)
    infos = store.registry.kit_infos()  # each kit's event window: one read for the whole pass
    pending = store.retail.orders.pending.latest()  # each kit's till: orders not uploaded
    doubles = store.alerts.double_entries(now_ms - int(cfg.double_entry_window_s * 1000))
    out: list[Firing] = []
    unknown: set[tuple[str, str]] = set()
    for kit in kits:
        devs = kit.get("devices") or []
        down = {d["id"] for d in devs if (d.get("health") or {}).get("status") in ("offline", "silent")}
        for dev in devs:
            for rule in DEVICE_RULES:
                f = rule(dev, cfg, now_ms)
                if f:
                    out.append(f)
            f = device_offline(dev, cfg, now_ms, host_down=bool(dev.get("host_id")) and dev["host_id"] in down)
            if f:
                out.append(f)
            f = scanner_errors(dev, errors.get(dev["id"], 0), cfg, now_ms)
            if f:
                out.append(f)
        info = infos.get(kit["id"])
        if info is None or info.ends_ms is None:
            # No event window known here: neither rule can be judged; leave their alerts alone.
            unknown.update((d["id"], "forecast_short") for d in devs)
        else:
            for bat in kit.get("batteries") or []:
                f = forecast_short(bat, kit["id"], cfg, now_ms)
                if f:
                    out.append(f)
        f = orders_not_uploaded(kit["id"], pending.get(kit["id"]), cfg, now_ms)
        if f:
            out.append(f)
        f = double_entry(kit["id"], doubles.get(kit["id"], []), cfg, now_ms)
        if f:
            out.append(f)
        if info is None or info.doors_open_ms is None:
            unknown.add((kit["id"], "kit_not_ready"))
        else:
            f = kit_not_ready(kit, info, cfg, now_ms)
            if f:
                out.append(f)
    return Assessment(out, unknown)


def evaluate(store: Any, now_ms: int | None = None, cfg: AlertConfig | None = None,
             kits: list[dict] | None = None) -> EvalResult:
    """Assess the rules and bring the alerts table in step, in one transaction. Idempotent."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    cfg = cfg or AlertConfig()
    a = assess(store, cfg, now_ms, kits)
    result = store.alerts.sync(a.firing, a.unknown, now_ms)
    result.firing = len(a.firing)
    return result


class Evaluator:
    """Runs ``evaluate`` in a thread: every ``interval_s``, and soon after ingest commits something
    (``changes()``, e.g. the ingest worker's batch counter, moved), at most every ``min_interval_s``.
    Ingest is never touched: reading a counter costs it nothing. Errors are logged, never raised.

    ``views``: where the fleet's views are already computed (``() -> (version, kits)``, the API's
    KitViews.snapshot). The rules then judge those instead of computing the fleet again (at 1,000
    kits that was a fifth of a core), and a round whose views have not moved since the last one
    is skipped until ``interval_s`` has passed."""

    def __init__(self, store: Any, cfg: AlertConfig, interval_s: float = 15.0, min_interval_s: float = 2.0,
                 changes: Callable[[], int] | None = None, on_done: Callable[[EvalResult], None] | None = None,
                 metrics: Any = None, views: Callable[[], tuple[int, list[dict]]] | None = None):
        self.store, self.cfg = store, cfg
        self.interval_s, self.min_interval_s = interval_s, min_interval_s
        self.changes, self.on_done = changes, on_done
        self.views = views
        self.metrics = metrics
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-alerts", daemon=True)

    @classmethod
    def from_settings(cls, store: Any, settings: Any, **kwargs: Any) -> "Evaluator":
        return cls(store, AlertConfig.from_settings(settings), settings.alert_eval_interval_s,
                   settings.alert_min_interval_s, **kwargs)

    def start(self) -> "Evaluator":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def kick(self) -> None:
        """Ask for an evaluation soon (cheap, never blocks)."""
        self._kick.set()

    def _changed(self, seen: list) -> bool:
        if self.changes is None:
            return False
        try:
            now = self.changes()
        except Exception:  # noqa: BLE001 - a broken probe must not stop the evaluator
            return False
        if now != seen[0]:
            seen[0] = now
            return True
        return False

    def _run(self) -> None:
        seen = [self.changes() if self.changes else None]
        last = 0.0
        judged = None  # the views' version last judged
        pending = True  # evaluate once at start
        while not self._stop.is_set():
            self._kick.wait(min(1.0, self.interval_s))
            if self._stop.is_set():
                break
            if self._kick.is_set():
                self._kick.clear()
                pending = True
            pending = self._changed(seen) or pending
            since = time.monotonic() - last
            if not ((pending and since >= self.min_interval_s) or since >= self.interval_s):
                continue
            try:
                kits = None
                if self.views is not None:
                    version, kits = self.views()
                    if version == judged and since < self.interval_s:
                        continue  # the change is not in the views yet: judge it when it is
                    judged = version
                pending = False
                last = time.monotonic()
                result = evaluate(self.store, cfg=self.cfg, kits=kits)
            except Exception:  # noqa: BLE001 - keep evaluating; the next round may succeed
                log.exception("alert evaluation failed")
                if self.metrics is not None:
                    self.metrics.evaluation_errors += 1
                continue
            if self.metrics is not None:
                self.metrics.evaluations += 1
            if result.opened or result.resolved:
                log.info("alerts: %d opened, %d resolved, %d firing", result.opened, result.resolved, result.firing)
            if self.on_done is not None:
                try:
                    self.on_done(result)
                except Exception:  # noqa: BLE001
                    log.exception("alert evaluation callback failed")
