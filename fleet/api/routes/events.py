from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from fleet.api.deps import StoreDep
from fleet.api.schemas import AttendanceOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import scanners_of, visible_kits
from fleet.tickets.store import TicketStore
from kits.contract import EVENT_ID_RE

router = APIRouter(prefix="/api/v1/events", tags=["events"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


@router.get("/{event_id}/attendance", response_model=AttendanceOut,
            responses=refusals({404: "no check-ins for this event"}))
def get_attendance(event_id: Annotated[str, Path(pattern=f"^{EVENT_ID_RE}$")], store: StoreDep, user: UserDep):
    """Admissions per event and per scanner, refusals by verdict, tickets admitted twice (with both scans),
    and the tickets revoked (who, where, when).
    Crew users: the scans of their kits' scanners only (404 when those saw none of the event)."""
    kits = visible_kits(user)
    attendance = store.activity.attendance(event_id, devices=scanners_of(store, kits))
    if attendance is None:
        raise HTTPException(status_code=404, detail=f"no check-ins for event {event_id!r}")
    # Who revoked which ticket, and where: at the fleet, or at a kit (crew users: the fleet's and their kits').
    attendance["revocations"] = [
        dict(ticket=r.ticket, revoked_by=r.revoked_by, revoked_at=r.revoked_at, revoked_ms=r.revoked_ms)
        for r in TicketStore(store.engine).revoked(event_id) if kits is None or r.kit_id is None or r.kit_id in kits]
    return attendance
