"""The kit's power-up self-test: every part checked, one verdict, each problem with its fix.

A kit is a list of steps (agent/checks.py makes them from the manifest): the link to the fleet
and the outbox first, then every device at once (a slow Bluetooth pack must not hold up the
printer's test label). Each step returns what it saw and its problems; the report's status is
ready, degraded (warnings only) or not ready (any fault). The caller shows progress as steps
start and end (popkit kit up draws it with rich; the daemon logs it), publishes the report and
sets the panel LED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from agent.readiness import Problem, Status, fault, status_of, warning

STEP_TIMEOUT_S = 8.0
NEXT_EVENT_H = 12.0  # doors further off than this: the kit is not powered for them yet  # a step that has not answered by then is a fault, not a hang


@dataclass
class StepResult:
    detail: str = ""
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Step:
    """One line of the power-up: ``run`` checks one thing (a device, the link)."""

    device: str
    label: str  # what the crew reads: "printer", "battery", "scanner"...
    run: Callable[[], Awaitable[StepResult]]
    fix_if_stuck: str = "check its power and cable"


@dataclass
class Report:
    status: Status
    results: dict[str, StepResult]  # by device id, in step order
    took_s: float

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.results.values() for p in r.problems]

    def event_data(self) -> dict:
        """``data`` of the contract's ``readiness`` event."""
        return {"status": self.status, "problems": [p.as_dict() for p in self.problems][:64],
                "took_ms": int(self.took_s * 1000)}


Progress = Callable[[Step, StepResult | None], None]  # called at a step's start (None) and end


async def run_steps(first: list[Step], rest: list[Step], progress: Progress | None = None,
                    timeout_s: float = STEP_TIMEOUT_S) -> Report:
    """``first`` one after another (the link), then ``rest`` all at once."""
    t0 = time.monotonic()
    results: dict[str, StepResult] = {}

    async def one(step: Step) -> None:
        if progress:
            progress(step, None)
        try:
            res = await asyncio.wait_for(step.run(), timeout_s)
        except asyncio.TimeoutError:
            res = StepResult("no answer", [fault(step.device, f"{step.label} did not answer in {timeout_s:.0f} s",
                                                 step.fix_if_stuck)])
        except Exception as exc:  # noqa: BLE001 - a broken check is a finding, not a crash of the power-up
            res = StepResult("check failed", [fault(step.device, f"{step.label} check failed: {exc}"[:120],
                                                    step.fix_if_stuck)])
        results[step.device] = res
        if progress:
            progress(step, res)

    for step in first:
        await one(step)
    await asyncio.gather(*(one(s) for s in rest))
    ordered = {s.device: results[s.device] for s in [*first, *rest]}
    problems = [p for r in ordered.values() for p in r.problems]
    return Report(status_of(problems), ordered, time.monotonic() - t0)


# ---------------------------------------------------------------- the battery against the event


def _hm(hours: float) -> str:
    h, m = divmod(int(round(hours * 60)), 60)
    return f"{h} h {m:02d}" if h else f"{m} min"


def runtime_hours(v: float | None, i: float | None, soc: float | None, ttg_min: int | None,
                  remaining_ah: float | None) -> float | None:
    """Hours the pack lasts at the present load; None when it is not discharging (or cannot tell)."""
    if ttg_min is not None:
        return None if ttg_min < 0 else ttg_min / 60
    if remaining_ah is not None and i is not None and i < -0.05:
        return remaining_ah / -i
    return None


def battery_problems(device: str, soc: float | None, runtime_h: float | None, *, now: datetime,
                     ends: datetime | None, doors_open: datetime | None, min_soc: float | None,
                     min_runtime_h: float | None) -> list[Problem]:
    """Warnings (the kit runs, with less) when the pack is under the crew's expectations."""
    out: list[Problem] = []
    if min_soc is not None and soc is not None and soc < min_soc:
        when = "at doors-open" if doors_open is None or doors_open > now else "now"
        out.append(warning(device, f"charge {soc:.0f} % is under the {min_soc:.0f} % wanted {when}",
                           "charge the pack or bring a spare"))
    need_h, until = None, ""
    if ends is not None and ends > now:
        # Powered up for today's event, the pack runs from now to the end. An event further off than
        # NEXT_EVENT_H (a rehearsal days before) is judged on its own length, doors to end.
        start = now
        if doors_open is not None and (doors_open - now).total_seconds() > NEXT_EVENT_H * 3600:
            start = doors_open
        need_h = (ends - start).total_seconds() / 3600
        until = f" to the event's end ({ends.strftime('%H:%M')})"  # in the venue's time, as the manifest has it
    elif min_runtime_h is not None:
        need_h = min_runtime_h
    if need_h is not None and runtime_h is not None and runtime_h < need_h:
        out.append(warning(device, f"will not last{until}: about {_hm(runtime_h)} left at this load, {_hm(need_h)} needed",
                           "charge or swap the pack, or cut the load"))
    return out


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
