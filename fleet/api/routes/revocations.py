"""Event keys and revocations (fleet/tickets/): what the scanners hold, pushed through their retained config."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request

from fleet.api.deps import StoreDep
from fleet.api.schemas import (BAD_BODY, NO_BROKER, EventKeyIn, EventKeyOut, RevocationOut, RevocationsIn,
                               RevocationsOut, refusals)
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard, require_role
from fleet.auth.scope import event_kits, visible_kits
from fleet.commands import NoScanners, PublishFailed
from fleet.commands import PayloadTooLarge
from fleet.tickets.delivery import TicketDelivery
from fleet.tickets.model import ConfigConflict, ExpiredKey, KeySpec, UnknownEvent
from kits.contract import EVENT_ID_RE

router = APIRouter(prefix="/api/v1/events", tags=["events"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


EventId = Annotated[str, Path(pattern=f"^{EVENT_ID_RE}$")]


def tickets(request: Request) -> TicketDelivery:
    return request.app.state.tickets


TicketsDep = Annotated[TicketDelivery, Depends(tickets)]


def revoking_kits(event_id: EventId, store: StoreDep, user: UserDep) -> set[str] | None:
    """The kits whose scanners a revocation goes to: a crew user's (404 for an event only other kits
    hold: checked before anything else, the broker connection included); None for ops: every kit."""
    kits = visible_kits(user)
    if kits is not None:
        holders = event_kits(store, event_id)
        if holders and not holders & kits:
            raise HTTPException(status_code=404, detail=f"no event {event_id!r} at your kits")
    return kits


def _pushing(call):
    """Run a push, turning the delivery's refusals into HTTP answers."""
    try:
        return call()
    except UnknownEvent as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    except ExpiredKey as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    except (NoScanners, ConfigConflict) as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except (PublishFailed, RuntimeError) as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


@router.put("/{event_id}/key", response_model=EventKeyOut, dependencies=[Depends(require_role("ops"))],
            responses=refusals({**BAD_BODY, 409: "no scanner to push to", 422: "the key's window is empty or over",
                                **NO_BROKER}))
def put_event_key(event_id: EventId, body: EventKeyIn, delivery: TicketsDep, user: UserDep):
    """Give the scanners an event's key with its window: pushed in ``data.keys`` of the desired config of
    every scanner (or of ``kits``' scanners). A scanner drops the key once ``expires`` passes; a key
    whose window is already over is refused (422)."""
    key = KeySpec(event_id, body.key.lower(), body.not_before, body.expires,
                  frozenset(body.kits) if body.kits is not None else None)
    pushed = _pushing(lambda: delivery.put_key(key, by=user.name))
    return dict(event_id=event_id, not_before=key.not_before, expires=key.expires, kits=body.kits,
                pushed=[dict(device_id=d, version=c.version) for d, c in pushed])


@router.post("/{event_id}/revocations", response_model=RevocationsOut, responses=refusals({
    **BAD_BODY, 404: "an event the fleet knows nothing of, or one only other crews' kits hold (crew users)",
    409: "no scanner to push to, or their configs kept changing", 413: "a scanner's config would be over the size limit", **NO_BROKER}))
def post_revocations(event_id: EventId, kits: Annotated[set[str] | None, Depends(revoking_kits)],
                     body: RevocationsIn, delivery: TicketsDep, user: UserDep):
    """Revoke tickets at the door: kept with who revoked them, merged into ``revoked.EVENT`` of every
    scanner's desired config (other keys kept) and pushed retained. Returns the versions pushed.
    Crew users revoke at their kits' scanners only. 404 for an event the fleet has no key, check-in
    or revocation for."""
    tickets = list(dict.fromkeys(body.tickets))
    pushed = _pushing(lambda: delivery.revoke(event_id, tickets, by=user.name, kits=kits))
    return dict(event_id=event_id, tickets=tickets,
                pushed=[dict(device_id=d, version=c.version, revoked=c.data["revoked"][event_id]) for d, c in pushed])


@router.get("/{event_id}/revocations", response_model=list[RevocationOut],
            responses=refusals({404: "an event only other crews' kits hold (crew users)"}))
def get_revocations(event_id: EventId, kits: Annotated[set[str] | None, Depends(revoking_kits)],
                    delivery: TicketsDep):
    """Every ticket revoked for the event, oldest first: who revoked it, where (the fleet, or a kit
    with no uplink), and when. Crew users: those made at the fleet or at their kits."""
    return [dict(ticket=r.ticket, revoked_by=r.revoked_by, revoked_at=r.revoked_at, revoked_ms=r.revoked_ms)
            for r in delivery.tickets.revoked(event_id) if kits is None or r.kit_id is None or r.kit_id in kits]
