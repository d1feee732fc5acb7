from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path

from fleet.api.deps import PublisherDep
from fleet.api.schemas import RevocationsIn, RevocationsOut
from fleet.commands import ConfigConflict, NoScanners, PublishFailed
from fleet.store import PayloadTooLarge
from kits.contract import EVENT_ID_RE

router = APIRouter(prefix="/api/v1/events", tags=["events"])


@router.post("/{event_id}/revocations", response_model=RevocationsOut)
def post_revocations(event_id: Annotated[str, Path(pattern=f"^{EVENT_ID_RE}$")], body: RevocationsIn,
                     publisher: PublisherDep):
    """Revoke tickets at the door: merged into ``revoked.EVENT`` of every scanner's desired config
    (all in one transaction, other keys kept) and pushed retained. Returns the versions pushed."""
    tickets = list(dict.fromkeys(body.tickets))
    try:
        pushed = publisher.revoke(event_id, tickets)
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    except (NoScanners, ConfigConflict) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except PublishFailed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    return dict(event_id=event_id, tickets=tickets,
                pushed=[dict(device_id=d, version=c.version, revoked=c.data["revoked"][event_id]) for d, c in pushed])
