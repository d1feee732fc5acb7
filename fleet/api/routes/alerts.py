"""Alerts (fleet/alerts/rules.py): list with filters and keyset pagination, one with its history,
acknowledge and resolve, one at a time or many at once (the ops page's bulk acknowledge)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet.alerts import RULES
from fleet.api.deps import StoreDep
from fleet.api.schemas import BAD_BODY, DB_INT_MAX
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import sees_kit, visible_kits

router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)

Rule = Literal["low_soc", "forecast_short", "device_offline", "paper_out", "bms_protection", "scanner_errors",
               "kit_not_ready", "config_not_applied", "clock_unset", "clock_drift", "orders_not_uploaded", "double_entry"]
assert set(Rule.__args__) == set(RULES)  # noqa: S101 - the API names every rule the evaluator has
Severity = Literal["warning", "critical"]
AlertState = Literal["open", "acknowledged", "resolved"]


class AlertOut(BaseModel):
    id: int
    subject: str = Field(description="the device (or, for kit rules, the kit) the alert is about")
    kit_id: str
    rule: Rule
    severity: Severity
    state: AlertState
    first_seen_ms: int = Field(description="when the rule started firing (opened), ms since the epoch")
    last_seen_ms: int = Field(description="the last evaluation that found it firing")
    count: int = Field(description="distinct observations while it fired (a new low reading counts, the same one seen again does not)")
    message: str
    details: dict[str, Any] = Field(description="the facts behind it, by rule (soc, margin_min, last_seen_ms, ...)")
    acknowledged_by: str | None = None
    acknowledged_ms: int | None = None
    resolved_ms: int | None = None
    resolved_by: str | None = Field(default=None, description='"auto" when it went back to normal by itself, else who')
    last_notified_ms: int | None = Field(default=None, description="last webhook attempt")
    notify_count: int = Field(description="webhook notifications delivered")


class AlertEventOut(BaseModel):
    ts: int
    what: Literal["opened", "updated", "acknowledged", "resolved", "notified", "notify_failed"]
    by: str | None = Field(default=None, description='"auto", "webhook" or a person')
    detail: str | None = None


class AlertDetailOut(AlertOut):
    history: list[AlertEventOut] = Field(description="what happened to it, oldest first")


class AlertPage(BaseModel):
    items: list[AlertOut] = Field(description="newest first")
    next_cursor: int | None = Field(description="pass as ?cursor= for the next page; null when there is no more")


class AlertAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str | None = Field(default=None, min_length=1, max_length=63, deprecated=True,
                           description="ignored: the signed-in user is who acknowledges or resolves it")
    note: str | None = Field(default=None, max_length=500)

    @field_validator("by")
    @classmethod
    def _not_auto(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("by must name someone")
        if v == "auto":
            raise ValueError('"auto" is reserved for alerts that resolve by themselves')
        return v


class BulkAcknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[Annotated[int, Field(ge=1, le=DB_INT_MAX)]] = Field(min_length=1, max_length=500,
                                                                   description="the alerts to acknowledge")
    note: str | None = Field(default=None, max_length=500)


class BulkOutcome(BaseModel):
    id: int
    outcome: Literal["done", "already", "resolved", "missing"] = Field(
        description='"done": acknowledged now; "already": acknowledged before; "resolved": closed, '
                    'nothing to acknowledge; "missing": no such alert (or not one of your kits)')


class BulkAcknowledgeOut(BaseModel):
    items: list[BulkOutcome] = Field(description="one per id asked, in the order asked")


AlertId = Annotated[int, Path(ge=1, le=DB_INT_MAX, description="the alert's id")]


@router.get("", response_model=AlertPage)
def list_alerts(
    store: StoreDep,
    user: UserDep,
    state: Annotated[Literal["open", "acknowledged", "resolved", "active"] | None,
                     Query(description='"active": open or acknowledged')] = None,
    kit: Annotated[str | None, Query(max_length=63)] = None,
    rule: Rule | None = None,
    severity: Severity | None = None,
    subject: Annotated[str | None, Query(max_length=63, description="a device or kit id")] = None,
    cursor: Annotated[int | None, Query(ge=1, le=DB_INT_MAX, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """Alerts, newest first, filtered by state, kit, rule, severity and subject. Crew users: their kits' only."""
    kits = visible_kits(user)
    if kits is not None:
        kits = kits & {kit} if kit is not None else kits
    # A crew user's page: each of their kits' newest, merged (ids are global, so the merge is exact).
    items = sorted((a for k in (sorted(kits) if kits is not None else [kit])
                    for a in store.alerts.list(state=state, kit_id=k, rule=rule, severity=severity, subject=subject,
                                               before_id=cursor, limit=limit + 1)),
                   key=lambda a: a["id"], reverse=True)[: limit + 1]
    more = len(items) > limit
    items = items[:limit]
    return {"items": items, "next_cursor": items[-1]["id"] if more else None}


@router.get("/{alert_id}", response_model=AlertDetailOut, responses={404: {"description": "no such alert"}})
def get_alert(alert_id: AlertId, store: StoreDep):
    """One alert with its history: opened, updated, acknowledged, resolved, notified, notify_failed."""
    alert = store.alerts.get(alert_id)
    if alert is None:
        raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
    return alert


@router.post("/acknowledge", response_model=BulkAcknowledgeOut, responses={400: {"description": BAD_BODY[400]}})
def acknowledge_alerts(body: BulkAcknowledge, store: StoreDep, user: UserDep):
    """Acknowledge many alerts at once (the signed-in user), each as its own acknowledge would: the
    answer says, per id, whether it was acknowledged now, before, was resolved, or is not there.
    Crew users: an alert of another kit is "missing", as for one that does not exist."""
    items = []
    for alert_id in dict.fromkeys(body.ids):  # an id asked twice is acknowledged once
        alert = store.alerts.get(alert_id, history=False)
        if alert is None or not sees_kit(user, alert["kit_id"]):
            items.append({"id": alert_id, "outcome": "missing"})
            continue
        items.append({"id": alert_id, "outcome": store.alerts.acknowledge(alert_id, user.name, body.note)})
    return {"items": items}


def _act(store, alert_id: int, body: AlertAction, action: str, by: str):
    fn = store.alerts.acknowledge if action == "acknowledge" else store.alerts.resolve
    outcome = fn(alert_id, by, body.note)
    if outcome == "missing":
        raise HTTPException(status_code=404, detail=f"no alert {alert_id}")
    if outcome == "resolved":
        raise HTTPException(status_code=409, detail=f"alert {alert_id} is resolved already: nothing to {action}")
    return store.alerts.get(alert_id)


@router.post("/{alert_id}/acknowledge", response_model=AlertDetailOut,
             responses={400: {"description": BAD_BODY[400]}, 404: {"description": "no such alert"},
                        409: {"description": "the alert is resolved"}})
def acknowledge_alert(alert_id: AlertId, body: AlertAction, store: StoreDep, user: UserDep):
    """Someone (the signed-in user) is on it: no more repeat notifications. It stays until it resolves
    (by itself when back to normal, or by hand). Acknowledging it again changes nothing."""
    return _act(store, alert_id, body, "acknowledge", user.name)


@router.post("/{alert_id}/resolve", response_model=AlertDetailOut,
             responses={400: {"description": BAD_BODY[400]}, 404: {"description": "no such alert"},
                        409: {"description": "the alert is resolved"}})
def resolve_alert(alert_id: AlertId, body: AlertAction, store: StoreDep, user: UserDep):
    """Close it by hand (the signed-in user). If its rule still fires, the next evaluation opens a new alert."""
    return _act(store, alert_id, body, "resolve", user.name)
