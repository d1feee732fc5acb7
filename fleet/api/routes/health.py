from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from fleet.api.deps import IngestDep, StoreDep
from fleet.alerts import RULES, SEVERITIES
from fleet.metrics import IngestMetrics, render_alert_metrics, render_prometheus, render_view_metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
def get_health(store: StoreDep, ingest: IngestDep):
    """Liveness and readiness: the database answers and ingest is connected to the broker."""
    online, total = store.online_counts()
    broker = ingest is None or ingest.connected.is_set()
    body = {"status": "ok" if broker else "degraded", "broker_connected": broker, "devices_online": online, "devices": total}
    return JSONResponse(body, status_code=200 if broker else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def get_metrics(request: Request, store: StoreDep, ingest: IngestDep):
    """Prometheus text: messages ingested, rejected by reason, duplicates, devices online, alerts
    firing by rule and severity, webhook notifications failed, the kit views' recomputation."""
    online, total = store.online_counts()
    metrics = ingest.metrics if ingest else IngestMetrics()
    depth = ingest.queue_depth if ingest else 0
    text = render_prometheus(metrics, online, total, depth)
    text += render_alert_metrics(store.alert_open_counts(), RULES, SEVERITIES)
    text += render_view_metrics(request.app.state.views.stats)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
