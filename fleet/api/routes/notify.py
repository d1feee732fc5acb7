"""Notification targets and escalation (fleet/notify/), for ops: targets (list, create, change,
delete, a test send), the escalation policy, and the recent sends with their outcome."""

from __future__ import annotations

from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fleet.alerts.notify import NotifyConfig
from fleet.api.routes.alerts import Rule, Severity
from fleet.api.deps import StoreDep
from fleet.api.schemas import BAD_BODY, DB_INT_MAX, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.db import now_ms
from fleet.notify.delivery import Delivery, DeliveryConfig
from fleet.notify.model import Policy, Target, address_problem, scope_problem, trial_payload
from fleet.notify.store import TargetConflict
from kits.contract import Id

router = APIRouter(prefix="/api/v1/notify", tags=["notifications"], dependencies=guard("ops"),
                   responses=AUTH_RESPONSES)

TargetId = Annotated[int, Path(ge=1, le=DB_INT_MAX)]
NOT_FOUND = refusals({404: "no such target"})


class TargetIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: true is not a count of repeats

    name: str = Field(min_length=1, max_length=63, pattern=r"^[^\x00-\x1f]+$", description="what ops call it")
    kind: Literal["webhook", "email"] = "webhook"
    url: str = Field(max_length=500, description="webhook: the http(s) URL the alert is POSTed to as JSON; "
                     "email: mailto:name@example.com (sent through POPKIT_NOTIFY_SMTP_HOST)")
    audience: Literal["ops", "crew", "venue"] = Field(default="ops", description="who reads it; crew and venue "
                                                      "targets name their kits")
    kits: list[Id] = Field(default_factory=list, max_length=1000, description="only these kits' alerts; [] every kit")
    rules: list[Rule] = Field(default_factory=list, description="only these rules' alerts; [] every rule")
    min_severity: Severity = Field(default="warning", description="critical: warnings are not sent here")
    position: int = Field(default=0, ge=0, le=10_000, description="escalation order: lower first (then by id)")
    enabled: bool = True
    repeat_s: float | None = Field(default=None, gt=0, le=7 * 86_400, description="repeat interval here; "
                                   "None: the policy's")
    repeats: int | None = Field(default=None, ge=0, le=100, description="repeats here before the next target; "
                                "None: the policy's")

    @field_validator("url")
    @classmethod
    def _address(cls, v: str, info: ValidationInfo) -> str:
        problem = address_problem(info.data.get("kind", "webhook"), v)
        if problem:
            raise ValueError(problem)
        return v


class TargetOut(TargetIn):
    id: int
    created_ms: int
    updated_ms: int


class PolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # strict: true is not a count of repeats

    grace_s: float = Field(ge=0, le=86_400, description="an alert open and unacknowledged this long goes to the "
                           "first target; one resolved sooner is never sent")
    repeat_s: float = Field(gt=0, le=7 * 86_400, description="then again this often while unacknowledged")
    repeats: int = Field(ge=0, le=100, description="repeats to a target before the alert escalates to the next")


class PolicyOut(PolicyIn):
    saved: bool = Field(description="false: the fleet's settings (POPKIT_ALERT_NOTIFY_*), not yet saved by ops")


class SendOut(BaseModel):
    id: int
    target_id: int
    target: str = Field(description="the target's name when the send was made")
    alert_id: int | None = Field(description="None: a test send")
    kit_id: str | None
    event: Literal["opened", "reminder", "escalated", "resolved", "test"]
    state: Literal["pending", "sent", "failed"] = Field(description="pending: on its way, or waiting for a retry")
    attempts: int
    created_ms: int
    done_ms: int | None
    next_try_ms: int | None = Field(description="pending: when it is tried (again)")
    outcome: str | None = Field(description='"HTTP 200", "SMTP 250", or the last error')
    reason: Literal["timeout", "connection", "http_4xx", "http_5xx", "smtp_4xx", "smtp_5xx", "other"] | None


class SendPage(BaseModel):
    items: list[SendOut]
    next_cursor: int | None


def _default_policy(request: Request) -> Policy:
    return NotifyConfig.from_settings(request.app.state.settings).policy


def _check(body: TargetIn, store) -> dict:
    problem = scope_problem(body.audience, body.kits)
    if problem:
        raise HTTPException(status_code=422, detail=f"kits: {problem}")
    known = set(store.registry.kit_infos())
    unknown = sorted(set(body.kits) - known)
    if unknown:
        raise HTTPException(status_code=422, detail=f"kits: no kit {', '.join(unknown)}")
    return body.model_dump()


def _out(t: Target) -> dict:
    return dict(id=t.id, name=t.name, kind=t.kind, url=t.url, audience=t.audience, kits=list(t.kits),
                rules=list(t.rules), min_severity=t.min_severity, position=t.position, enabled=t.enabled,
                repeat_s=t.repeat_s, repeats=t.repeats, created_ms=t.created_ms, updated_ms=t.updated_ms)


@router.get("/targets", response_model=list[TargetOut])
def list_targets(store: StoreDep):
    """Every target, in escalation order."""
    return [_out(t) for t in store.notify.targets()]


@router.post("/targets", response_model=TargetOut, status_code=201, responses=refusals({
    **BAD_BODY, 409: "a target of that name exists", 422: "a bad URL, an unknown kit, a crew or venue target "
    "without kits"}))
def create_target(body: TargetIn, store: StoreDep):
    """Add a target."""
    fields = _check(body, store)
    try:
        return _out(store.notify.add_target(fields))
    except TargetConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc


@router.get("/targets/{target_id}", response_model=TargetOut, responses=NOT_FOUND)
def get_target(target_id: TargetId, store: StoreDep):
    t = store.notify.target(target_id)
    if t is None:
        raise HTTPException(status_code=404, detail=f"no target {target_id}")
    return _out(t)


@router.put("/targets/{target_id}", response_model=TargetOut, responses=refusals({
    **BAD_BODY, 404: "no such target", 409: "another target has that name", 422: "as for a new target"}))
def put_target(target_id: TargetId, body: TargetIn, store: StoreDep):
    """Change a target: alerts already escalating go on from their current target."""
    fields = _check(body, store)
    try:
        t = store.notify.update_target(target_id, fields)
    except TargetConflict as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    if t is None:
        raise HTTPException(status_code=404, detail=f"no target {target_id}")
    return _out(t)


@router.delete("/targets/{target_id}", status_code=204, responses=NOT_FOUND)
def delete_target(target_id: TargetId, store: StoreDep):
    """Remove a target; its sends stay listed."""
    if not store.notify.delete_target(target_id):
        raise HTTPException(status_code=404, detail=f"no target {target_id}")
    return Response(status_code=204)


@router.post("/targets/{target_id}/test", response_model=SendOut, responses=NOT_FOUND)
async def send_test_notification(target_id: TargetId, request: Request, store: StoreDep, me: UserDep):
    """Send a test notification now and answer with its first attempt's outcome (a failure that a
    retry may fix is retried later, as any send)."""
    t = store.notify.target(target_id)
    if t is None:
        raise HTTPException(status_code=404, detail=f"no target {target_id}")
    delivery = Delivery(store, DeliveryConfig.from_settings(request.app.state.settings))

    def send_now() -> dict:
        now = now_ms()
        send_id = store.notify.queue(dict(target_id=t.id, target_name=t.name, alert_id=None, kit_id=None,
                                          event="test", body=trial_payload(t, now, me.name), created_ms=now))
        send = store.notify.pending_send(send_id)
        if send is not None and store.notify.claim(send, now, delivery.cfg.lease_ms):
            delivery.attempt(send, t)
        return store.notify.send(send_id)

    return await to_thread.run_sync(send_now)


@router.get("/policy", response_model=PolicyOut)
def get_policy(request: Request, store: StoreDep):
    """The escalation policy: grace period, repeat interval, repeats before the next target."""
    default = _default_policy(request)
    p = store.notify.policy(default)
    return dict(grace_s=p.grace_s, repeat_s=p.repeat_s, repeats=p.repeats, saved=p is not default)


@router.put("/policy", response_model=PolicyOut, responses=refusals(BAD_BODY))
def put_policy(body: PolicyIn, store: StoreDep, me: UserDep):
    """Save the escalation policy (targets may set their own repeat interval and repeats)."""
    p = store.notify.set_policy(Policy(grace_s=body.grace_s, repeat_s=body.repeat_s, repeats=body.repeats), me.name)
    return dict(grace_s=p.grace_s, repeat_s=p.repeat_s, repeats=p.repeats, saved=True)


@router.get("/sends", response_model=SendPage)
def list_sends(store: StoreDep, target: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
               alert: Annotated[int | None, Query(ge=1, le=DB_INT_MAX)] = None,
               limit: Annotated[int, Query(ge=1, le=500)] = 50,
               cursor: Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description="next_cursor of the last page")] = None):
    """Sends, newest first, with their outcome."""
    items = store.notify.sends(limit=limit, target_id=target, alert_id=alert, before_id=cursor)
    return dict(items=items, next_cursor=items[-1]["id"] if len(items) == limit else None)
