"""The FastAPI application: routers by resource, the store and ingest worker on app.state.

Every route but PUBLIC needs a signed-in user (fleet/auth/): create_app refuses to build an app with
a route that is not guarded, or with a path parameter that has no scope check."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from fleet.api.https import HstsMiddleware
from fleet.api.routes import (audit, commands, config, dead_letters, devices, events, health, kits, pages, revocations,
                               stream, users, venues)
from fleet.api.routes import alerts as alert_routes
from fleet.api.routes import labels as label_routes
from fleet.api.routes import notify as notify_routes
from fleet.api.routes import machines as machine_routes
from fleet.api.routes import retail as retail_routes
from fleet.api.routes import retail_orders
from fleet.api.routes import updates as update_routes
from fleet.api.routes import auth as auth_routes
from fleet.auth.audit import ApiAudit, AuditMiddleware
from fleet.auth.deps import check_routes
from fleet.auth.login import Auth
from fleet.auth.secret import signing_key
from fleet.auth.users import UserStore
from fleet.commands import Publisher
from fleet.events_bus import EventBus
from fleet.health import HealthConfig
from fleet.ingest import Ingest
from fleet.views.cache import KitViews
from fleet.settings import FleetSettings
from fleet.store import Store
from fleet.tickets.delivery import TicketDelivery
from fleet.updates.delivery import UpdateDelivery
from fleet.venues.delivery import VenueLighting


# Open to anyone: liveness (no data but for ops), the dashboard's shell (it signs in through the API),
# and signing in. (The OpenAPI schema and /docs are Starlette routes, not these, and are public too.)
PUBLIC = {"/healthz", "/", "/static/{name}", "/static/vendor/{name}", "/api/v1/auth/token"}


def create_app(store: Store, ingest: Ingest | None = None, publisher: Publisher | None = None,
               settings: FleetSettings | None = None) -> FastAPI:
    """The app. Raises fleet.auth.secret.InsecureSecret without a usable signing key (outside demo mode)."""
    settings = settings or (ingest.settings if ingest is not None else FleetSettings())
    key = signing_key(settings)
    views = KitViews(store, HealthConfig.from_settings(settings), refresh_s=settings.view_refresh_s,
                     max_age_s=settings.view_max_age_s, busy_duty=settings.view_busy_duty)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        views.start()  # without the lifespan (a bare TestClient) reads compute what they need
        try:
            yield
        finally:
            views.stop()

    app = FastAPI(title="PopKit fleet", version="0.1.0", lifespan=lifespan,
                  description="Kits, devices, telemetry and health of the PopKit fleet.")
    app.state.store = store
    app.state.ingest = ingest
    app.state.settings = settings
    app.state.health_config = views.health
    app.state.views = views
    # What this process's writes changed (ingest's commits, registrations, pushed configs): the
    # views recompute it first, then the live stream tells the dashboards (fleet/events_bus.py),
    # so a dashboard that re-fetches on the news gets the new view.
    app.state.bus = bus = EventBus()
    store.changes.listeners.append(lambda kits, _devices: views.invalidate(kits))
    store.changes.listeners.append(bus.publish)
    # Pushing to devices goes through the ingest worker's client unless told otherwise.
    app.state.publisher = publisher or (Publisher.for_ingest(store, ingest) if ingest is not None else None)
    if ingest is not None:  # a device back online gets what it was asked while it was away
        ingest.on_births.append(lambda devices: app.state.publisher and app.state.publisher.resend_pending(devices))
    app.state.venue_lighting = VenueLighting(store, lambda: app.state.publisher, horizon_h=settings.venue_horizon_h,
                                             repush_before_h=settings.venue_repush_before_h,
                                             max_config=settings.lighting_max_config)
    # Event keys and revocations to the scanners; the kits' own revocations merged at ingest (fleet/tickets/).
    app.state.tickets = TicketDelivery(store, lambda: app.state.publisher)
    if ingest is not None:  # this process ingests: it merges what kits revoked as their events arrive
        app.state.tickets.attach()
    app.state.updates = UpdateDelivery(store)  # releases and rollouts (fleet/updates/)
    app.state.auth = Auth(key, UserStore(store.engine), ttl_s=settings.token_ttl_s)
    app.add_middleware(AuditMiddleware, audit=ApiAudit(store.engine), store=store)
    if settings.hsts_max_age_s:  # answers to HTTPS requests only (fleet/api/https.py)
        app.add_middleware(HstsMiddleware, max_age_s=settings.hsts_max_age_s)
    app.include_router(alert_routes.router)  # fleet/alerts/rules.py: GET /api/v1/alerts, acknowledge, resolve
    for module in (kits, devices, commands, config, events, revocations, dead_letters, health, audit, stream, venues,
                   auth_routes, users, pages):
        app.include_router(module.router)
    for router in update_routes.routers:
        app.include_router(router)
    app.include_router(retail_routes.router)  # fleet/retail/: each kit's catalog (issue 19)
    app.include_router(retail_orders.router)  # fleet/retail/: the tills' orders, sales and stock
    app.include_router(retail_orders.fleet_router)
    app.include_router(label_routes.router)  # labels from the dashboard, printed by the kit's agent
    app.include_router(notify_routes.router)  # fleet/notify/: notification targets, escalation policy, sends
    app.include_router(machine_routes.router)  # fleet/machines/: scoped, long-lived tokens for machines
    check_routes(app.routes, PUBLIC)
    return app
