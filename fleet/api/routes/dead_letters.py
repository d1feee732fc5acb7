from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleet.api.deps import StoreDep

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])


@router.get("")
def list_dead_letters(store: StoreDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    """Rejected messages, newest first: reason, topic and the first bytes of the payload."""
    rows = store.dead_letters(limit)
    for r in rows:
        r["payload_head"] = r["payload_head"].decode("utf-8", errors="replace")
    return rows
