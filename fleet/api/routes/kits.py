from __future__ import annotations

import json
from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from fleet.api.deps import StoreDep
from fleet.api.schemas import DB_INT_MAX, CheckinOut, HealthStatus, KitOut, KitPageOut, ReadinessOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard, require_role
from fleet.auth.scope import visible_kits
from fleet.health import HealthConfig
from fleet.views.cache import KitViews
from fleet.views.kitup import readiness_history
from kits.manifest import ManifestError, parse_manifest

router = APIRouter(prefix="/api/v1/kits", tags=["kits"], dependencies=guard("ops", "crew"), responses=AUTH_RESPONSES)


def health_config(request: Request) -> HealthConfig:
    """The health thresholds (POPKIT_HEARTBEAT_TIMEOUT_S, ...), as create_app set them."""
    return request.app.state.health_config


def views(request: Request) -> KitViews:
    return request.app.state.views


def _json(body: bytes) -> Response:
    # The views are encoded once, when computed (fleet/views/cache.py); tests check them against the models.
    return Response(content=body, media_type="application/json")


@router.get("", response_model=KitPageOut)
def list_kits(
    request: Request,
    user: UserDep,
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
    Continue with ``offset=next_offset``. The kit page (``GET /api/v1/kits/{id}``) has the details.
    Crew users see their kits only (the counts too)."""
    return _json(views(request).page(state=state, status=status, q=q, sort=sort, offset=offset, limit=limit,
                                     kits=visible_kits(user)))


@router.get("/{kit_id}", response_model=KitOut, responses=refusals({404: "no such kit"}))
def get_kit(kit_id: str, request: Request):
    """One kit with its devices, their health, readiness and battery forecasts."""
    body = views(request).get(kit_id)
    if body is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return _json(body)


@router.get("/{kit_id}/checkins", response_model=list[CheckinOut], responses=refusals({404: "no such kit"}))
def recent_checkins(kit_id: str, store: StoreDep, limit: int = Query(20, ge=1, le=500)):
    """The kit's latest door scans (all verdicts), newest scan first, with the time each was scanned."""
    rows = store.activity.recent_checkins(kit_id, limit)
    if rows is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return rows


@router.get("/{kit_id}/readiness", response_model=list[ReadinessOut], responses=refusals({404: "no such kit"}))
def list_readiness(kit_id: str, store: StoreDep, limit: Annotated[int, Query(ge=1, le=200)] = 20,
                   before: Annotated[int | None, Query(ge=0, le=DB_INT_MAX, description="ms since the epoch: "
                                                       "the reports before this one's ts")] = None):
    """The kit's kit-up history: each self-test its agent reported (at power-up, the panel's button,
    ``popkit kit up``), newest first, with every problem and its fix."""
    rows = readiness_history(store.engine, kit_id, limit, before)
    if rows is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return rows


MANIFEST_BODY = {"requestBody": {"required": True, "content": {
    "text/plain": {"schema": {"type": "string", "description": "the kit manifest, TOML"}},
    "application/json": {"schema": {"type": "object", "required": ["manifest"],
                                    "properties": {"manifest": {"type": "string", "description": "TOML"}}}}}}}


async def _manifest_text(request: Request) -> str:
    """The manifest from the body: TOML as text/plain, or {"manifest": "..."} as JSON."""
    raw = await request.body()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if kind == "application/json":
            body = json.loads(raw)
            if not isinstance(body, dict) or not isinstance(body.get("manifest"), str):
                raise HTTPException(status_code=422, detail='the JSON body must be {"manifest": "<TOML text>"}')
            return body["manifest"]
        if kind in ("text/plain", "application/toml", ""):
            return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(status_code=422, detail="the body is not UTF-8 TOML or JSON") from None
    raise HTTPException(status_code=415, detail="send the manifest as text/plain (TOML) or application/json")


@router.put("/{kit_id}", response_model=KitOut, dependencies=[Depends(require_role("ops"))], openapi_extra=MANIFEST_BODY,
            responses={409: {"description": "the manifest is another kit's"}, 415: {"description": "not TOML or JSON"},
                       422: {"description": "not a valid manifest (the message says where)"}})
async def put_kit(kit_id: str, request: Request, store: StoreDep):
    """Register a kit, or update it, from its manifest (what ``popkit kit provision --fleet`` sends):
    the kit and its devices as the manifest has them. ops only."""
    try:
        manifest = parse_manifest(await _manifest_text(request), source="manifest")
    except ManifestError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if manifest.id != kit_id:
        raise HTTPException(status_code=409, detail=f"the manifest is kit {manifest.id!r}, not {kit_id!r} of the path")
    await to_thread.run_sync(store.registry.register_kit, manifest)  # the database write off the event loop
    body = await to_thread.run_sync(views(request).get, kit_id)
    return _json(body)
