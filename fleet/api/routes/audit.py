from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleet.api.deps import StoreDep
from fleet.api.schemas import AuditOut

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=list[AuditOut])
def audit(store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 100,
          before: Annotated[int | None, Query(ge=0, description="ms since the epoch: the page before this")] = None):
    """Every command sent to a device and every alert acknowledged or resolved by someone: who, what,
    when, and the result, newest first. Page back with ``before`` = the last item's ``ts``."""
    return store.audit(limit, before)
