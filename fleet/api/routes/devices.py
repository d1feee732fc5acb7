from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from fleet.api.deps import StoreDep
from fleet.api.routes.kits import health_config
from fleet.api.schemas import DeviceDetailOut, TelemetryOut

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


@router.get("/{device_id}", response_model=DeviceDetailOut)
def get_device(device_id: str, request: Request, store: StoreDep):
    """One device: state, latest readings, its sequence streams with any gaps, its health, and
    for a power bank the time-to-empty forecast."""
    device = store.device_with_health(device_id, health_config(request))
    if device is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    return device


@router.get("/{device_id}/telemetry", response_model=TelemetryOut)
def list_telemetry(
    device_id: str,
    store: StoreDep,
    since: Annotated[int | None, Query(ge=0, description="only readings taken at or after this time, ms since the epoch")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    kind: Annotated[str | None, Query(pattern="^(battery|printer|device)$")] = None,
):
    """A device's telemetry in time order, oldest first, from ``since``."""
    if store.device_ref(device_id) is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    items = store.telemetry(device_id, since, limit + 1, kind)
    more = len(items) > limit
    items = items[:limit]
    return {"device_id": device_id, "items": items, "next_since": items[-1]["ts"] if more else None}
