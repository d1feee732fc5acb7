from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from fleet.api.deps import IngestDep, StoreDep
from fleet.api.routes import bundle
from fleet.notify.metrics import render_notify_metrics
from fleet.retail.metrics import render_catalog_metrics, render_order_metrics
from fleet.auth.deps import AUTH_RESPONSES, guard, optional_user
from fleet.auth.users import User
from fleet.alerts import RULES, SEVERITIES
from fleet.metrics import (IngestMetrics, render_alert_metrics, render_login_metrics, render_prometheus,
                           render_view_metrics)

router = APIRouter(tags=["health"])

# /metrics answers text, its refusals JSON: said apart, or the schema would promise text/plain for them too.
_JSON_DETAIL = {"application/json": {"schema": {"type": "object", "required": ["detail"],
                                                "properties": {"detail": {"type": "string"}}}}}
_METRICS_REFUSALS = {code: {**r, "content": _JSON_DETAIL} for code, r in AUTH_RESPONSES.items() if code != 404}


@router.get("/healthz", responses={503: {"description": "degraded: ingest is not connected to the broker "
                                                     "(the same body, status degraded)"}})
def get_health(store: StoreDep, ingest: IngestDep, user: Annotated[User | None, Depends(optional_user)]):
    """Liveness and readiness: the database answers and ingest is connected to the broker. Public
    (for load balancers and service managers); the device counts only for a signed-in ops user."""
    online, total = store.devices.online_counts()
    broker = ingest is None or ingest.connected.is_set()
    body = {"status": "ok" if broker else "degraded", "broker_connected": broker}
    if user is not None and user.role == "ops":
        body.update(devices_online=online, devices=total)
    return JSONResponse(body, status_code=200 if broker else 503)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=guard("ops"), responses=_METRICS_REFUSALS)
def get_metrics(request: Request, store: StoreDep, ingest: IngestDep):
    """Prometheus text: messages ingested, rejected by reason, duplicates, devices online, alerts
    firing by rule and severity, notifications sent and failed by target (and why), the kit views' recomputation, logins
    succeeded, failed and throttled. ops only."""
    online, total = store.devices.online_counts()
    metrics = ingest.metrics if ingest else IngestMetrics()
    depth = ingest.queue_depth if ingest else 0
    text = render_prometheus(metrics, online, total, depth)
    text += render_alert_metrics(store.alerts.open_counts(), RULES, SEVERITIES)
    text += render_notify_metrics([t.name for t in store.notify.targets()])  # sends and failures by target
    text += render_view_metrics(request.app.state.views.stats)
    text += render_login_metrics(request.app.state.auth.metrics)
    text += bundle.render_metrics()  # the kits' bundle downloads refused, by reason
    text += render_catalog_metrics()  # catalog imports and price changes refused, by reason
    text += render_order_metrics(store.retail.orders.counts())  # the tills' orders: duplicates, conflicts
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
