"""``popkit fleet serve``: the store, the ingest worker and the HTTP API in one process."""

from __future__ import annotations

import gc
import logging

from pydantic import SecretStr

from fleet.alerts import Evaluator
from fleet.alerts.notify import Notifier
from fleet.api.app import create_app
from fleet.api.https import check_tls, warn_if_plain
from fleet.auth.secret import signing_key
from fleet.ingest import Ingest
from fleet.metrics import ALERT_METRICS
from fleet.retention import Maintenance
from fleet.settings import FleetSettings
from fleet.store import Store
from fleet.updates.worker import RolloutWorker
from fleet.venues.delivery import RePusher
from kits.manifest import load_manifest
from plumbing.mqtt import redacted

log = logging.getLogger("popkit.fleet")


def with_signing_key(settings: FleetSettings) -> FleetSettings:
    """``settings`` with its signing key checked (fleet/auth/secret.py), and in demo mode made if
    none is given, so create_app later uses that same key."""
    key = signing_key(settings)
    return settings.model_copy(update={"secret_key": SecretStr(key.decode()), "secret_key_file": None})


def build(settings: FleetSettings) -> tuple[Store, Ingest]:
    store = Store.open(settings.db_url, dead_letter_cap=settings.dead_letter_cap,
                       historical_after_ms=int(settings.historical_after_s * 1000))
    for path in settings.kits:
        manifest = load_manifest(path)
        store.registry.register_kit(manifest)
        log.info("registered kit %s from %s", manifest.id, path)
    return store, Ingest(settings, store)


def quiet_gc() -> None:
    """Fewer, cheaper cyclic collections. Ingest allocates a few objects per message and the kit
    views hold tens of thousands of dicts: at the default threshold (700) the collector ran
    hundreds of times a second and cost ~8% of the fleet's CPU at 1,000 msg/s (perf). What is
    alive at start (modules, the registry) is frozen out of every collection; the young
    generation is collected every 50,000 allocations (memory is reclaimed by reference counting
    anyway: the collector only finds cycles)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def serve(settings: FleetSettings) -> None:
    import uvicorn

    # The API's signing key first: without a usable one nothing starts (InsecureSecret says why);
    # then the certificate and key, if HTTPS is asked for.
    settings = with_signing_key(settings)
    check_tls(settings)
    warn_if_plain(settings)
    store, ingest = build(settings)
    quiet_gc()
    ingest.start()
    app = create_app(store, ingest)
    # Alerts: evaluated every alert_eval_interval_s and soon after ingest commits (the evaluator
    # watches ingest's batch counter, never ingest itself), on the kit views the API keeps (one
    # computation of the fleet for both); notifications to ops' targets, escalated (fleet/alerts/notify.py).
    notifier = Notifier.from_settings(store, settings)
    evaluator = Evaluator.from_settings(store, settings, changes=lambda: ingest.metrics.batches,
                                        on_done=(lambda _r: notifier.wake()) if notifier else None,
                                        metrics=ALERT_METRICS, views=app.state.views.snapshot).start()
    if notifier:
        notifier.start()
    # Telemetry retention (fleet/retention/): rollup into 1-minute aggregates, then old rows go.
    maintenance = Maintenance.from_settings(store, settings).start()
    # Venue lighting timelines pushed again before their horizon runs out (fleet/venues/delivery.py).
    repusher = RePusher(app.state.venue_lighting, settings.venue_repush_interval_s).start()
    # Rollouts stepped and their offers sent to the kits' agents as update commands (fleet/updates/worker.py),
    # with bundle tokens signed by the key the app checks them with.
    rollouts = RolloutWorker(store, app.state.publisher, settings, key=app.state.auth.key).start()
    log.info("fleet API on %s://%s/ (OpenAPI at /docs), ingesting from %s, storing in %s",
             "https" if settings.tls else "http", settings.http, redacted(settings.mqtt_url),
             settings.db_url.split("@")[-1])
    try:
        uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                    ssl_certfile=settings.tls_cert, ssl_keyfile=settings.tls_key,
                    # Only a trusted proxy's forwarded headers: from anyone else they would let a client
                    # claim HTTPS (or another address) it does not have.
                    proxy_headers=settings.forwarded_allow_ips is not None,
                    forwarded_allow_ips=settings.forwarded_allow_ips or "127.0.0.1")
    finally:
        evaluator.stop()
        maintenance.stop()
        repusher.stop()
        rollouts.stop()
        if notifier:
            notifier.stop()
        ingest.stop()
        store.close()
