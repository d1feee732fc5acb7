from __future__ import annotations

from fastapi import APIRouter, HTTPException

from fleet.api.deps import PublisherDep, StoreDep
from fleet.api.schemas import BAD_BODY, NO_BROKER, ConfigIn, ConfigOut, DesiredConfigOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, guard
from fleet.commands import PublishFailed, UnknownDevice
from fleet.commands import PayloadTooLarge
from fleet.tickets.model import ConfigConflict, hide_keys, restore_keys

router = APIRouter(prefix="/api/v1/devices", tags=["config"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


@router.get("/{device_id}/config", response_model=DesiredConfigOut, responses=refusals({404: "no such device"}))
def get_config(device_id: str, store: StoreDep):
    """The desired config, the version the device reports applied, and whether they match. Event keys
    show as "(hidden)": they go to the scanners only."""
    cfg = store.config.desired(device_id)
    if cfg is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    return {**cfg, "data": hide_keys(cfg["data"])}


@router.put("/{device_id}/config", response_model=ConfigOut, responses=refusals({
    **BAD_BODY, 404: "no such device", 413: "the config is over the contract's size limit", **NO_BROKER}))
def put_config(device_id: str, body: ConfigIn, publisher: PublisherDep, store: StoreDep):
    """Replace the desired config: stored under the next version, then published retained (QoS 1). An
    event key sent back as "(hidden)" keeps the key the device holds."""
    try:
        held = store.config.desired(device_id)
        data = restore_keys(body.data, held and held["data"])
        out = publisher.put_config(device_id, data)
        return {"version": out.version, "ts": out.ts, "data": hide_keys(out.data)}
    except ConfigConflict as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    except UnknownDevice:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}") from None
    except PayloadTooLarge as exc:
        raise HTTPException(status_code=413, detail=str(exc)) from None
    except PublishFailed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
