from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from fleet.api.deps import StoreDep
from fleet.api.schemas import AttendanceOut
from kits.contract import EVENT_ID_RE

router = APIRouter(prefix="/api/v1/events", tags=["events"])


@router.get("/{event_id}/attendance", response_model=AttendanceOut)
def get_attendance(event_id: Annotated[str, Path(pattern=f"^{EVENT_ID_RE}$")], store: StoreDep):
    """Admissions per event and per scanner, refusals by verdict, and tickets admitted twice (with both scans)."""
    attendance = store.attendance(event_id)
    if attendance is None:
        raise HTTPException(status_code=404, detail=f"no check-ins for event {event_id!r}")
    return attendance
