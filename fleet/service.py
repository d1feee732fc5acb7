"""``popkit fleet serve``: the store, the ingest worker and the HTTP API in one process."""

from __future__ import annotations

import logging

from fleet.api.app import create_app
from fleet.ingest import Ingest
from fleet.settings import FleetSettings
from fleet.store import Store
from kits.manifest import load_manifest

log = logging.getLogger("popkit.fleet")


def build(settings: FleetSettings) -> tuple[Store, Ingest]:
    store = Store.open(settings.db_url, dead_letter_cap=settings.dead_letter_cap)
    for path in settings.kits:
        manifest = load_manifest(path)
        store.register_kit(manifest)
        log.info("registered kit %s from %s", manifest.id, path)
    return store, Ingest(settings, store)


def serve(settings: FleetSettings) -> None:
    import uvicorn

    store, ingest = build(settings)
    ingest.start()
    app = create_app(store, ingest)
    log.info("fleet API on http://%s/ (OpenAPI at /docs), ingesting from %s, storing in %s",
             settings.http, settings.mqtt_url, settings.db_url.split("@")[-1])
    try:
        uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning")
    finally:
        ingest.stop()
        store.close()
