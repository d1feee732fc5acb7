from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleet.api.deps import StoreDep
from fleet.api.schemas import DB_INT_MAX, AuditOut
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import visible_kits, visible_venues

# Filter words are printable text: a control character (a NUL, which PostgreSQL refuses in a
# parameter) is the caller's 422, not the database's 500.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=guard("ops", "crew", "venue"),
                   responses=AUTH_RESPONSES)


@router.get("", response_model=list[AuditOut])
def audit(store: StoreDep, user: UserDep, limit: Annotated[int, Query(ge=1, le=500)] = 100,
          before: Annotated[int | None, Query(ge=0, le=DB_INT_MAX, description="ms since the epoch: the page before this")] = None,
          since: Annotated[int | None, Query(ge=0, le=DB_INT_MAX, description="ms since the epoch: from this time on")] = None,
          by: Annotated[str | None, Query(min_length=1, max_length=63, pattern=PRINTABLE, description="who: a user's name")] = None,
          action: Annotated[str | None, Query(max_length=100, pattern=PRINTABLE, description='words in what they did: "command", '
                                              '"alert acknowledged", "PUT /api/v1/users" (case-insensitive)')] = None,
          kit: Annotated[str | None, Query(min_length=1, max_length=63, pattern=PRINTABLE, description="the kit it touched")] = None):
    """Every command sent to a device, every alert acknowledged or resolved by someone, and every other
    change made through the API (``PUT /api/v1/venues/{venue_id}``, ...): who (the signed-in user), what,
    when, and the result, newest first. Page back with ``before`` = the last item's ``ts``; filter by
    who, action, kit and time (``since`` to ``before``).
    Crew users see their kits' entries, venue users their venues'; both see their own changes."""
    return store.activity.audit(limit, before, kits=visible_kits(user), venues=visible_venues(user), me=user.name,
                                by=by, action=action, kit=kit, since_ms=since)
