from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from fleet.api.deps import StoreDep
from fleet.auth.deps import AUTH_RESPONSES, guard
from fleet.api.schemas import DB_INT_MAX

# ops only: rejected messages come from anywhere (unknown devices too), so they are in no one's scope.
router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"], dependencies=guard("ops"),
                   responses=AUTH_RESPONSES)


class ReasonOut(BaseModel):
    reason: str
    count: int = Field(description="rejected messages kept with this reason")
    last_ms: int = Field(description="when the newest of them arrived, ms since the epoch")
    last_id: int = Field(description="the newest one's id (list it with ?reason=)")


@router.get("")
def list_dead_letters(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    reason: Annotated[str | None, Query(max_length=32, description="bad_json, invalid, oversize, unknown_topic, "
                                        "unknown_device, ...")] = None,
    topic_prefix: Annotated[str | None, Query(max_length=255, description="e.g. popkit/v1/<kit>/ for one kit's")] = None,
    before_id: Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description="the page after the one whose last id this is")] = None,
):
    """Rejected messages, newest first: id, reason, topic and the first bytes of the payload.
    Continue with ``before_id`` = the last id of a page."""
    rows = store.ledger.dead_letters(limit, reason=reason, topic_prefix=topic_prefix, before_id=before_id)
    for r in rows:
        r["payload_head"] = r["payload_head"].decode("utf-8", errors="replace")
    return rows


@router.get("/reasons", response_model=list[ReasonOut])
def dead_letter_reasons(store: StoreDep):
    """How many rejected messages are kept per reason, and when the newest came: the most common first."""
    return store.ledger.dead_letter_reasons()
