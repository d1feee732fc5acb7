"""The windows a venue's schedules open over a stretch of days, each in the venue's local time: what
the venue page's week planner draws (sun windows included, which only the fleet can work out).

Unlike the compiler it does not refuse overlaps: a planner must draw both schedules of a conflict
to show it.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, Sequence

from fleet.venues.compiler import local_to_utc, occurrences  # one expansion rule for both
from fleet.venues.model import Venue


def week_windows(venue: Venue, schedules: Sequence, first_day: date, days: int = 7) -> list[dict[str, Any]]:
    """Every window touching the local days ``first_day`` .. +``days``, oldest first, with local
    start and end (``YYYY-MM-DDTHH:MM``) and UTC ms."""
    tz = venue.zone
    lo = local_to_utc(datetime.combine(first_day, time()), tz)
    hi = local_to_utc(datetime.combine(first_day + timedelta(days=days), time()), tz)
    out = []
    for s in schedules:
        for a, b in occurrences(venue, s, lo, hi):
            out.append({"schedule": s.id, "kind": s.kind, "scene": s.scene, "priority": s.priority,
                        "start": int(a.timestamp() * 1000), "end": int(b.timestamp() * 1000),
                        "start_local": a.astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
                        "end_local": b.astimezone(tz).strftime("%Y-%m-%dT%H:%M")})
    return sorted(out, key=lambda w: (w["start"], w["schedule"]))
