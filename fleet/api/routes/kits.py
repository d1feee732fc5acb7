from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response

from fleet.api.deps import StoreDep
from fleet.api.schemas import CheckinOut, HealthStatus, KitOut, KitPageOut
from fleet.health import HealthConfig
from fleet.kitviews import KitViews

router = APIRouter(prefix="/api/v1/kits", tags=["kits"])


def health_config(request: Request) -> HealthConfig:
    """The health thresholds (POPKIT_HEARTBEAT_TIMEOUT_S, ...), as create_app set them."""
    return request.app.state.health_config


def views(request: Request) -> KitViews:
    return request.app.state.views


def _json(body: bytes) -> Response:
    # The views are encoded once, when computed (fleet/kitviews.py); tests check them against the models.
    return Response(content=body, media_type="application/json")


@router.get("", response_model=KitPageOut)
def list_kits(
    request: Request,
    state: Annotated[Literal["online", "degraded", "offline"] | None, Query(
        description="connectivity: every device online, some, or none")] = None,
    status: Annotated[HealthStatus | None, Query(description="the kit's health (its worst device)")] = None,
    q: Annotated[str | None, Query(max_length=200, description="words that must all appear in the kit's id or "
                                   "name or a device's id, role or model (case-insensitive)")] = None,
    sort: Annotated[Literal["id", "health"], Query(description="health: worst first, then by id")] = "id",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
):
    """The fleet overview: each kit's state, health, battery and forecast, readiness and its devices
    as chips (id, role, model, online, health status), with the fleet's counts per state and status.
    Continue with ``offset=next_offset``. The kit page (``GET /api/v1/kits/{id}``) has the details."""
    return _json(views(request).page(state=state, status=status, q=q, sort=sort, offset=offset, limit=limit))


@router.get("/{kit_id}", response_model=KitOut)
def get_kit(kit_id: str, request: Request):
    """One kit with its devices, their health, readiness and battery forecasts."""
    body = views(request).get(kit_id)
    if body is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return _json(body)


@router.get("/{kit_id}/checkins", response_model=list[CheckinOut])
def recent_checkins(kit_id: str, store: StoreDep, limit: int = Query(20, ge=1, le=500)):
    """The kit's latest door scans (all verdicts), newest scan first, with the time each was scanned."""
    rows = store.recent_checkins(kit_id, limit)
    if rows is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return rows
