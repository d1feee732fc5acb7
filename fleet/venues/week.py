"""The windows a venue's schedules open over a stretch of days, each in the venue's local time: what
the venue page's week planner draws (sun windows included, which only the fleet can work out).

Unlike the compiler it does not refuse overlaps: a planner must draw both schedules of a conflict
to show it.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any, Sequence

from fleet.venues.compiler import local_to_utc, occurrences, schedule_windows  # one expansion rule for all
from fleet.venues.model import Venue


def _span(venue: Venue, first_day: date, days: int) -> tuple[datetime, datetime]:
    tz = venue.zone
    return (local_to_utc(datetime.combine(first_day, time()), tz),
            local_to_utc(datetime.combine(first_day + timedelta(days=days), time()), tz))


def check_days(venue: Venue, schedules: Sequence, first_day: date, days: int = 7) -> None:
    """Raise the compiler's ``ScheduleConflict`` for equal-priority windows overlapping in these days:
    a controller's timeline only reaches 48 h ahead, a planned week (or a one-off next month) further."""
    schedule_windows(venue, schedules, *_span(venue, first_day, days))


def week_windows(venue: Venue, schedules: Sequence, first_day: date, days: int = 7) -> list[dict[str, Any]]:
    """Every window touching the local days ``first_day`` .. +``days``, oldest first, with local
    start and end (``YYYY-MM-DDTHH:MM``) and UTC ms."""
    tz = venue.zone
    lo, hi = _span(venue, first_day, days)
    out = []
    for s in schedules:
        for a, b in occurrences(venue, s, lo, hi):
            out.append({"schedule": s.id, "kind": s.kind, "scene": s.scene, "priority": s.priority,
                        "start": int(a.timestamp() * 1000), "end": int(b.timestamp() * 1000),
                        "start_local": a.astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
                        "end_local": b.astimezone(tz).strftime("%Y-%m-%dT%H:%M")})
    return sorted(out, key=lambda w: (w["start"], w["schedule"]))
