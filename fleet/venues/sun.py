"""Sunrise and sunset for a venue's local date, in UTC.

``astral.sun.sun()`` computes dawn and dusk too and raises when *any* of them does not happen (at
60°N in June civil dusk never comes, yet the sun does set), so sunrise and sunset are asked for one
at a time. Where one does not happen (polar day or night) it is ``None``: a sun-relative schedule
skips that day rather than failing the whole compile.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

from astral import Observer
from astral import sun as _sun


@dataclass(frozen=True)
class SunTimes:
    sunrise: datetime | None  # aware, UTC
    sunset: datetime | None

    def get(self, event: str) -> datetime | None:
        return self.sunrise if event == "sunrise" else self.sunset


def sun_times(day: date, latitude: float, longitude: float, tz: str = "UTC") -> SunTimes:
    """Sunrise and sunset on ``day`` as a calendar date in ``tz`` (the venue's zone), in UTC.

    The zone matters away from Greenwich: Sydney's sunset on its 21 December falls on 21 December
    UTC, but its sunrise that morning is 20 December UTC.
    """
    observer = Observer(latitude=latitude, longitude=longitude)
    zone = ZoneInfo(tz)
    out = []
    for fn in (_sun.sunrise, _sun.sunset):
        try:
            t = fn(observer, day, tzinfo=zone)
        except ValueError:  # "Sun is always above/below the horizon on this day"
            t = None
        out.append(None if t is None else t.astimezone(timezone.utc))
    return SunTimes(*out)
