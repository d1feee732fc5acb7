"""Venue lighting: the model (venues, zones, scenes, schedules, overrides), sunrise/sunset, and the
compiler that turns them into one controller's format-1 timeline (docs/lighting-timeline.md).

Pure and database-free: the fleet loads the rows, calls ``compile_timeline`` per controller and
pushes the result as that controller's retained ``config``.
"""

from fleet.venues.compiler import CompileError, ScheduleConflict, compile_timeline, local_to_utc, preview
from fleet.venues.model import (OnceWindow, OpeningHours, Output, Override, Scene, SunEdge, SunWindow, Venue,
                                WeeklyWindow, Zone, ZoneLevel)
from fleet.venues.sun import SunTimes, sun_times

__all__ = ["CompileError", "ScheduleConflict", "compile_timeline", "local_to_utc", "preview", "OnceWindow",
           "OpeningHours", "Output", "Override", "Scene", "SunEdge", "SunWindow", "Venue", "WeeklyWindow",
           "Zone", "ZoneLevel", "SunTimes", "sun_times"]
