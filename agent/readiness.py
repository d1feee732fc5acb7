"""What a self-test finds, and the one verdict a crew reads: ready, degraded or not ready.

Every driver's ``self_test()`` returns a list of :class:`Problem`; each says what is wrong in
the crew's words and what to do about it ("printer: paper out, load a roll"). A fault means
the kit must not open doors as it is (not ready); a warning means it can, with less
(degraded).
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

    def __str__(self) -> str:
        return f"{self.device}: {self.what}, {self.fix}"

    def as_dict(self) -> dict:
        return {"device": self.device, "severity": self.severity, "what": self.what[:120], "fix": self.fix[:160]}


def fault(device: str, what: str, fix: str) -> Problem:
    return Problem(device, "fault", what, fix)


def warning(device: str, what: str, fix: str) -> Problem:
    return Problem(device, "warning", what, fix)


def status_of(problems: list[Problem]) -> Status:
    if any(p.severity == "fault" for p in problems):
        return "not_ready"
    return "degraded" if problems else "ready"
