"""What a change to a venue does to each controller: its timeline compiled before and after, at the
same instant, compared window by window and scene by scene, in the venue's local time.

Pure: ``timeline_diff`` takes two compiled timelines (``None``: the controller had none from this
venue, or has none after) and says what a publish would change there, so the venue page can show
it before anything is pushed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

UTC = timezone.utc


def _window(w: list, tz: ZoneInfo) -> dict[str, Any]:
    start, end, scene, priority = w
    s, e = datetime.fromtimestamp(start, tz), datetime.fromtimestamp(end, tz)
    same_day = s.date() == e.date()
    text = f"{s:%a %d %b %H:%M}–{e:%H:%M}" if same_day else f"{s:%a %d %b %H:%M}–{e:%a %d %b %H:%M}"
    return {"start": start * 1000, "end": end * 1000, "scene": scene, "priority": priority,
            "text": f"{text} {scene} (priority {priority})"}


def timeline_diff(before: dict | None, after: dict | None, tz: str) -> dict[str, Any]:
    """``{changed, new, gone, windows_added, windows_removed, scenes_changed, floor_changed}`` of one
    controller; ``new``: it gets this venue's timeline for the first time, ``gone``: no zone uses it now.
    Only what the timelines hold is compared: the horizon each controller is given (48 h)."""
    zone = ZoneInfo(tz)
    old_w = {tuple(w) for w in (before or {}).get("windows", [])}
    new_w = {tuple(w) for w in (after or {}).get("windows", [])}
    old_s, new_s = (before or {}).get("scenes", {}), (after or {}).get("scenes", {})
    shown = {w[2] for w in new_w}
    scenes_changed = sorted(s for s in shown if s in old_s and old_s[s] != new_s.get(s))
    out = {
        "windows_added": [_window(list(w), zone) for w in sorted(new_w - old_w)],
        "windows_removed": [_window(list(w), zone) for w in sorted(old_w - new_w)],
        "scenes_changed": scenes_changed,
        "floor_changed": (before or {}).get("floor") != (after or {}).get("floor"),
        "new": before is None and after is not None,
        "gone": after is None and before is not None,
    }
    out["changed"] = any(bool(out[k]) for k in ("windows_added", "windows_removed", "scenes_changed", "floor_changed",
                                                 "new", "gone"))
    return out
