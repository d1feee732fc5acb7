"""What a user may see. An object outside a user's scope is answered 404, worded as for one that does
not exist: a crew or venue user learns nothing about other kits and venues, not even that they exist.

ops see everything; crew their kits (and the devices, alerts, check-ins and events of those kits);
venue users their venues. Each ``*_visible`` raises the route's own 404 or returns quietly.
"""

from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy import select

from fleet import db
from fleet.auth.users import User


def not_found(detail: str) -> HTTPException:
    return HTTPException(status_code=404, detail=detail)


def visible_kits(user: User) -> set[str] | None:
    """The kits the user sees; None: all of them (ops)."""
    if user.role == "ops":
        return None
    return set(user.kits) if user.role == "crew" else set()


def visible_venues(user: User) -> set[str] | None:
    """The venues the user sees; None: all of them (ops)."""
    if user.role == "ops":
        return None
    return set(user.venues) if user.role == "venue" else set()


def sees_kit(user: User, kit_id: str | None) -> bool:
    kits = visible_kits(user)
    return kits is None or (kit_id is not None and kit_id in kits)


def kit_visible(user: User, kit_id: str) -> None:
    if not sees_kit(user, kit_id):
        raise not_found(f"no kit {kit_id!r}")


def device_visible(user: User, store, device_id: str) -> None:
    if user.role == "ops":
        return  # the route answers 404 for a device that does not exist
    ref = store.registry.device_ref(device_id)
    if ref is None or not sees_kit(user, ref.kit_id):
        raise not_found(f"no device {device_id!r}")


def alert_visible(user: User, store, alert_id: str) -> None:
    if user.role == "ops" or not alert_id.isdigit():
        return  # a malformed id is the route's 422
    alert = store.alerts.get(int(alert_id), history=False)
    if alert is None or not sees_kit(user, alert["kit_id"]):
        raise not_found(f"no alert {alert_id}")


def venue_visible(user: User, venue_id: str) -> None:
    venues = visible_venues(user)
    if venues is not None and venue_id not in venues:
        raise not_found(f"no venue {venue_id!r}")


def scanners_of(store, kits: set[str] | None) -> set[str] | None:
    """The scanners of ``kits`` (None: every scanner)."""
    if kits is None:
        return None
    return {r.id for r in store.registry.device_refs().values() if r.role == "scanner" and r.kit_id in kits}


def event_kits(store, event_id: str) -> set[str]:
    """The kits holding an event: their scanners checked in one of its tickets, or have it in their
    desired config (revocations). Manifests name no events, so this is where an event belongs."""
    c, d = db.checkins.c, db.devices.c
    with store.engine.connect() as conn:
        kits = {r[0] for r in conn.execute(select(d.kit_id).distinct().select_from(
            db.checkins.join(db.devices, d.id == c.device_id)).where(c.event_id == event_id))}
    for kit_id, _device, cfg in store.config.all_desired():
        revoked = (cfg.data or {}).get("revoked")
        if isinstance(revoked, dict) and event_id in revoked:
            kits.add(kit_id)
    return kits
