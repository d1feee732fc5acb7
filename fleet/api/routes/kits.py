from __future__ import annotations

from fastapi import APIRouter, HTTPException, Query, Request

from fleet.api.deps import StoreDep
from fleet.api.schemas import CheckinOut, KitOut
from fleet.health import HealthConfig
from fleet.settings import FleetSettings

router = APIRouter(prefix="/api/v1/kits", tags=["kits"])


def health_config(request: Request) -> HealthConfig:
    """The health thresholds: app.state.health_config if set, else the ingest worker's settings,
    else the settings from the environment (POPKIT_HEARTBEAT_TIMEOUT_S, ...)."""
    cfg = getattr(request.app.state, "health_config", None)
    if cfg is None:
        ingest = getattr(request.app.state, "ingest", None)
        settings = ingest.settings if ingest is not None else FleetSettings()
        cfg = request.app.state.health_config = HealthConfig.from_settings(settings)
    return cfg


@router.get("", response_model=list[KitOut])
def list_kits(request: Request, store: StoreDep):
    """Every kit with its devices, who is online, the latest battery reading, each device's health,
    the kit's worst status, its last readiness report and a time-to-empty forecast per power bank."""
    return store.kits_with_health(health_config(request))


@router.get("/{kit_id}", response_model=KitOut)
def get_kit(kit_id: str, request: Request, store: StoreDep):
    """One kit with its devices, their health, readiness and battery forecasts."""
    kits = store.kits_with_health(health_config(request), kit_id=kit_id)
    if not kits:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return kits[0]


@router.get("/{kit_id}/checkins", response_model=list[CheckinOut])
def recent_checkins(kit_id: str, store: StoreDep, limit: int = Query(20, ge=1, le=500)):
    """The kit's latest door scans (all verdicts), newest scan first, with the time each was scanned."""
    rows = store.recent_checkins(kit_id, limit)
    if rows is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return rows
