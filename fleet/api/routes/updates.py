"""Field updates (fleet/updates/): releases and rollouts for ops; each kit's update state and its
crew's hold for crew and ops.

Only ops upload or retire a release and start, pause, resume or abort a rollout; every such change,
and every hold, lands in the audit log (fleet/auth/audit.py records each change made through the API).
What waits is shown with why, as of now: in show until when, held by whom, the rate limit, or the
group before it.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request
from sqlalchemy import select

from fleet import db
from fleet.api.deps import StoreDep
from fleet.api.routes import bundle as bundle_routes
from fleet.api.schemas import BAD_BODY, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.db import now_ms
from fleet.updates import bundle
from fleet.updates.delivery import UpdateDelivery
from fleet.updates.model import NOT_STARTED, Release, Rollout, Target, kit_wait, parse_groups
from fleet.updates.schemas import (RELEASE_ID, HoldIn, HoldOut, KitUpdatesOut, LiftOut, PauseIn, ReleaseIn,
                                   ReleaseOut, RolloutIn, RolloutListItem, RolloutOut)
from fleet.updates.store import UpdateConflict
from kits.release import BundleError, parse_manifest

ops = APIRouter(prefix="/api/v1", tags=["updates"], dependencies=guard("ops"), responses=AUTH_RESPONSES)
kits = APIRouter(prefix="/api/v1/kits/{kit_id}/updates", tags=["updates"], dependencies=guard("ops", "crew"),
                 responses=AUTH_RESPONSES)
# The bundle for the kits' agents (fleet/api/routes/bundle.py): authorised by its own token, not a user's.
agents = APIRouter()
agents.routes.extend(bundle_routes.routes)
routers = (ops, kits, agents)

ReleaseId = Annotated[str, Path(pattern=RELEASE_ID, max_length=40)]
RolloutId = Annotated[int, Path(ge=1, le=2**53)]
_NO_RELEASE = {404: "no such release"}
_NO_ROLLOUT = {404: "no such rollout"}


def delivery(request: Request) -> UpdateDelivery:
    return request.app.state.updates


def _release_out(store, release: Release) -> dict:
    m = release.manifest
    return dict(id=release.id, role=release.role, version=release.version, fw=release.fw,
                mpy_abi=m.get("mpy_abi"), key_id=release.key_id, size=release.size,
                manifest_sha256=store.updates.manifest_sha256(release.id) or "", files=m.get("files", []),
                created_ms=release.created_ms, created_by=release.by, retired_ms=release.retired_ms)


def _summary(r: Rollout) -> dict:
    return dict(id=r.id, release=r.release, role=r.role, kits=list(r.target.kits), devices=list(r.target.devices),
                groups=list(r.groups), success_threshold=r.success_threshold, error_threshold=r.error_threshold,
                rate_per_min=r.rate_per_min, downgrade=r.downgrade, state=r.state, pause_reason=r.pause_reason, created_ms=r.created_ms,
                created_by=r.created_by, updated_ms=r.updated_ms)


def _rollout_out(request: Request, r: Rollout) -> dict:
    plan, updates = delivery(request).plan(r)
    return dict(_summary(r), active_group=None if plan.active_group is None else plan.active_group + 1,
                progress=[dict(group=g.index + 1, spec=g.spec, size=g.size, committed=g.committed, failed=g.failed,
                               in_flight=g.in_flight, not_started=g.not_started, complete=g.complete)
                          for g in plan.groups],
                device_updates=[dict(device_id=u.device, kit_id=u.kit, group=u.group + 1, state=u.state,
                                     reason=plan.waits.get(u.device, u.reason) if u.state in NOT_STARTED else u.reason,
                                     offered_ms=u.offered_ms, updated_ms=u.updated_ms) for u in updates])


def _rollout_or_404(store, rollout_id: int) -> Rollout:
    r = store.updates.rollout(rollout_id)
    if r is None:
        raise HTTPException(status_code=404, detail=f"no rollout {rollout_id}")
    return r


def _b64(path: str, text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(status_code=422, detail=f"files/{path}: not base64") from None


# ---------------------------------------------------------------- releases (ops)

@ops.post("/releases", status_code=201, response_model=ReleaseOut, responses=refusals({
    **BAD_BODY, 409: "a release of that role and version exists, or this fleet has no release public key",
    422: "the bundle is refused: a bad signature, another release key, a file missing, extra or not as "
         "signed (the reason is given)"}))
def upload_release(body: ReleaseIn, request: Request, store: StoreDep, user: UserDep):
    """Upload a bundle `popkit release build` made. Its signature is checked with the release public key
    (POPKIT_RELEASE_PUBKEY), then every file against the signed manifest; a refused bundle is not kept."""
    settings = request.app.state.settings
    try:
        key = bundle.release_key(settings.release_pubkey)
    except bundle.NoReleaseKey as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    files = {p: _b64(p, text) for p, text in body.files.items()}
    try:
        name = parse_manifest(body.manifest.encode()).name
        # Before anything is written: the bundle kept for a release must stay the one it was made from.
        if store.updates.release(name) is not None:
            raise HTTPException(status_code=409, detail=f"release {name} exists: give the new build a new version")
        manifest, digest = bundle.accept(FilePath(settings.release_dir), body.manifest.encode(),
                                         bytes.fromhex(body.sig), files, key)
    except BundleError as exc:
        raise HTTPException(status_code=422, detail=f"bundle refused: {exc.reason}") from None
    release = Release(manifest.role, manifest.version, manifest.fw, manifest.model_dump(mode="json"),
                      manifest.key_id, manifest.total_size, now_ms(), by=user.name)
    try:
        store.updates.add_release(release, digest)
    except UpdateConflict as exc:  # the same version uploaded twice at once: the first one's row stands
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return _release_out(store, store.updates.release(release.id))


@ops.get("/releases", response_model=list[ReleaseOut])
def list_releases(store: StoreDep, retired: Annotated[bool, Query(description="include retired releases")] = True):
    """Every release, newest first."""
    return [_release_out(store, r) for r in store.updates.releases() if retired or r.retired_ms is None]


@ops.get("/releases/{release_id}", response_model=ReleaseOut, responses=refusals(_NO_RELEASE))
def get_release(release_id: ReleaseId, store: StoreDep):
    release = store.updates.release(release_id)
    if release is None:
        raise HTTPException(status_code=404, detail=f"no release {release_id}")
    return _release_out(store, release)


@ops.post("/releases/{release_id}/retire", response_model=ReleaseOut, responses=refusals({
    **_NO_RELEASE, 409: "a running or paused rollout uses it"}))
def retire_release(release_id: ReleaseId, store: StoreDep, user: UserDep):
    """No new rollout may use it (devices that run it keep it)."""
    try:
        return _release_out(store, store.updates.retire(release_id, user.name))
    except KeyError:
        raise HTTPException(status_code=404, detail=f"no release {release_id}") from None
    except UpdateConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None


# ---------------------------------------------------------------- rollouts (ops)

@ops.post("/rollouts", status_code=201, response_model=RolloutOut, responses=refusals({
    **BAD_BODY, 404: "no such release", 409: "the release is retired, no device matches, or a device is in "
                                             "another rollout not yet over"}))
def create_rollout(body: RolloutIn, request: Request, store: StoreDep, user: UserDep):
    """Roll a release out to its role's devices (narrowed to ``kits`` and ``devices``), group by group:
    the canary first, the next group once ``success_threshold`` of the one before committed. It pauses
    by itself when a group's failures reach ``error_threshold``; no kit is offered it during its show
    or while its crew holds it."""
    release = store.updates.release(body.release)
    if release is None:
        raise HTTPException(status_code=404, detail=f"no release {body.release}")
    try:
        rollout = delivery(request).create(release, Target(tuple(body.kits), tuple(body.devices)),
                                           parse_groups(body.groups), body.success_threshold, body.error_threshold,
                                           body.rate_per_min, user.name, downgrade=body.downgrade)
    except UpdateConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    return _rollout_out(request, rollout)


@ops.get("/rollouts", response_model=list[RolloutListItem])
def list_rollouts(store: StoreDep, state: Annotated[Literal["running", "paused", "aborted", "done"] | None,
                                                    Query()] = None):
    """Every rollout, newest first, with its devices counted by where their update is."""
    totals = store.updates.totals()
    empty = dict(size=0, committed=0, failed=0, in_flight=0, not_started=0)
    return [dict(_summary(r), totals=totals.get(r.id, empty)) for r in store.updates.rollouts((state,) if state else None)]


@ops.get("/rollouts/{rollout_id}", response_model=RolloutOut, responses=refusals(_NO_ROLLOUT))
def get_rollout(rollout_id: RolloutId, request: Request, store: StoreDep):
    """The rollout with its progress per group and every device's state, and why each waiting one waits."""
    return _rollout_out(request, _rollout_or_404(store, rollout_id))


def _move(request: Request, store, rollout_id: int, state: str, by: str, reason: str | None,
          only_from: tuple[str, ...]) -> dict:
    current = _rollout_or_404(store, rollout_id)
    moved = store.updates.set_state(rollout_id, state, by, reason, only_from=only_from)
    if moved is None:
        raise HTTPException(status_code=409, detail=f"rollout {rollout_id} is {current.state}: it cannot be "
                                                    f"{'resumed' if state == 'running' else state}")
    return _rollout_out(request, moved)


_MOVE = refusals({**BAD_BODY, **_NO_ROLLOUT, 409: "the rollout is not in a state this applies to"})


@ops.post("/rollouts/{rollout_id}/pause", response_model=RolloutOut, responses=_MOVE)
def pause_rollout(rollout_id: RolloutId, request: Request, store: StoreDep, user: UserDep,
                  body: Annotated[PauseIn | None, Body()] = None):
    """Offer no more devices (those mid-update finish theirs)."""
    reason = f"by {user.name}" + (f": {body.reason}" if body and body.reason else "")
    return _move(request, store, rollout_id, "paused", user.name, reason, ("running",))


@ops.post("/rollouts/{rollout_id}/resume", response_model=RolloutOut, responses=_MOVE)
def resume_rollout(rollout_id: RolloutId, request: Request, store: StoreDep, user: UserDep):
    """Go on offering: the failures seen so far are acknowledged, so only a new one pauses it again."""
    return _move(request, store, rollout_id, "running", user.name, None, ("paused",))


@ops.post("/rollouts/{rollout_id}/abort", response_model=RolloutOut, responses=_MOVE)
def abort_rollout(rollout_id: RolloutId, request: Request, store: StoreDep, user: UserDep):
    """Stop for good: no device not yet offered will be (those mid-update finish theirs, or roll back)."""
    return _move(request, store, rollout_id, "aborted", user.name, f"by {user.name}", ("running", "paused"))


# ---------------------------------------------------------------- a kit's updates (crew and ops)

def _kit_or_404(store, kit_id: str) -> None:
    with store.engine.connect() as conn:
        if conn.execute(select(db.kits.c.id).where(db.kits.c.id == kit_id)).first() is None:
            raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")


@kits.get("", response_model=KitUpdatesOut, responses=refusals({404: "no such kit"}))
def kit_updates(kit_id: str, store: StoreDep):
    """Where each of the kit's devices is in its latest rollout, the crew's hold, and why no device of
    the kit would be offered an update now (a hold, or its show)."""
    _kit_or_404(store, kit_id)
    window = store.updates.windows(store.registry.kit_infos(kit_id)).get(kit_id)
    hold = store.updates.holds().get(kit_id)
    return dict(kit_id=kit_id, hold=hold, waits=kit_wait(window, now_ms()),
                devices=[dict(device_id=u.device, kit_id=u.kit, group=u.group + 1, state=u.state, reason=u.reason,
                              offered_ms=u.offered_ms, updated_ms=u.updated_ms, rollout=u.rollout, release=release)
                         for u, release in store.updates.kit_updates(kit_id)])


@kits.post("/hold", response_model=HoldOut, responses=refusals({**BAD_BODY, 404: "no such kit"}))
def hold_kit(kit_id: str, store: StoreDep, user: UserDep, body: Annotated[HoldIn | None, Body()] = None):
    """Hold updates for the kit: no device of it is offered one until the hold is lifted (a device
    mid-update finishes its own)."""
    _kit_or_404(store, kit_id)
    return store.updates.hold(kit_id, user.name, body.reason if body else None)


@kits.delete("/hold", response_model=LiftOut, responses=refusals({404: "no such kit"}))
def lift_hold(kit_id: str, store: StoreDep):
    _kit_or_404(store, kit_id)
    return dict(kit_id=kit_id, lifted=store.updates.lift_hold(kit_id))
