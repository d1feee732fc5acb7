from __future__ import annotations

from fastapi import APIRouter, HTTPException

from fleet.api.deps import StoreDep
from fleet.api.schemas import KitOut

router = APIRouter(prefix="/api/v1/kits", tags=["kits"])


@router.get("", response_model=list[KitOut])
def list_kits(store: StoreDep):
    """Every kit with its devices, who is online, and the latest battery reading."""
    return store.list_kits()


@router.get("/{kit_id}", response_model=KitOut)
def get_kit(kit_id: str, store: StoreDep):
    """One kit with its devices."""
    kit = store.get_kit(kit_id)
    if kit is None:
        raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")
    return kit
