"""What a self-test finds, and the one verdict a crew reads: ready, degraded or not ready.

Every driver's ``self_test()`` returns a list of :class:`Problem`; each says what is wrong in
the crew's words and what to do about it ("printer: paper out, load a roll"). A fault means
the kit must not open doors as it is (not ready); a warning means it can, with less
(degraded).

The kit panel's LED says which check to look at by a count of blinks (:data:`CHECK_CODES`,
by the role of the device with the problem): the lowest code among the problems that set the
colour (the faults when there are any, else the warnings). The crew fixes that one, presses
the button, and the next one shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["fault", "warning"]
Status = Literal["ready", "degraded", "not_ready"]


@dataclass(frozen=True)
class Problem:
    device: str
    severity: Severity
    what: str  # what is wrong, e.g. "paper out"
    fix: str  # what the crew does, e.g. "load a roll"
    check: str | None = None  # the panel's check when not the device's role (CHECK_CODES), e.g. "clock"

    def __str__(self) -> str:
        return f"{self.device}: {self.what}, {self.fix}"

    def as_dict(self) -> dict:
        return {"device": self.device, "severity": self.severity, "what": self.what[:120], "fix": self.fix[:160]}


def fault(device: str, what: str, fix: str, check: str | None = None) -> Problem:
    return Problem(device, "fault", what, fix, check)


def warning(device: str, what: str, fix: str, check: str | None = None) -> Problem:
    return Problem(device, "warning", what, fix, check)


def status_of(problems: list[Problem]) -> Status:
    if any(p.severity == "fault" for p in problems):
        return "not_ready"
    return "degraded" if problems else "ready"


# blinks -> (role or check, what the crew checks); the agent's own problems are its link to the kit's
# broker, unless tagged with another check (the Pi's clock).
CHECK_CODES: dict[int, tuple[str, str]] = {
    1: ("agent", "the kit's broker / network"),
    2: ("scanner", "a door scanner"),
    3: ("lighting", "a lighting controller"),
    4: ("printer", "a printer"),
    5: ("powerbank", "a power bank"),
    6: ("light", "a light (relay or Bluetooth lamp)"),
    7: ("clock", "the Pi's clock (behind its last known time)"),
}
_CODE_OF_ROLE = {role: code for code, (role, _) in CHECK_CODES.items()}


def blink_code(problems: list[Problem], role_of: dict[str, str]) -> int | None:
    """How many blinks the panel shows for these problems (None when there are none, or none
    has a code); ``role_of`` maps device ids to roles, the agent's own id to ``"agent"``."""
    worst = [p for p in problems if p.severity == "fault"] or problems
    codes = [_CODE_OF_ROLE[r] for p in worst if (r := p.check or role_of.get(p.device)) in _CODE_OF_ROLE]
    return min(codes) if codes else None
