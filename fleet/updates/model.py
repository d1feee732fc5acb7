"""Releases, rollouts and each device's update, and the planner that says who is offered next.

Pure: no database, no clock of its own. The planner takes a rollout, its devices' updates, each
kit's event window and hold, and ``now``; it answers which devices to offer now, which wait and
why, and whether the rollout pauses (its error threshold) or is done. fleet/updates/delivery.py
applies the answer; the API shows it.

"Never during a show": no device of a kit is offered from ``lead_ms`` before its doors open until
its event ends (a kit whose manifest gives an end but no doors-open time waits until the end: it
may already be open), none of a kit in use (a check-in at any of its doors within IN_USE_MS), and
none of a kit a crew holds. A device offered before doors open must
have time to download, try and commit the new app before the doors open: that is the lead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Literal, cast

from kits.release import parse_version

ROLES = ("scanner", "lighting", "agent")
RolloutState = Literal["running", "paused", "aborted", "done"]
DeviceState = Literal["pending", "waiting", "offered", "downloading", "trial", "committed", "rolled_back", "failed"]

# What a device may report, in the order an update goes through them: a report never moves a
# device back (a late "downloading" after its "trial" changes nothing), and a final state is final.
PROGRESS = ("offered", "downloading", "trial")
FAILED = frozenset({"rolled_back", "failed"})
FINAL = FAILED | {"committed"}
NOT_STARTED = frozenset({"pending", "waiting"})
REPORTED = frozenset(PROGRESS) | FINAL

DEFAULT_LEAD_MS = 30 * 60_000
# A kit with a check-in this recent is in use (a door is open, whatever its manifest says): it waits.
IN_USE_MS = 10 * 60_000
GROUP_RE = re.compile(r"^(?:[1-9][0-9]{0,5}|(?:100|[1-9][0-9]?(?:\.[0-9]{1,2})?)%)$")


@dataclass(frozen=True)
class Release:
    role: str
    version: str
    fw: str
    manifest: dict
    key_id: str
    size: int
    created_ms: int
    retired_ms: int | None = None
    by: str | None = None

    @property
    def id(self) -> str:
        return release_id(self.role, self.version)


def release_id(role: str, version: str) -> str:
    """The bundle's folder name, and the release's id everywhere: ``scanner-0.3.1``."""
    return f"{role}-{version}"


@dataclass(frozen=True)
class Target:
    """Which devices a rollout is for: the release's role, narrowed to these kits and devices (empty: all)."""

    kits: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    def matches(self, device: str, kit: str) -> bool:
        return (not self.kits or kit in self.kits) and (not self.devices or device in self.devices)


@dataclass(frozen=True)
class Rollout:
    id: int
    release: str
    role: str
    target: Target
    groups: tuple[str, ...]  # "1" (a count), "10%" (a share of all its devices): cumulative
    success_threshold: float  # fraction of a group committed before the next group starts
    error_threshold: float  # fraction of a group failed or rolled back that pauses the rollout
    rate_per_min: int  # devices offered per minute, at most
    state: RolloutState = "running"
    pause_reason: str | None = None
    # Failures already seen when ops last resumed: only a new one pauses the rollout again.
    failures_acknowledged: int = 0
    created_ms: int = 0
    created_by: str | None = None
    updated_ms: int = 0
    # Ops asked for an older version (a rollback): a device takes a version older than its own only then.
    downgrade: bool = False


@dataclass(frozen=True)
class DeviceUpdate:
    device: str
    kit: str
    rollout: int
    group: int  # 0-based index into the rollout's groups
    state: DeviceState = "pending"
    reason: str | None = None
    offered_ms: int | None = None
    updated_ms: int = 0


@dataclass(frozen=True)
class KitWindow:
    """What the planner needs of a kit: its event window (from the registry) and its crew's hold."""

    doors_open_ms: int | None = None
    ends_ms: int | None = None
    held_by: str | None = None
    hold_reason: str | None = None
    # The latest check-in at any of its doors within IN_USE_MS (None: none): the kit is in use.
    last_checkin_ms: int | None = None
    # An update reaches a kit's devices only through its agent: a kit without one is never offered.
    has_agent: bool = True


@dataclass(frozen=True)
class GroupProgress:
    index: int
    spec: str
    size: int
    committed: int
    failed: int
    in_flight: int
    not_started: int
    complete: bool


@dataclass
class Plan:
    offer: list[str] = field(default_factory=list)
    waits: dict[str, str] = field(default_factory=dict)  # device -> why it is not offered now
    pause: str | None = None  # the error threshold was reached: why
    done: bool = False
    active_group: int | None = None  # the first group not yet complete
    groups: list[GroupProgress] = field(default_factory=list)


def parse_groups(specs: list[str | int]) -> tuple[str, ...]:
    """Group specs as strings ("1", "10%"), checked: each a count or a percentage, never shrinking."""
    out = tuple(str(s).strip() for s in specs)
    if not out:
        raise ValueError("groups: give at least one (e.g. [1, \"10%\", \"100%\"])")
    for s in out:
        if not GROUP_RE.match(s):
            raise ValueError(f"groups: {s!r} is neither a device count (1, 5) nor a percentage (10%, 100%)")
    return out


def group_sizes(specs: tuple[str, ...], total: int) -> list[int]:
    """How many devices each group adds, of ``total``: the specs are cumulative ([1, "50%", "100%"] of
    10 devices: 1, 4, 5). A percentage rounds up, so 1% of 10 devices is one, not none."""
    sizes, reached = [], 0
    for s in specs:
        want = math.ceil(float(s[:-1]) * total / 100 - 1e-9) if s.endswith("%") else int(s)
        want = min(max(want, reached), total)
        sizes.append(want - reached)
        reached = want
    return sizes


def running_version(fw: str | None, role: str) -> tuple[int, int, int] | None:
    """The version a device reports running (its ``fw``, "scanner-0.3.1"), or None if it says none we can read."""
    if not fw or not fw.startswith(role + "-"):
        return None
    try:
        return parse_version(fw[len(role) + 1:])
    except ValueError:
        return None


def assign_groups(rollout_specs: tuple[str, ...], devices: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """(device, kit, group) for every target device, in device order: the canary is the first.
    Devices past the last group's share (its spec below 100%) are not part of the rollout."""
    ordered = sorted(devices)
    out: list[tuple[str, str, int]] = []
    start = 0
    for g, size in enumerate(group_sizes(rollout_specs, len(ordered))):
        out.extend((d, k, g) for d, k in ordered[start:start + size])
        start += size
    return out


def hhmm(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%H:%M UTC")


def kit_wait(window: KitWindow | None, now_ms: int, lead_ms: int = DEFAULT_LEAD_MS) -> str | None:
    """Why no device of this kit may be offered now (None: it may)."""
    if window is None:
        return None
    if window.held_by is not None:
        return f"held by crew {window.held_by}" + (f": {window.hold_reason}" if window.hold_reason else "")
    if window.ends_ms is not None and now_ms < window.ends_ms:
        if window.doors_open_ms is None:
            return f"in show until {hhmm(window.ends_ms)} (doors-open time unknown)"
        if now_ms >= window.doors_open_ms:
            return f"in show until {hhmm(window.ends_ms)}"
        if now_ms >= window.doors_open_ms - lead_ms:
            return f"doors open at {hhmm(window.doors_open_ms)}: in show until {hhmm(window.ends_ms)}"
    if window.last_checkin_ms is not None and now_ms - window.last_checkin_ms < IN_USE_MS:
        ago = max(now_ms - window.last_checkin_ms, 0) // 60_000
        return f"in use: last check-in {ago} min ago" if ago else "in use: last check-in under a minute ago"
    if not window.has_agent:
        return "no agent registered for this kit: nothing to deliver the update through"
    return None


def progress(rollout: Rollout, updates: list[DeviceUpdate]) -> list[GroupProgress]:
    out = []
    for g, spec in enumerate(rollout.groups):
        mine = [u for u in updates if u.group == g]
        committed = sum(u.state == "committed" for u in mine)
        failed = sum(u.state in FAILED for u in mine)
        in_flight = sum(u.state in PROGRESS for u in mine)
        complete = committed >= math.ceil(rollout.success_threshold * len(mine) - 1e-9)
        out.append(GroupProgress(g, spec, len(mine), committed, failed, in_flight, len(mine) - committed - failed
                                 - in_flight, complete))
    return out


def plan(rollout: Rollout, updates: list[DeviceUpdate], kits: dict[str, KitWindow], now_ms: int,
         lead_ms: int = DEFAULT_LEAD_MS) -> Plan:
    """Who is offered now, who waits and why, and whether the rollout pauses or is done."""
    groups = progress(rollout, updates)
    out = Plan(groups=groups)
    out.active_group = next((g.index for g in groups if not g.complete), None)
    waiting = [u for u in updates if u.state in NOT_STARTED]
    if rollout.state == "aborted":
        out.waits = {u.device: "rollout aborted" for u in waiting}
        return out
    if rollout.state == "done":
        return out
    failures = sum(g.failed for g in groups)
    over = [g for g in groups if g.size and g.failed and g.failed / g.size >= rollout.error_threshold]
    if rollout.state == "running" and over and failures > rollout.failures_acknowledged:
        g = over[0]
        out.pause = (f"error threshold: group {g.index + 1} has {g.failed}/{g.size} failed or rolled back "
                     f"(pauses at {rollout.error_threshold:.0%})")
    if rollout.state == "paused" or out.pause:
        why = f"rollout paused: {out.pause or rollout.pause_reason or 'by ops'}"
        out.waits = {u.device: why for u in waiting}
        return out
    if all(u.state in FINAL for u in updates):  # every device's update is over (a group may have fallen short)
        out.done = True
        return out
    recent = sum(1 for u in updates if u.offered_ms is not None and now_ms - 60_000 < u.offered_ms <= now_ms)
    budget = max(rollout.rate_per_min - recent, 0)
    for u in sorted(waiting, key=lambda u: (u.group, u.device)):
        if out.active_group is not None and u.group > out.active_group:
            g = groups[out.active_group]
            need = math.ceil(rollout.success_threshold * g.size - 1e-9)
            out.waits[u.device] = (f"group {u.group + 1} waits for group {g.index + 1}: {g.committed}/{g.size} "
                                   f"committed (needs {need})")
            continue
        held = kit_wait(kits.get(u.kit), now_ms, lead_ms)
        if held is not None:
            out.waits[u.device] = held
        elif budget <= 0:
            out.waits[u.device] = f"rate limit: {rollout.rate_per_min} devices a minute"
        else:
            out.offer.append(u.device)
            budget -= 1
    return out


def apply_report(update: DeviceUpdate, state: str, reason: str | None, now_ms: int) -> DeviceUpdate | None:
    """The update after its device reported ``state``; None when the report changes nothing (a state
    behind the one recorded, a device not yet offered, or one whose update is over)."""
    if state not in REPORTED or update.state in FINAL or update.state in NOT_STARTED:
        return None
    if state in PROGRESS and PROGRESS.index(state) <= PROGRESS.index(update.state):
        return None
    return replace(update, state=cast(DeviceState, state), reason=reason, updated_ms=now_ms)
