"""Venue lighting: venues, zones, scenes, schedules, overrides; a preview ("what is on at T") and a
plan (per zone, what is lit over a day or a week); each controller's desired vs applied timeline.

Every write is compiled for every controller of the venue before it is stored: a schedule that
overlaps another of the same priority is refused (409, naming both), as is a scene or zone another
item still needs. What is stored is then pushed (fleet/venues/delivery.py) to the controllers
whose timeline changed, as their retained config.

The venue page edits a draft of the whole set (venue, zones, scenes, schedules): ``draft`` compiles it
without storing (the compiler's conflict message, the week's windows, what would change on each
controller), ``publish`` stores and pushes it at once, ``undo`` puts back the set before the last
change. ``scene-preview`` shows a scene on the real outputs (a ``scene`` command to each lighting
controller, ``set`` to each agent light) until the timeline next changes, or puts the timeline's back.
"""

from __future__ import annotations

import re
import secrets
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleet.api.schemas import BAD_BODY, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard, require_role
from fleet.auth.scope import visible_venues

from fleet.db import now_ms
from fleet.commands import PublishFailed
from fleet.venues.compiler import CompileError, levels_object, preview
from fleet.venues.delivery import LIGHT_ROLES, VenueLighting
from fleet.venues.diff import timeline_diff
from fleet.venues.week import check_days, week_windows
from fleet.venues.model import Override, Scene, Schedule, Venue, Zone, ZoneLevel
from fleet.venues.store import VenueDocs
from kits.contract import Id

# ops: every venue; venue users: their venues (any other is 404, as if it did not exist).
router = APIRouter(prefix="/api/v1/venues", tags=["venues"], dependencies=guard("ops", "venue"),
                   responses=AUTH_RESPONSES)
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
    by: str = Field(default="api", min_length=1, max_length=63, deprecated=True,
                    description="ignored: the signed-in user is recorded as who set it")

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


class VenueSet(BaseModel):
    """The whole of what a venue's users edit: what a publish stores at once."""

    model_config = ConfigDict(extra="forbid")

    venue: Venue
    zones: list[Zone] = Field(default_factory=list)
    scenes: list[Scene] = Field(default_factory=list)
    schedules: list[Schedule] = Field(default_factory=list)


class ControllerDiff(BaseModel):
    device_id: str
    changed: bool
    windows_added: list[dict[str, Any]] = Field(description="{start, end (ms), scene, priority, text (local time)}")
    windows_removed: list[dict[str, Any]]
    scenes_changed: list[str] = Field(description="scenes shown in both whose levels differ on this controller")
    floor_changed: bool
    new: bool = Field(description="the controller gets this venue's timeline for the first time")
    gone: bool = Field(description="no zone uses the controller any more: it keeps its last timeline")


class DraftOut(BaseModel):
    problem: str | None = Field(description="the compiler's refusal (null: it compiles), e.g. a conflict naming "
                                "both schedules and the overlap in local time")
    conflict: list[str] | None = Field(description="the two schedules of a conflict")
    windows: list[dict[str, Any]] = Field(description="the week's windows, local and UTC, conflicts included")
    diff: list[ControllerDiff] = Field(description="per controller, what a publish would change in the timeline it "
                                       "is given (the next 48 h); empty on a problem")


class PublishOut(WriteOut):
    diff: list[ControllerDiff]


class OutputsOut(BaseModel):
    device_id: str
    role: str
    kit_id: str | None
    online: bool
    channels: list[str] = Field(description="its PWM (or lamp) channels: r, g, b, w")
    dmx: bool = Field(description="it has a DMX line (slots 1..512)")
    used: list[dict[str, Any]] = Field(description="outputs a zone of this venue already has: {zone, kind, channel|slot, count}")
    scene: str | None


class ScenePreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    levels: dict[Id, ZoneLevel] | None = Field(description="zone -> level to show now; null: back to the timeline")
    fade_ms: int = Field(default=0, ge=0, le=3_600_000)
    zones: list[Zone] | None = Field(default=None, description="the draft's zones (default: the stored ones)")


class SentOut(BaseModel):
    device_id: str
    command_id: str
    action: str


# What the routes refuse with, besides a bad request (422). A write is compiled for every controller
# before it is stored (409 when it does not compile), then pushed (503 when it cannot be: it is stored).
_NO_VENUE = {404: "no such venue"}
_NO_ITEM = {404: "no such venue, or no such item at it"}
_WRITE = {409: "refused by the compiler: a conflict, or an item another one still needs (named)",
          503: "stored, not pushed to the controllers: no broker connection, or the publish failed"}


# ---------------------------------------------------------------- helpers

def _docs(lit: VenueLighting, venue_id: str, now: int | None = None) -> VenueDocs:
    docs = lit.docs.load(venue_id, now if now is not None else now_ms())
    if docs is None:
        raise HTTPException(status_code=404, detail=f"no venue {venue_id!r}")
    return docs


def _invalid(loc: tuple, msg: str, value: Any) -> RequestValidationError:
    """A 422 in the shape of every other (FastAPI's list of field errors), for what only the route can check."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg, "input": value}])


def _same_id(kind: str, path_id: str, body_id: str) -> None:
    if path_id != body_id:
        raise _invalid(("body", "id"), f"{kind} id {body_id!r} in the body is not {path_id!r} of the path", body_id)


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


_MS = re.compile(r"-?[0-9]{1,20}")  # ASCII digits: str.isdigit() takes "²", which int() refuses
_MAX_MS = int(datetime(9999, 1, 1, tzinfo=UTC).timestamp() * 1000)  # a plan of up to 14 days still fits


def _when(value: str | None, name: str) -> int:
    """ms since the epoch, or an ISO date-time with an offset; None: now."""
    if value is None:
        return now_ms()
    if _MS.fullmatch(value):
        ms = int(value)
    else:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _invalid(("query", name), f"{name}: ms since the epoch or an ISO date-time, not {value!r}",
                           value) from None
        if t.tzinfo is None:
            raise _invalid(("query", name), f"{name}: {value!r} needs a UTC offset (e.g. Z)", value)
        try:
            ms = int(t.timestamp() * 1000)
        except OverflowError:  # year 1 with a positive offset
            ms = -1
    if not 0 <= ms < _MAX_MS:
        raise _invalid(("query", name), f"{name}: {value!r} is not between 1970 and 9999", value)
    return ms


def _who(request: Request) -> str:
    """The signed-in user (fleet/auth/deps.py current_user): who the venue docs record as changing them."""
    return request.state.user.name


def _controllers_of(request: Request, venue_id: str) -> set[str]:
    """What a venue user may map zones to: the controllers ops gave the venue, and those its zones use."""
    docs = lighting(request).docs.load(venue_id, now_ms())
    return set(docs.controllers()) | set(docs.venue.controllers) if docs else set()


def _check_outputs(request: Request, venue_id: str, zones: list[Zone], loc: tuple = ("body",)) -> None:
    store = request.app.state.store
    # A venue user lights what their venue has (ops give it its controllers): another venue's or a
    # kit's lights are not theirs, and are refused as if they did not exist.
    own = None if request.state.user.role == "ops" else _controllers_of(request, venue_id)
    for zone in zones:
        for i, out in enumerate(zone.outputs):
            ref = store.registry.device_ref(out.controller)
            if ref is None or ref.role not in LIGHT_ROLES or (own is not None and out.controller not in own):
                raise _invalid((*loc, "outputs", i, "controller"), f"zone {zone.id!r}: outputs[{i}].controller: "
                               f"{out.controller!r} is not a registered lighting controller or light", out.controller)


def _check_venue_controllers(request: Request, venue: Venue, stored: Venue | None) -> None:
    """Only ops give a venue its controllers; a venue user's write keeps them as they are."""
    if request.state.user.role == "ops":
        for i, c in enumerate(venue.controllers):
            ref = request.app.state.store.registry.device_ref(c)
            if ref is None or ref.role not in LIGHT_ROLES:
                raise _invalid(("body", "controllers", i), f"controllers[{i}]: {c!r} is not a registered lighting "
                               "controller or light", c)
        return
    if venue.controllers != (stored.controllers if stored else []):
        raise HTTPException(status_code=403, detail="controllers: only ops give a venue its controllers")


# ---------------------------------------------------------------- venues

@router.get("")
def list_venues(request: Request, user: UserDep) -> dict:
    """Every venue (a venue user's own): id, name, zone, how many zones and schedules."""
    lit = lighting(request)
    items = []
    mine = visible_venues(user)
    for venue_id in (v for v in lit.docs.venue_ids() if mine is None or v in mine):
        docs = lit.docs.load(venue_id, now_ms())
        if docs is not None:
            v = docs.venue
            items.append(dict(id=v.id, name=v.name, tz=v.tz, zones=len(docs.zones), schedules=len(docs.schedules),
                              overrides=len(docs.overrides), controllers=docs.controllers()))
    return {"items": items}


@router.put("/{venue_id}", response_model=WriteOut, responses=refusals({**BAD_BODY, **_WRITE}))
def put_venue(venue_id: str, body: Venue, request: Request):
    """Create or replace a venue (time zone, location, opening hours); its controllers are recompiled."""
    _same_id("venue", venue_id, body.id)
    lit = lighting(request)
    docs = lit.docs.load(venue_id, now_ms())
    _check_venue_controllers(request, body, docs.venue if docs else None)
    if docs is not None:
        docs.venue = body
        _compile_or_refuse(lit, docs)
        lit.docs.remember(venue_id, now_ms(), by=_who(request))
    lit.docs.put(venue_id, "venue", venue_id, body.model_dump(mode="json"), now_ms(), by=_who(request))
    return _push(lit, venue_id)


@router.get("/{venue_id}", response_model=VenueOut, responses=refusals(_NO_VENUE))
def get_venue(venue_id: str, request: Request):
    lit = lighting(request)
    docs = _docs(lit, venue_id)
    return VenueOut(venue=docs.venue, zones=docs.zones, scenes=docs.scenes, schedules=docs.schedules,
                    overrides=docs.overrides, controllers=lit.controllers(venue_id, docs))


@router.delete("/{venue_id}", status_code=204, response_class=Response, responses=refusals(_NO_VENUE),
               dependencies=[Depends(require_role("ops"))])
def delete_venue(venue_id: str, request: Request):
    """Forget the venue (its controllers keep the timeline they have until its horizon runs out). ops only."""
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
    lit.docs.remember(venue_id, now_ms(), by=_who(request))
    lit.docs.put(venue_id, kind, item_id, item.model_dump(mode="json"), now_ms(), by=_who(request))
    return _push(lit, venue_id)


def _delete_item(request: Request, venue_id: str, kind: str, item_id: str) -> WriteOut:
    lit = lighting(request)
    docs = _docs(lit, venue_id)
    attr = kind + "s"
    if not any(x.id == item_id for x in getattr(docs, attr)):
        raise HTTPException(status_code=404, detail=f"no {kind} {item_id!r} at venue {venue_id!r}")
    setattr(docs, attr, _replace(getattr(docs, attr), None, item_id))
    _compile_or_refuse(lit, docs)  # e.g. a scene still uses this zone
    lit.docs.remember(venue_id, now_ms(), by=_who(request))
    lit.docs.delete(venue_id, kind, item_id)
    return _push(lit, venue_id)


@router.put("/{venue_id}/zones/{zone_id}", response_model=WriteOut, responses=refusals({**BAD_BODY, **_NO_VENUE, **_WRITE}))
def put_zone(venue_id: str, zone_id: str, body: Zone, request: Request):
    """A zone and the outputs it lights: PWM channels or DMX slots of a lighting controller, or a
    light the kit's agent drives (a BLE lamp or a relay: its channels r, g, b, w)."""
    _check_outputs(request, venue_id, [body])
    return _put_item(request, venue_id, "zone", zone_id, body)


@router.delete("/{venue_id}/zones/{zone_id}", response_model=WriteOut, responses=refusals({**_NO_ITEM, **_WRITE}))
def delete_zone(venue_id: str, zone_id: str, request: Request):
    return _delete_item(request, venue_id, "zone", zone_id)


@router.put("/{venue_id}/scenes/{scene_id}", response_model=WriteOut, responses=refusals({**BAD_BODY, **_NO_VENUE, **_WRITE}))
def put_scene(venue_id: str, scene_id: str, body: Scene, request: Request):
    return _put_item(request, venue_id, "scene", scene_id, body)


@router.delete("/{venue_id}/scenes/{scene_id}", response_model=WriteOut, responses=refusals({**_NO_ITEM, **_WRITE}))
def delete_scene(venue_id: str, scene_id: str, request: Request):
    return _delete_item(request, venue_id, "scene", scene_id)


@router.put("/{venue_id}/schedules/{schedule_id}", response_model=WriteOut, responses=refusals({
    **BAD_BODY, **_NO_VENUE, **_WRITE, 409: "overlaps a schedule of the same priority (both named), or no such scene"}))
def put_schedule(venue_id: str, schedule_id: str, body: Annotated[Schedule, Body()], request: Request):
    """A one-off window, a weekly one, or one from sunrise/sunset ± minutes, in the venue's local time."""
    return _put_item(request, venue_id, "schedule", schedule_id, body)


@router.delete("/{venue_id}/schedules/{schedule_id}", response_model=WriteOut, responses=refusals({**_NO_ITEM, **_WRITE}))
def delete_schedule(venue_id: str, schedule_id: str, request: Request):
    return _delete_item(request, venue_id, "schedule", schedule_id)


# ---------------------------------------------------------------- overrides

@router.post("/{venue_id}/overrides", response_model=OverrideWriteOut, status_code=201,
             responses=refusals({**BAD_BODY, **_NO_VENUE, **_WRITE}))
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
    except ValidationError as exc:  # e.g. a scene and a zone both, or an expiry without a UTC offset
        raise RequestValidationError([{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"],
                                       "input": e.get("input")} for e in exc.errors(include_url=False)]) from None
    if o.expires.timestamp() * 1000 <= now:
        raise _invalid(("body", "expires"), "expires: already past", body.expires)
    docs.overrides = docs.overrides + [o]
    _compile_or_refuse(lit, docs)
    lit.docs.put(venue_id, "override", o.id, o.model_dump(mode="json"), now, by=_who(request),
                 expires_ms=int(o.expires.timestamp() * 1000))
    response.headers["Location"] = f"/api/v1/venues/{venue_id}/overrides/{o.id}"
    return OverrideWriteOut(pushed=_push(lit, venue_id).pushed, override=o)


@router.delete("/{venue_id}/overrides/{override_id}", response_model=WriteOut,
               responses=refusals({404: "no such venue, or no active override of that id at it", **_WRITE}))
def end_override(venue_id: str, override_id: str, request: Request):
    """End an override now (kept, expired, for the record); the schedule resumes."""
    lit = lighting(request)
    now = now_ms()
    docs = _docs(lit, venue_id, now)
    current = next((o for o in docs.overrides if o.id == override_id), None)
    if current is None:
        raise HTTPException(status_code=404, detail=f"no active override {override_id!r} at venue {venue_id!r}")
    ended = current.model_copy(update={"expires": datetime.fromtimestamp(now / 1000, UTC)})
    lit.docs.put(venue_id, "override", override_id, ended.model_dump(mode="json"), now, expires_ms=now,
                 by=_who(request))
    return _push(lit, venue_id)


# ---------------------------------------------------------------- what will be on

@router.get("/{venue_id}/preview", response_model=PreviewOut, responses=refusals(_NO_VENUE))
def get_preview(venue_id: str, request: Request,
                at: Annotated[str | None, Query(description="ms since the epoch or ISO date-time; default now")] = None):
    """What each zone shows at ``at``: schedule < override < safety floor (while open)."""
    t = _when(at, "at")
    docs = _docs(lighting(request), venue_id, t)
    return PreviewOut(at=t, zones=preview(*docs.args(), datetime.fromtimestamp(t / 1000, UTC)))


@router.get("/{venue_id}/plan", response_model=PlanOut, responses=refusals(_NO_VENUE))
def get_plan(venue_id: str, request: Request,
             start: Annotated[str | None, Query(description="ms since the epoch or ISO date-time; default now")] = None,
             hours: Annotated[float, Query(gt=0, le=24 * 14)] = 24.0):
    """Per zone, what is lit from ``start`` for ``hours``: segments of equal level, scene and layer."""
    lit = lighting(request)
    t = _when(start, "start")
    docs = _docs(lit, venue_id, t)
    return PlanOut(start=t, end=t + int(hours * 3600_000), tz=docs.venue.tz, zones=lit.plan(docs, t, hours))


@router.get("/{venue_id}/controllers", response_model=list[ControllerOut], responses=refusals(_NO_VENUE))
def get_controllers(venue_id: str, request: Request):
    """Each controller of the venue: the timeline version desired vs applied, its horizon, its scene."""
    lit = lighting(request)
    return lit.controllers(venue_id, _docs(lit, venue_id))



# ---------------------------------------------------------------- the page's draft: check, publish, undo

def _proposed(lit: VenueLighting, venue_id: str, body: VenueSet, now: int) -> tuple[VenueDocs | None, VenueDocs]:
    """(what is stored, the draft with the stored overrides): the draft must compile with them."""
    current = lit.docs.load(venue_id, now)
    draft = VenueDocs(body.venue, list(body.zones), list(body.scenes), list(body.schedules),
                      list(current.overrides) if current else [])
    return current, draft


def _check_set(request: Request, venue_id: str, body: VenueSet, current: VenueDocs | None) -> None:
    _same_id("venue", venue_id, body.venue.id)
    _check_venue_controllers(request, body.venue, current.venue if current else None)
    _check_outputs(request, venue_id, body.zones, ("body", "zones"))


def _diff(lit: VenueLighting, current: VenueDocs | None, draft: VenueDocs, now: int) -> list[ControllerDiff]:
    """Each controller's timeline now vs after the draft, compiled at the same instant."""
    before = set(current.controllers()) if current else set()
    after = set(draft.controllers())
    out = []
    for c in sorted(before | after):
        old = lit.compile(current, c, now)[0] if c in before else None  # type: ignore[arg-type]
        new = lit.compile(draft, c, now)[0] if c in after else None
        out.append(ControllerDiff(device_id=c, **timeline_diff(old, new, draft.venue.tz)))
    return out


def _check_ahead(docs: VenueDocs) -> None:
    """The next 8 days free of equal-priority overlaps: every weekly conflict shows within them, not
    only those inside the 48 h a controller is given."""
    check_days(docs.venue, docs.schedules, datetime.now(docs.venue.zone).date(), 8)


def _week_start(value: str | None, tz) -> date:
    if value is None:
        today = datetime.now(tz).date()
        return today - timedelta(days=today.weekday())
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise _invalid(("query", "week"), f"week: a local date YYYY-MM-DD, not {value!r}", value) from None


@router.post("/{venue_id}/draft", response_model=DraftOut, responses=refusals({**BAD_BODY}))
def check_draft(venue_id: str, body: VenueSet, request: Request,
                week: Annotated[str | None, Query(description="the planner's first day, local YYYY-MM-DD; "
                                                  "default this week's Monday")] = None):
    """Compile a draft of the whole venue without storing it: the compiler's refusal (a conflict names
    both schedules and the overlap in local time), the week's windows, and what a publish would change."""
    lit = lighting(request)
    now = now_ms()
    current, draft = _proposed(lit, venue_id, body, now)
    _check_set(request, venue_id, body, current)
    first = _week_start(week, body.venue.zone)
    windows = week_windows(body.venue, body.schedules, first)
    try:
        check_days(body.venue, body.schedules, first)  # the week on screen first: the planner outlines it
        lit.check(draft, now)
        _check_ahead(draft)
        return DraftOut(problem=None, conflict=None, windows=windows, diff=_diff(lit, current, draft, now))
    except CompileError as exc:
        return DraftOut(problem=str(exc), conflict=list(getattr(exc, "schedules", ())) or None, windows=windows,
                        diff=[])


@router.post("/{venue_id}/publish", response_model=PublishOut, responses=refusals({**BAD_BODY, **_WRITE}))
def publish_draft(venue_id: str, body: VenueSet, request: Request):
    """Store the draft in place of the venue's set (one transaction) and push it; the set before is
    what ``undo`` puts back. Refused (409) as a single write would be, and then nothing changes."""
    lit = lighting(request)
    now = now_ms()
    current, draft = _proposed(lit, venue_id, body, now)
    _check_set(request, venue_id, body, current)
    _compile_or_refuse(lit, draft)
    try:
        _check_ahead(draft)
    except CompileError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    diff = _diff(lit, current, draft, now)
    lit.docs.replace_set(venue_id, body.model_dump(mode="json"), now, by=_who(request))
    return PublishOut(pushed=_push(lit, venue_id).pushed, diff=diff)


@router.post("/{venue_id}/undo", response_model=PublishOut, responses=refusals({
    **_NO_VENUE, **_WRITE, 409: "nothing to undo, or the set before no longer compiles (named)"}))
def undo_change(venue_id: str, request: Request):
    """Put back the venue, zones, scenes and schedules as they were before the last change, and push
    them (undoing again redoes it). Overrides stay as they are."""
    lit = lighting(request)
    now = now_ms()
    current = _docs(lit, venue_id, now)
    before = lit.docs.last_revision(venue_id)
    if before is None:
        raise HTTPException(status_code=409, detail="nothing to undo: no change since the venue was made")
    try:
        body = VenueSet.model_validate(before)
    except ValidationError as exc:  # a revision stored by an older fleet with a shape this one refuses
        raise HTTPException(status_code=409, detail=f"the set before cannot be read back: {exc}") from None
    draft = VenueDocs(body.venue, list(body.zones), list(body.scenes), list(body.schedules), list(current.overrides))
    _compile_or_refuse(lit, draft)
    diff = _diff(lit, current, draft, now)
    lit.docs.replace_set(venue_id, before, now, by=_who(request))
    return PublishOut(pushed=_push(lit, venue_id).pushed, diff=diff)


# ---------------------------------------------------------------- outputs and a scene on them, live

@router.get("/{venue_id}/outputs", response_model=list[OutputsOut], responses=refusals(_NO_VENUE))
def list_outputs(venue_id: str, request: Request):
    """The controllers a zone of the venue may use (those ops gave it and those its zones use), with
    their outputs and which a zone has already. Ops add one to the venue's ``controllers`` first."""
    lit = lighting(request)
    store = request.app.state.store
    docs = _docs(lit, venue_id)
    refs = store.registry.device_refs()
    ids = set(docs.controllers()) & set(refs)
    out = []
    for device_id in sorted(ids):
        ref = refs[device_id]
        dev = store.devices.get_device(device_id) or {}
        latest = dev.get("latest", {})
        used = [dict(zone=z.id, kind=o.kind, channel=o.channel, slot=o.slot, count=o.count)
                for z in docs.zones for o in z.outputs if o.controller == device_id]
        out.append(OutputsOut(device_id=device_id, role=ref.role, kit_id=ref.kit_id, online=bool(dev.get("online")),
                              channels=["r", "g", "b", "w"], dmx=ref.role == "lighting", used=used,
                              scene=(latest.get("device") or {}).get("scene") or (latest.get("light") or {}).get("scene")))
    return out


def _light_args(levels: dict) -> dict:
    """A levels object as an agent light's ``set`` takes it: a lamp's colour and level, or off."""
    r, g, b, w = (int(levels.get(c, 0)) for c in "rgbw")
    if not any((r, g, b, w)):
        return {"on": False}
    args: dict[str, Any] = {"level": max(r, g, b, w)}
    if r or g or b:
        args["rgb"] = [r, g, b]
    return args


@router.post("/{venue_id}/scene-preview", response_model=list[SentOut], responses=refusals({
    **BAD_BODY, **_NO_VENUE, 503: "no broker connection, or the publish failed"}))
def preview_scene(venue_id: str, body: ScenePreviewIn, request: Request):
    """Show levels on the venue's real outputs now (a scene command; it holds until the timeline next
    changes), or, with ``levels`` null, put back what the timeline shows now."""
    lit = lighting(request)
    now = now_ms()
    docs = _docs(lit, venue_id, now)
    zones = docs.zones if body.zones is None else body.zones
    if body.zones is not None:
        _check_outputs(request, venue_id, body.zones, ("body", "zones"))
    publisher = request.app.state.publisher
    if publisher is None:
        raise HTTPException(status_code=503, detail="this fleet process has no broker connection to publish through")
    refs = request.app.state.store.registry.device_refs()
    sent = []
    for device_id in sorted({o.controller for z in zones for o in z.outputs}):
        role = refs[device_id].role if device_id in refs else None
        if body.levels is not None:
            levels = levels_object(zones, device_id, body.levels)
            action, args = ("scene", {"levels": levels, "fade_ms": body.fade_ms}) if role == "lighting" \
                else ("set", _light_args(levels))
        elif role == "lighting":
            action, args = "scene", _timeline_now(lit, docs, device_id, now)
        else:
            continue  # an agent light follows its timeline again at its next change
        try:
            cmd = publisher.send_command(device_id, action, args, 30, requested_by=_who(request))
        except PublishFailed as exc:
            raise HTTPException(status_code=503, detail=str(exc)) from None
        sent.append(SentOut(device_id=device_id, command_id=cmd["id"], action=action))
    return sent


def _timeline_now(lit: VenueLighting, docs: VenueDocs, controller: str, now: int) -> dict:
    """The scene command that shows what the controller's timeline shows at ``now``."""
    timeline = lit.compile(docs, controller, now)[0]
    t = now // 1000
    live = [w for w in timeline["windows"] if w[0] <= t < w[1]]
    best = max(live, key=lambda w: w[3]) if live else None
    return {"scene": best[2]} if best else {"levels": {}}
