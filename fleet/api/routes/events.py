from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from fleet.api.deps import StoreDep
from fleet.api.schemas import AttendanceOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import scanners_of, visible_kits
from kits.contract import EVENT_ID_RE

router = APIRouter(prefix="/api/v1/events", tags=["events"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


@router.get("/{event_id}/attendance", response_model=AttendanceOut,
            responses=refusals({404: "no check-ins for this event"}))
def get_attendance(event_id: Annotated[str, Path(pattern=f"^{EVENT_ID_RE}$")], store: StoreDep, user: UserDep):
    """Admissions per event and per scanner, refusals by verdict, and tickets admitted twice (with both scans).
    Crew users: the scans of their kits' scanners only (404 when those saw none of the event)."""
    attendance = store.attendance(event_id, devices=scanners_of(store, visible_kits(user)))
    if attendance is None:
        raise HTTPException(status_code=404, detail=f"no check-ins for event {event_id!r}")
    return attendance
