"""Venue lighting: venues, zones, scenes, schedules, overrides; a preview ("what is on at T") and a
plan (per zone, what is lit over a day or a week); each controller's desired vs applied timeline.

Every write is compiled for every controller of the venue before it is stored: a schedule that
overlaps another of the same priority is refused (409, naming both), as is a scene or zone another
item still needs. What is stored is then pushed (fleet/venues/delivery.py) to the controllers
whose timeline changed, as their retained config.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fleet.store import now_ms
from fleet.venues.compiler import CompileError, preview
from fleet.venues.delivery import LIGHT_ROLES, VenueLighting
from fleet.venues.model import Override, Scene, Schedule, Venue, Zone, ZoneLevel
from fleet.venues.store import VenueDocs
from kits.contract import Id

router = APIRouter(prefix="/api/v1/venues", tags=["venues"])
UTC = timezone.utc


def lighting(request: Request) -> VenueLighting:
    return request.app.state.venue_lighting


class PushOut(BaseModel):
    device_id: str
    version: int | None = Field(description="the new desired version; null: its timeline did not change")
    horizon_h: float = Field(description="how far ahead the pushed timeline reaches (shorter if 48 h did not fit)")
    bytes: int


class ControllerOut(BaseModel):
    device_id: str
    kit_id: str | None
    registered: bool
    online: bool
    desired_version: int | None
    applied_version: int | None
    in_sync: bool = Field(description="the controller reports the desired version applied")
    pushed_ms: int | None
    horizon_end_ms: int | None = Field(description="the pushed timeline runs out then; re-pushed before")
    scene: str | None = Field(description="the scene the controller last reported showing")


class VenueOut(BaseModel):
    venue: Venue
    zones: list[Zone]
    scenes: list[Scene]
    schedules: list[Schedule]
    overrides: list[Override] = Field(description="active and upcoming manual overrides")
    controllers: list[ControllerOut]


class WriteOut(BaseModel):
    ok: bool = True
    pushed: list[PushOut] = Field(description="controllers whose timeline was compiled (and pushed if changed)")


class OverrideWriteOut(WriteOut):
    override: Override


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scene: Id | None = Field(default=None, description="a whole scene instead of the schedule's")
    zone: Id | None = Field(default=None, description="or one zone ...")
    level: ZoneLevel | None = Field(default=None, description="... at this level (and colour)")
    fade_ms: int = Field(default=0, ge=0, le=3_600_000)
    minutes: float | None = Field(default=None, gt=0, le=7 * 24 * 60, description="how long, from now")
    expires: datetime | None = Field(default=None, description="or until when (with a UTC offset)")
    by: str = Field(default="api", min_length=1, max_length=63)

    @model_validator(mode="after")
    def _one_end(self) -> "OverrideIn":
        if (self.minutes is None) == (self.expires is None):
            raise ValueError("minutes: give minutes or expires, one of them")
        return self


class PreviewOut(BaseModel):
    at: int = Field(description="ms since the epoch")
    zones: dict[str, dict[str, Any]] = Field(description="zone -> {level, rgb, scene, layer}; layer: schedule, "
                                             "override, floor (raised to the safety floor) or off")


class SegmentOut(BaseModel):
    start: int
    end: int
    level: int
    rgb: list[int] | None
    scene: str | None
    layer: str


class ZonePlanOut(BaseModel):
    id: str
    name: str
    safety: bool
    segments: list[SegmentOut]


class PlanOut(BaseModel):
    start: int
    end: int
    tz: str
    zones: list[ZonePlanOut]


# ---------------------------------------------------------------- helpers

def _docs(lit: VenueLighting, venue_id: str, now: int | None = None) -> VenueDocs:
    docs = lit.docs.load(venue_id, now if now is not None else now_ms())
    if docs is None:
        raise HTTPException(status_code=404, detail=f"no venue {venue_id!r}")
    return docs


def _same_id(kind: str, path_id: str, body_id: str) -> None:
    if path_id != body_id:
        raise HTTPException(status_code=422, detail=f"{kind} id {body_id!r} in the body is not {path_id!r} of the path")


def _compile_or_refuse(lit: VenueLighting, docs: VenueDocs) -> None:
    try:
        lit.check(docs)
    except CompileError as exc:  # a ScheduleConflict too: both name what is in the way
        raise HTTPException(status_code=409, detail=str(exc)) from None


def _replace(items: list, item, item_id: str | None = None) -> list:
    """``items`` with ``item`` in place of the one with its id (or appended); None removes ``item_id``."""
    key = item.id if item is not None else item_id
    out = [x for x in items if x.id != key]
    if item is not None:
        out.append(item)
    return out


def _push(lit: VenueLighting, venue_id: str) -> WriteOut:
    try:
        pushed = lit.push(venue_id)
    except CompileError as exc:  # checked before storing: only a race gets here
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except RuntimeError as exc:
        raise HTTPException(status_code=503, detail=f"stored, not pushed: {exc}") from None
    return WriteOut(pushed=[PushOut(**p.__dict__) for p in pushed])


def _when(value: str | None, name: str) -> int:
    """ms since the epoch, or an ISO date-time with an offset; None: now."""
    if value is None:
        return now_ms()
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(status_code=422, detail=f"{name}: ms since the epoch or an ISO date-time, not {value!r}") from None
    if t.tzinfo is None:
        raise HTTPException(status_code=422, detail=f"{name}: {value!r} needs a UTC offset (e.g. Z)")
    return int(t.timestamp() * 1000)


# ---------------------------------------------------------------- venues

@router.get("")
def list_venues(request: Request) -> dict:
    """Every venue: id, name, zone, how many zones and schedules."""
    lit = lighting(request)
    items = []
    for venue_id in lit.docs.venue_ids():
        docs = lit.docs.load(venue_id, now_ms())
        if docs is not None:
            v = docs.venue
            items.append(dict(id=v.id, name=v.name, tz=v.tz, zones=len(docs.zones), schedules=len(docs.schedules),
                              overrides=len(docs.overrides), controllers=docs.controllers()))
    return {"items": items}


@router.put("/{venue_id}", response_model=WriteOut)
def put_venue(venue_id: str, body: Venue, request: Request):
    """Create or replace a venue (time zone, location, opening hours); its controllers are recompiled."""
    _same_id("venue", venue_id, body.id)
    lit = lighting(request)
    docs = lit.docs.load(venue_id, now_ms())
    if docs is not None:
        docs.venue = body
        _compile_or_refuse(lit, docs)
    lit.docs.put(venue_id, "venue", venue_id, body.model_dump(mode="json"), now_ms())
    return _push(lit, venue_id)


@router.get("/{venue_id}", response_model=VenueOut)
def get_venue(venue_id: str, request: Request):
    lit = lighting(request)
    docs = _docs(lit, venue_id)
    return VenueOut(venue=docs.venue, zones=docs.zones, scenes=docs.scenes, schedules=docs.schedules,
                    overrides=docs.overrides, controllers=lit.controllers(venue_id, docs))


@router.delete("/{venue_id}", status_code=204)
def delete_venue(venue_id: str, request: Request):
    """Forget the venue (its controllers keep the timeline they have until its horizon runs out)."""
    if not lighting(request).docs.delete_venue(venue_id):
        raise HTTPException(status_code=404, detail=f"no venue {venue_id!r}")
    return Response(status_code=204)


# ---------------------------------------------------------------- zones, scenes, schedules

def _put_item(request: Request, venue_id: str, kind: str, item_id: str, item) -> WriteOut:
    _same_id(kind, item_id, item.id)
    lit = lighting(request)
    docs = _docs(lit, venue_id)
    attr = kind + "s"
    setattr(docs, attr, _replace(getattr(docs, attr), item))
    _compile_or_refuse(lit, docs)
    lit.docs.put(venue_id, kind, item_id, item.model_dump(mode="json"), now_ms())
    return _push(lit, venue_id)


def _delete_item(request: Request, venue_id: str, kind: str, item_id: str) -> WriteOut:
    lit = lighting(request)
    docs = _docs(lit, venue_id)
    attr = kind + "s"
    if not any(x.id == item_id for x in getattr(docs, attr)):
        raise HTTPException(status_code=404, detail=f"no {kind} {item_id!r} at venue {venue_id!r}")
    setattr(docs, attr, _replace(getattr(docs, attr), None, item_id))
    _compile_or_refuse(lit, docs)  # e.g. a scene still uses this zone
    lit.docs.delete(venue_id, kind, item_id)
    return _push(lit, venue_id)


@router.put("/{venue_id}/zones/{zone_id}", response_model=WriteOut)
def put_zone(venue_id: str, zone_id: str, body: Zone, request: Request):
    """A zone and the outputs it lights: PWM channels or DMX slots of a lighting controller, or a
    light the kit's agent drives (a BLE lamp or a relay: its channels r, g, b, w)."""
    store = request.app.state.store
    for i, out in enumerate(body.outputs):
        ref = store.device_ref(out.controller)
        if ref is None or ref.role not in LIGHT_ROLES:
            raise HTTPException(status_code=422, detail=f"outputs[{i}].controller: {out.controller!r} is not a "
                                f"registered lighting controller or light")
    return _put_item(request, venue_id, "zone", zone_id, body)


@router.delete("/{venue_id}/zones/{zone_id}", response_model=WriteOut)
def delete_zone(venue_id: str, zone_id: str, request: Request):
    return _delete_item(request, venue_id, "zone", zone_id)


@router.put("/{venue_id}/scenes/{scene_id}", response_model=WriteOut)
def put_scene(venue_id: str, scene_id: str, body: Scene, request: Request):
    return _put_item(request, venue_id, "scene", scene_id, body)


@router.delete("/{venue_id}/scenes/{scene_id}", response_model=WriteOut)
def delete_scene(venue_id: str, scene_id: str, request: Request):
    return _delete_item(request, venue_id, "scene", scene_id)


@router.put("/{venue_id}/schedules/{schedule_id}", response_model=WriteOut,
            responses={409: {"description": "overlaps a schedule of the same priority (both named)"}})
def put_schedule(venue_id: str, schedule_id: str, body: Annotated[Schedule, Body()], request: Request):
    """A one-off window, a weekly one, or one from sunrise/sunset ± minutes, in the venue's local time."""
    return _put_item(request, venue_id, "schedule", schedule_id, body)


@router.delete("/{venue_id}/schedules/{schedule_id}", response_model=WriteOut)
def delete_schedule(venue_id: str, schedule_id: str, request: Request):
    return _delete_item(request, venue_id, "schedule", schedule_id)


# ---------------------------------------------------------------- overrides

@router.post("/{venue_id}/overrides", response_model=OverrideWriteOut, status_code=201)
def post_override(venue_id: str, body: OverrideIn, request: Request, response: Response):
    """A manual override above every schedule until it expires (then the schedule resumes by itself,
    on the controller's own clock). The safety floor still holds."""
    lit = lighting(request)
    now = now_ms()
    docs = _docs(lit, venue_id, now)
    expires = body.expires or datetime.fromtimestamp(now / 1000, UTC) + timedelta(minutes=body.minutes or 0)
    try:
        o = Override(id="o-" + secrets.token_hex(4), scene=body.scene, zone=body.zone, level=body.level,
                     fade_ms=body.fade_ms, expires=expires)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    if o.expires.timestamp() * 1000 <= now:
        raise HTTPException(status_code=422, detail="expires: already past")
    docs.overrides = docs.overrides + [o]
    _compile_or_refuse(lit, docs)
    lit.docs.put(venue_id, "override", o.id, o.model_dump(mode="json"), now, by=body.by,
                 expires_ms=int(o.expires.timestamp() * 1000))
    response.headers["Location"] = f"/api/v1/venues/{venue_id}/overrides/{o.id}"
    return OverrideWriteOut(pushed=_push(lit, venue_id).pushed, override=o)


@router.delete("/{venue_id}/overrides/{override_id}", response_model=WriteOut)
def end_override(venue_id: str, override_id: str, request: Request):
    """End an override now (kept, expired, for the record); the schedule resumes."""
    lit = lighting(request)
    now = now_ms()
    docs = _docs(lit, venue_id, now)
    current = next((o for o in docs.overrides if o.id == override_id), None)
    if current is None:
        raise HTTPException(status_code=404, detail=f"no active override {override_id!r} at venue {venue_id!r}")
    ended = current.model_copy(update={"expires": datetime.fromtimestamp(now / 1000, UTC)})
    lit.docs.put(venue_id, "override", override_id, ended.model_dump(mode="json"), now, expires_ms=now)
    return _push(lit, venue_id)


# ---------------------------------------------------------------- what will be on

@router.get("/{venue_id}/preview", response_model=PreviewOut)
def get_preview(venue_id: str, request: Request,
                at: Annotated[str | None, Query(description="ms since the epoch or ISO date-time; default now")] = None):
    """What each zone shows at ``at``: schedule < override < safety floor (while open)."""
    t = _when(at, "at")
    docs = _docs(lighting(request), venue_id, t)
    return PreviewOut(at=t, zones=preview(*docs.args(), datetime.fromtimestamp(t / 1000, UTC)))


@router.get("/{venue_id}/plan", response_model=PlanOut)
def get_plan(venue_id: str, request: Request,
             start: Annotated[str | None, Query(description="ms since the epoch or ISO date-time; default now")] = None,
             hours: Annotated[float, Query(gt=0, le=24 * 14)] = 24.0):
    """Per zone, what is lit from ``start`` for ``hours``: segments of equal level, scene and layer."""
    lit = lighting(request)
    t = _when(start, "start")
    docs = _docs(lit, venue_id, t)
    return PlanOut(start=t, end=t + int(hours * 3600_000), tz=docs.venue.tz, zones=lit.plan(docs, t, hours))


@router.get("/{venue_id}/controllers", response_model=list[ControllerOut])
def get_controllers(venue_id: str, request: Request):
    """Each controller of the venue: the timeline version desired vs applied, its horizon, its scene."""
    lit = lighting(request)
    return lit.controllers(venue_id, _docs(lit, venue_id))

