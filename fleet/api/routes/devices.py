from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import Field

from fleet.api.deps import StoreDep
from fleet.api.routes.kits import health_config
from fleet.api.schemas import DB_INT_MAX, DeviceDetailOut, TelemetryOut, refusals
from fleet.auth.deps import AUTH_RESPONSES, guard
from fleet.retention import MINUTE_MS, pick_bucket_ms
from fleet.db import now_ms

router = APIRouter(prefix="/api/v1/devices", tags=["devices"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)


@router.get("/{device_id}", response_model=DeviceDetailOut, responses=refusals({404: "no such device"}))
def get_device(device_id: str, request: Request, store: StoreDep):
    """One device: state, latest readings, its sequence streams with any gaps, its health, and
    for a power bank the time-to-empty forecast."""
    device = store.health.device_with_health(device_id, health_config(request))
    if device is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    return device


class TelemetryHistoryOut(TelemetryOut):
    """TelemetryOut, saying which resolution the items are in."""

    resolution: Literal["raw", "1m"] = Field(
        default="raw", description="raw: readings as the device sent them (one the kit held through an uplink "
        "outage, received over a minute late, also carries \"historical\": true and its \"received_ms\"); "
        "1m: built from one-minute aggregates")
    bucket_ms: int | None = Field(default=None, description="1m: each item aggregates this long (from its ts)")


DAY_MS = 86_400_000


def _raw_days(request: Request) -> float:
    return request.app.state.settings.telemetry_raw_days


@router.get("/{device_id}/telemetry", response_model=TelemetryHistoryOut, responses=refusals({404: "no such device"}))
def list_telemetry(
    device_id: str,
    request: Request,
    store: StoreDep,
    since: Annotated[int | None, Query(ge=0, le=DB_INT_MAX, description="only readings taken at or after this time, ms since the epoch")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    kind: Annotated[str | None, Query(pattern="^(battery|printer|device)$")] = None,
    until: Annotated[int | None, Query(ge=0, le=DB_INT_MAX, description="only readings taken before this time, ms since the epoch")] = None,
    resolution: Annotated[Literal["raw", "1m", "auto"], Query(description=(
        "raw (default): the readings; 1m: one-minute aggregates (raw is kept telemetry_raw_days, "
        "aggregates telemetry_rollup_days); auto: the raw readings if the range is within the raw "
        "retention and holds at most `points` of them, else aggregates in buckets sized to draw "
        "the range in at most `points` points (since defaults to 24 h before until)"))] = "raw",
    points: Annotated[int, Query(ge=10, le=5000, description="auto: most points wanted")] = 300,
):
    """A device's telemetry in time order, oldest first, from ``since``.

    Aggregate items (resolution 1m): ``{ts, kind, n, bucket_ms, last_ts, last}`` (``n`` readings,
    ``last`` the bucket's last reading), and for a battery also ``v, i, p, soc`` (the averages, so a
    chart of readings draws them alike), ``v_min, v_avg, v_max, i_min, i_avg, i_max, p_avg, soc_min,
    soc_avg, soc_max``. Their ``next_since`` is the start of the next bucket."""
    if store.registry.device_ref(device_id) is None:
        raise HTTPException(status_code=404, detail=f"no device {device_id!r}")
    if resolution == "auto":
        now = now_ms()
        end = until if until is not None else now
        start = since if since is not None else max(0, end - DAY_MS)
        raw_from = now - int(_raw_days(request) * DAY_MS)
        if start >= raw_from and store.telemetry.count_raw(device_id, start, end, kind, cap=points) <= points:
            resolution, since, until = "raw", start, end
        else:
            items, nxt = store.telemetry.buckets(device_id, start, end, pick_bucket_ms(end - start, points),
                                                 limit, kind)
            return {"device_id": device_id, "items": items, "next_since": nxt, "resolution": "1m",
                    "bucket_ms": pick_bucket_ms(end - start, points)}
    if resolution == "1m":
        items, nxt = store.telemetry.buckets(device_id, since, until, MINUTE_MS, limit, kind)
        return {"device_id": device_id, "items": items, "next_since": nxt, "resolution": "1m", "bucket_ms": MINUTE_MS}
    readings, _n, next_since = store.telemetry.page(device_id, since, until, limit, kind)
    # The stored readings are spliced in as sent (a day of a power bank is 720 of them): parsing
    # and re-encoding them cost more than the query (TelemetryViews.page).
    head = json.dumps({"device_id": device_id, "next_since": next_since, "resolution": "raw", "bucket_ms": None},
                      separators=(",", ":"))
    body = head[:-1] + ',"items":[' + readings + "]}"
    return Response(content=body.encode(), media_type="application/json")
