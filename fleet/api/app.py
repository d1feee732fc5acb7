"""The FastAPI application: routers by resource, the store and ingest worker on app.state."""

from __future__ import annotations

from fastapi import FastAPI

from fleet.api.routes import audit, commands, config, dead_letters, devices, events, health, kits, pages, revocations, stream
from fleet.api.routes import alerts as alert_routes
from fleet.commands import Publisher
from fleet.ingest import Ingest
from fleet.store import Store


def create_app(store: Store, ingest: Ingest | None = None, publisher: Publisher | None = None) -> FastAPI:
    app = FastAPI(title="PopKit fleet", version="0.1.0", description="Kits, devices, telemetry and health of the PopKit fleet.")
    app.state.store = store
    app.state.ingest = ingest
    # Pushing to devices goes through the ingest worker's client unless told otherwise.
    app.state.publisher = publisher or (Publisher.for_ingest(store, ingest) if ingest is not None else None)
    app.include_router(alert_routes.router)  # fleet/alerts.py: GET /api/v1/alerts, acknowledge, resolve
    for module in (kits, devices, commands, config, events, revocations, dead_letters, health, audit, stream, pages):
        app.include_router(module.router)
    return app
