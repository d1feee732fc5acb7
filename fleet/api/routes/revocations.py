from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path

from fleet.api.schemas import BAD_BODY, NO_BROKER, RevocationsIn, RevocationsOut, refusals
from fleet.api.deps import PublisherDep, StoreDep
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import event_kits, visible_kits
from fleet.commands import ConfigConflict, NoScanners, PublishFailed
from fleet.store import PayloadTooLarge
from kits.contract import EVENT_ID_RE

router = APIRouter(prefix="/api/v1/events", tags=["events"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


EventId = Annotated[str, Path(pattern=f"^{EVENT_ID_RE}$")]


def revoking_kits(event_id: EventId, store: StoreDep, user: UserDep) -> set[str] | None:
    """The kits whose scanners a revocation goes to: a crew user's (404 for an event only other kits
    hold: checked before anything else, the broker connection included); None for ops: every kit."""
    kits = visible_kits(user)
    if kits is not None:
        holders = event_kits(store, event_id)
        if holders and not holders & kits:
            raise HTTPException(status_code=404, detail=f"no event {event_id!r} at your kits")
    return kits


@router.post("/{event_id}/revocations", response_model=RevocationsOut, responses=refusals({
    **BAD_BODY, 404: "an event only other crews' kits hold (crew users)",
    409: "no scanner to push to, or their configs kept changing", 413: "a scanner's config would be over the size limit", **NO_BROKER}))
def post_revocations(event_id: EventId, kits: Annotated[set[str] | None, Depends(revoking_kits)],
                     body: RevocationsIn, publisher: PublisherDep):
    """Revoke tickets at the door: merged into ``revoked.EVENT`` of every scanner's desired config
    (all in one transaction, other keys kept) and pushed retained. Returns the versions pushed.
    Crew users revoke at their kits' scanners only."""
    tickets = list(dict.fromkeys(body.tickets))
    try:
        pushed = publisher.revoke(event_id, tickets, kits=kits)
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    except (NoScanners, ConfigConflict) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except PublishFailed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return dict(event_id=event_id, tickets=tickets,
                pushed=[dict(device_id=d, version=c.version, revoked=c.data["revoked"][event_id]) for d, c in pushed])
