"""Each power bank's time-to-empty fit, kept between the fleet's passes over every kit.

The fleet-wide views (fleet/views/cache.py) recompute every kit every few seconds. Fitting a pack's
forecast reads and decodes its readings of the last ``forecast_window_s`` (180 at one every 5 s)
and fits a line through them: about 1 ms a pack, a second a pass at 1,000 kits, where the rest
of a kit's view costs a third of that. A 15-minute fit barely moves in half a minute, so a pass
refits a pack only when

* it has a reading newer than its fit, and the fit is ``refit_s`` old; or
* its latest reading went from discharging to charging or back (the answer changes at once).

Only ``time_to_empty`` (readings alone) is kept; the comparison with the event's end and the
clock (``against_event``) is done afresh on every view. A kit's or a device's own page refits
its packs always (one kit: cheap) and leaves the fresh fit here for the next pass.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Iterable

from fleet.forecast import CHARGE_A, Forecast, Sample, time_to_empty

REFIT_S = 30.0


def charging(reading: dict | None) -> bool:
    i = (reading or {}).get("i")
    return i is not None and i > CHARGE_A


@dataclass(frozen=True)
class Fit:
    fitted_ms: int  # when (fleet clock)
    latest_ts: int | None  # the pack's latest reading then
    charging: bool  # ... and whether it was charging
    result: Forecast  # time_to_empty; copied before anyone fills in the event


class FitCache:
    def __init__(self):
        self._fits: dict[str, Fit] = {}
        self._lock = threading.Lock()  # the views' thread and API reads refit side by side
        self.fitted = self.reused = 0  # how often a fit was made, and kept one served

    def stale(self, packs: Iterable[tuple[str, dict | None]], now: int, refit_s: float = REFIT_S) -> list[str]:
        """Of (device id, latest battery reading) pairs, the packs a pass must fit again."""
        refit_ms, out = refit_s * 1000, []
        with self._lock:
            for device_id, latest in packs:
                fit = self._fits.get(device_id)
                ts = (latest or {}).get("ts")
                if fit is None or (ts != fit.latest_ts and (now - fit.fitted_ms >= refit_ms
                                                            or charging(latest) != fit.charging)):
                    out.append(device_id)
        return out

    def fit(self, device_id: str, latest: dict | None, readings: Iterable[dict], now: int) -> Forecast:
        """Fit ``readings`` now and keep the result."""
        result = time_to_empty(Sample.from_reading(r) for r in readings)
        with self._lock:
            self._fits[device_id] = Fit(now, (latest or {}).get("ts"), charging(latest), result)
            self.fitted += 1
        return replace(result)

    def kept(self, device_id: str) -> Forecast | None:
        """The kept fit (a copy), or None."""
        with self._lock:
            fit = self._fits.get(device_id)
            if fit is None:
                return None
            self.reused += 1
            return replace(fit.result)

    def keep_only(self, device_ids: set[str]) -> None:
        """Forget packs no longer in the fleet (a pass over every kit calls this)."""
        with self._lock:
            for gone in [d for d in self._fits if d not in device_ids]:
                del self._fits[gone]
