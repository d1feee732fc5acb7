from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

from fleet.api.deps import PublisherDep, StoreDep
from fleet.api.schemas import BAD_BODY, NO_BROKER, CommandIn, CommandOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.commands import PublishFailed, UnknownDevice
from fleet.commands import PayloadTooLarge

router = APIRouter(prefix="/api/v1/devices", tags=["commands"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


@router.post("/{device_id}/commands", response_model=CommandOut, status_code=202, responses=refusals({
    **BAD_BODY, 404: "no such device", 413: "the command is over the contract's size limit", **NO_BROKER}))
def post_command(device_id: str, body: CommandIn, publisher: PublisherDep, user: UserDep):
    """Send a command (QoS 1, never retained). 202: it is on its way; its status follows the device's ack.
    The audit log names the signed-in user as who asked (a ``by`` in the body is ignored)."""
    try:
        return publisher.send_command(device_id, body.action, body.args, body.ttl_s, requested_by=user.name)
    except UnknownDevice:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}") from None
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    except PublishFailed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None


@router.get("/{device_id}/commands", response_model=list[CommandOut], responses=refusals({404: "no such device"}))
def list_commands(device_id: str, store: StoreDep, limit: Annotated[int, Query(ge=1, le=500)] = 50):
    """A device's commands, newest first, with the status its acks gave them."""
    if store.registry.device_ref(device_id) is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    return store.commands.for_device(device_id, limit)
