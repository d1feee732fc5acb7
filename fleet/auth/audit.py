"""The audit trail of the API: every change made through it (a POST, PUT, PATCH or DELETE not refused)
with who made it, the route, the concrete path (ids only: never a body, so never a password), the kit
or venue it touched, the HTTP status and when.

AuditMiddleware records it as the response starts, before the client hears back: once a client
knows its change went through, the record is there. The user is the one fleet/auth/deps.py
current_user put on request.state. Commands and alert actions keep their own richer records (the
command's outcome from the device's ack, the alert's history): ActivityViews.audit shows those for them.
"""

from __future__ import annotations

import logging

import anyio
from sqlalchemy import Engine

from fleet import db
from fleet.db import now_ms

log = logging.getLogger("popkit.fleet.audit")

CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Not changes to the fleet: signing in and out.
NOT_AUDITED = frozenset({"/api/v1/auth/token", "/api/v1/auth/logout"})
# These write their own audit records (commands.requested_by, alert_events.by; a machine token's
# creation names the new token's id, which its path cannot): one entry each, not two.
OWN_RECORDS = frozenset({"/api/v1/devices/{device_id}/commands", "/api/v1/alerts/{alert_id}/acknowledge",
                         "/api/v1/alerts/{alert_id}/resolve", "/api/v1/alerts/acknowledge",
                         "/api/v1/machine-tokens"})


class ApiAudit:
    def __init__(self, engine: Engine):
        self.engine = engine

    def record(self, by: str, method: str, route: str, path: str, status: int, kit_id: str | None = None,
               venue_id: str | None = None, ts_ms: int | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(db.api_audit.insert().values(
                ts_ms=ts_ms or now_ms(), by=by, method=method, route=route[:200], path=path[:500], kit_id=kit_id,
                venue_id=venue_id, status=status))


def _touched(store, params: dict) -> tuple[str | None, str | None]:
    """The kit and the venue a request's path names (directly, or through its device or alert)."""
    kit_id = params.get("kit_id")
    if kit_id is None and "device_id" in params:
        ref = store.registry.device_ref(params["device_id"])
        kit_id = ref.kit_id if ref else None
    if kit_id is None and str(params.get("alert_id", "")).isdigit():
        alert = store.alerts.get(int(params["alert_id"]), history=False)
        kit_id = alert["kit_id"] if alert else None
    return kit_id, params.get("venue_id")


class AuditMiddleware:
    """ASGI middleware (not BaseHTTPMiddleware: that would buffer the live stream)."""

    def __init__(self, app, audit: ApiAudit, store):
        self.app, self.audit, self.store = app, audit, store

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in CHANGES:
            await self.app(scope, receive, send)
            return

        async def send_recorded(message):
            # Refused (4xx): nothing changed. A 5xx may have changed something (a venue write stored
            # but not pushed is a 503): recorded with its status.
            if message["type"] == "http.response.start" and not 400 <= message["status"] < 500:
                await anyio.to_thread.run_sync(self._record, scope, message["status"])
            await send(message)

        await self.app(scope, receive, send_recorded)

    def _record(self, scope, status: int) -> None:
        route = scope.get("route")
        user = scope.get("state", {}).get("user")
        template = getattr(route, "path", None)
        if user is None or template is None or template in NOT_AUDITED or template in OWN_RECORDS:
            return
        try:
            kit_id, venue_id = _touched(self.store, scope.get("path_params") or {})
            self.audit.record(user.name, scope["method"], template, scope["path"], status, kit_id, venue_id)
        except Exception:  # noqa: BLE001 - the change is made; a lost audit row is logged, not a 500
            log.exception("could not record %s %s by %s in the audit log", scope["method"], scope["path"], user.name)
