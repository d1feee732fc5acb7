"""Energy drawn from each pack since the kit was powered up, for the end-of-event summary.

Integrated from the battery readings the agent takes anyway (power, else V x I), trapezoid
rule between samples; a gap over MAX_GAP_S (the monitor was away) is not bridged, so a lost
link never invents energy. Kept in a small JSON file, rewritten atomically.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

MAX_GAP_S = 120.0


class EnergyMeter:
    def __init__(self, path: Path):
        self.path = path
        self.wh: dict[str, float] = {}  # device -> Wh drawn (discharge only)
        self.since: float = time.time()
        self._last: dict[str, tuple[float, float]] = {}  # device -> (t, watts drawn)
        try:
            saved = json.loads(path.read_text())
            self.wh = {k: float(v) for k, v in saved.get("wh", {}).items()}
            self.since = float(saved.get("since", self.since))
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: start counting now

    def add(self, device: str, v: float, i: float, p: float | None = None, t: float | None = None) -> None:
        t = time.time() if t is None else t
        watts = max(0.0, -(p if p is not None else v * i))  # drawn (negative power), not charged
        last = self._last.get(device)
        self._last[device] = (t, watts)
        if last is not None and 0 < t - last[0] <= MAX_GAP_S:
            self.wh[device] = self.wh.get(device, 0.0) + (watts + last[1]) / 2 * (t - last[0]) / 3600

    def reset(self) -> None:
        self.wh, self._last, self.since = {}, {}, time.time()
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"since": self.since, "wh": self.wh}))
        os.replace(tmp, self.path)
