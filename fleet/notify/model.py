"""Notification targets, the escalation policy, and the escalation itself as pure logic (no I/O).

Which targets hear of an alert (its *chain*): the enabled targets whose filters match it (kit, rule,
at least the severity), in escalation order. A crew or venue target must name its kits: those
people see their own kits only, so a target of theirs never hears of every kit.

The escalation of an alert still open and unacknowledged:

* ``grace_s`` after it opened: ``opened`` to the first target of its chain;
* every repeat interval after: ``reminder`` to that target, ``repeats`` times;
* the next interval, still unacknowledged: ``escalated`` to the next target, which then gets its
  own repeats, and so on; the last target keeps getting reminders;
* once resolved (back to normal): ``resolved`` to every target that was told.

An acknowledged alert goes no further (someone is on it). A repeat interval and a count of repeats
set on a target win over the policy's for that target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KINDS = ("webhook", "email")
AUDIENCES = ("ops", "crew", "venue")
SEVERITY_RANK = {"warning": 0, "critical": 1}
EVENTS = ("opened", "reminder", "escalated", "resolved", "test")
FAILURE_REASONS = ("timeout", "connection", "http_4xx", "http_5xx", "smtp_4xx", "smtp_5xx", "other")


@dataclass(frozen=True)
class Policy:
    grace_s: float = 120.0
    repeat_s: float = 3600.0
    repeats: int = 2


@dataclass(frozen=True)
class Target:
    id: int
    name: str
    url: str  # webhook: its http(s) URL; email: mailto:address
    kind: str = "webhook"
    audience: str = "ops"
    kits: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    min_severity: str = "warning"
    position: int = 0
    enabled: bool = True
    repeat_s: float | None = None
    repeats: int | None = None
    created_ms: int = 0
    updated_ms: int = 0

    def matches(self, alert: dict) -> bool:
        """Would this target hear of ``alert`` (a row as AlertStore returns it)?"""
        return (self.enabled and (not self.kits or alert["kit_id"] in self.kits)
                and (not self.rules or alert["rule"] in self.rules)
                and SEVERITY_RANK.get(alert["severity"], 1) >= SEVERITY_RANK[self.min_severity])

    def every_s(self, policy: Policy) -> float:
        return self.repeat_s if self.repeat_s is not None else policy.repeat_s

    def repeat_count(self, policy: Policy) -> int:
        return self.repeats if self.repeats is not None else policy.repeats


MAILTO = re.compile(r"^mailto:[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+$")


def address_problem(kind: str, url: str) -> str | None:
    """Why ``url`` is no address for a target of ``kind``, or None."""
    if kind == "email":
        return None if MAILTO.match(url) else "an email target's address is mailto:name@example.com"
    if not url.startswith(("http://", "https://")) or len(url) < 10 or any(c.isspace() for c in url):
        return "a webhook URL is http:// or https://, with no spaces"
    return None


def scope_problem(audience: str, kits: list[str] | tuple[str, ...]) -> str | None:
    """Why a target's audience and kits do not fit together, or None."""
    if audience in ("crew", "venue") and not kits:
        return f"a {audience} target names the kits it hears of (a {audience} sees their own kits only)"
    return None


def chain(targets: list[Target], alert: dict) -> list[Target]:
    """The targets that hear of ``alert``, in escalation order."""
    return sorted((t for t in targets if t.matches(alert)), key=lambda t: (t.position, t.id))


@dataclass(frozen=True)
class Escalation:
    """Where an alert stands: ``step`` sends planned so far; ``level`` its current target's index in
    the chain; ``at_level`` the sends to that target (the first, then its repeats)."""

    step: int = 0
    level: int = 0
    at_level: int = 0
    target_id: int | None = None
    next_ms: int = 0
    resolved_told: bool = False


@dataclass(frozen=True)
class Step:
    """One send to plan, and the escalation after it."""

    target: Target
    event: str
    after: Escalation = field(default_factory=Escalation)


def next_step(esc: Escalation | None, targets: list[Target], policy: Policy, now_ms: int) -> Step | None:
    """The send due now for an open, unacknowledged alert whose chain is ``targets`` (None: not due,
    or no target). ``esc`` None: never notified (the caller checked the grace period)."""
    if not targets:
        return None
    if esc is None or esc.step == 0:
        return _send(targets, 0, 1, "opened", 1, policy, now_ms)
    if now_ms < esc.next_ms:
        return None
    level = _current_level(esc, targets)
    current = targets[level]
    if esc.at_level <= current.repeat_count(policy) or level == len(targets) - 1:
        return _send(targets, level, esc.at_level + 1, "reminder", esc.step + 1, policy, now_ms)
    return _send(targets, level + 1, 1, "escalated", esc.step + 1, policy, now_ms)


def _current_level(esc: Escalation, targets: list[Target]) -> int:
    """The current target's index in today's chain: targets may have been edited since the last send."""
    for i, t in enumerate(targets):
        if t.id == esc.target_id:
            return i
    return min(esc.level, len(targets) - 1)


def _send(targets: list[Target], level: int, at_level: int, event: str, step: int, policy: Policy,
          now_ms: int) -> Step:
    t = targets[level]
    after = Escalation(step=step, level=level, at_level=at_level, target_id=t.id,
                       next_ms=now_ms + int(t.every_s(policy) * 1000))
    return Step(t, event, after)


def payload(alert: dict, event: str, target: Target, now_ms: int, step: int) -> dict:
    """The JSON body a webhook receives."""
    path = f"/api/v1/alerts/{alert['id']}"
    return dict(
        event=event,  # opened | reminder | escalated | resolved
        id=alert["id"], rule=alert["rule"], subject=alert["subject"], kit_id=alert["kit_id"],
        severity=alert["severity"], state=alert["state"], message=alert["message"],
        first_seen_ms=alert["first_seen_ms"], last_seen_ms=alert["last_seen_ms"], count=alert["count"],
        resolved_ms=alert["resolved_ms"], resolved_by=alert["resolved_by"], details=alert["details"],
        notification=step, sent_ms=now_ms, target=target.name, audience=target.audience,
        links=dict(alert=path, acknowledge=f"{path}/acknowledge", resolve=f"{path}/resolve"),
    )


def trial_payload(target: Target, now_ms: int, by: str) -> dict:
    """What a test send posts: no alert, and says so."""
    return dict(event="test", target=target.name, audience=target.audience, sent_ms=now_ms, by=by,
                message=f"Test notification from the PopKit fleet to {target.name!r}, sent by {by}")
