"""Two fleet ingest workers share one stream through an MQTT shared subscription, on one database.

What ops scaling the fleet out would count on: every message stored once (neither worker stores
what the other did, no message falls between them), both workers doing part of the work, every
producer's outbox drained by receipts whichever worker committed its messages, and a worker that
dies mid-stream costing nothing once it is back.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from agent.link import FleetLink
from fleet.service import build
from fleet.settings import FleetSettings
from kits.contract import Event
from popkit.broker import free_port
from tests.conftest import DEMO_KIT, wait_until
from tests.test_delivery import spawn_fleet

DOORS = ("demo-scanner-1", "demo-lights-1")  # two ESP32s of the demo kit
ROLES = {"demo-scanner-1": "scanner", "demo-lights-1": "lighting"}


def worker(broker, db_url: str, n: int):
    settings = FleetSettings(mqtt_url=broker.url, db_url=db_url, kits=[str(DEMO_KIT)], client_id=f"fleet-worker-{n}",
                             share_group="ingest", batch_wait_ms=5)
    store, ingest = build(settings)
    ingest.start()
    assert ingest.connected.wait(10), f"worker {n} did not subscribe"
    return store, ingest


def ledger(store, devices) -> dict[str, list[tuple[str, int]]]:
    with store.engine.connect() as conn:
        return {d: [tuple(r) for r in conn.exec_driver_sql(
            "SELECT boot, seq FROM events WHERE device_id = %(d)s ORDER BY boot, seq"
            if store.engine.dialect.name == "postgresql" else
            "SELECT boot, seq FROM events WHERE device_id = :d ORDER BY boot, seq", {"d": d}).all()] for d in devices}


def emit(links, n: int) -> None:
    for i in range(1, n + 1):
        for link in links:
            link.emit(link.device, "event", Event, kind="mark", data={"n": i})


@pytest.mark.parametrize("db", ["postgresql", "sqlite"])
def test_two_workers_store_every_message_once_and_both_share_the_work(broker, tmp_path, db, request):
    db_url = request.getfixturevalue("pg_url") if db == "postgresql" else f"sqlite:///{tmp_path / 'fleet.db'}"
    workers = [worker(broker, db_url, n) for n in (1, 2)]
    links = [FleetLink("demo", d, ROLES[d], broker.url, tmp_path / f"{d}.db", resend_after_s=60).start() for d in DOORS]
    try:
        assert all(link.connected.wait(10) for link in links)
        emit(links, 1500)
        wait_until(lambda: all(len(link.outbox) == 0 for link in links), 60,
                   what="every outbox drained by receipts from either worker")
        stored = ledger(workers[0][0], DOORS)
        for link in links:
            assert stored[link.device] == [(link.boot, s) for s in range(1, 1501)]
        ingested = [ingest.metrics.ingested for _store, ingest in workers]
        assert sum(ingested) == 3000, ingested  # a row inserted by one worker is never inserted by the other
        assert min(ingested) > 0, f"one worker did all the work: {ingested}"
        print(f"\nshared subscription ({db}): worker rows {ingested}, "
              f"duplicates seen {[i.metrics.duplicates for _s, i in workers]}")
    finally:
        for link in links:
            link.stop()
        for store, ingest in workers:
            ingest.stop()
            store.close()


def test_a_worker_sigkilled_mid_stream_loses_nothing_when_it_returns(broker, tmp_path, pg_url):
    """Mosquitto keeps the dead worker's session: what it had in flight, unacknowledged, is
    delivered again when it reconnects under the same client id; its partner carries the rest."""
    port = free_port()
    dead = subprocess.Popen([sys.executable, "-m", "popkit.cli", "fleet", "serve", "--mqtt", broker.url, "--db", pg_url,
                             "--http", f"127.0.0.1:{port}", "--kit", str(DEMO_KIT), "--client-id", "fleet-worker-9",
                             "--share-group", "ingest"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store, ingest = worker(broker, pg_url, 1)
    links = [FleetLink("demo", d, ROLES[d], broker.url, tmp_path / f"{d}.db", resend_after_s=60).start() for d in DOORS]
    proc = None
    try:
        wait_until(lambda: "fleet-worker-9" in broker.log(), 30, what="the second worker connected")
        assert all(link.connected.wait(10) for link in links)
        emit(links, 400)
        wait_until(lambda: ingest.metrics.ingested >= 100, 30, what="part of the stream ingested")
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        emit(links, 400)
        proc = spawn_fleet(broker.url, pg_url, port, client_id="fleet-worker-9", share_group="ingest")
        # resend_after_s=60: the outboxes drain through the sessions the broker kept, not by resending
        wait_until(lambda: all(len(link.outbox) == 0 for link in links), 60, what="every outbox drained")
        stored = ledger(store, DOORS)
        for link in links:
            assert [s for b, s in stored[link.device] if b == link.boot] == list(range(1, 801))
    finally:
        for link in links:
            link.stop()
        ingest.stop()
        store.close()
        for p in (dead, proc):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(10)
