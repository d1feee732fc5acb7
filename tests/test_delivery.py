"""Nothing is lost, nothing is doubled: the broker and the fleet die under load and come back."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

from agent.link import FleetLink
from kits.contract import Event
from fleet.store import Store
from popkit.broker import free_port
from tests.conftest import DEMO_KIT, start_fleet, wait_until


def stored_keys(store, device: str) -> list[tuple[str, int]]:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT boot, seq FROM events WHERE device_id = ? ORDER BY seq", (device,)).all()
    return [tuple(r) for r in rows]


def test_broker_sigkill_mid_stream_loses_and_doubles_nothing(broker, tmp_path):
    fleet = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    link = FleetLink("demo", "demo-scanner-1", "scanner", broker.url, tmp_path / "flash.db", resend_after_s=3).start()
    try:
        assert link.connected.wait(10)
        total = 2000
        for n in range(1, total + 1):
            link.emit("demo-scanner-1", "event", Event, kind="checkin", data={"event": "DEMO-NIGHT", "ticket": f"T{n:05d}", "verdict": "admitted"})
            if n == 700:
                # Some of the stream is through, some in flight, some still to come.
                wait_until(lambda: fleet.ingest.metrics.ingested >= 300, what="part of the stream ingested")
                broker.kill()
                time.sleep(1.0)
                broker.start()
        wait_until(lambda: len(link.outbox) == 0, timeout=60, what=f"outbox drained (left {len(link.outbox)})")
        keys = stored_keys(fleet.store, "demo-scanner-1")
        assert len(keys) == total, f"{total - len(keys)} check-ins lost"
        assert keys == [(link.boot, s) for s in range(1, total + 1)]
        # The broker lost its in-flight state: resends happened and were recognised, not stored twice.
        assert fleet.ingest.metrics.ingested == total
    finally:
        link.stop()
        fleet.ingest.stop()
        fleet.store.close()


def spawn_fleet(mqtt_url: str, db_url: str, port: int, client_id: str = "fleet-under-test",
                share_group: str = "") -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "popkit.cli", "fleet", "serve", "--mqtt", mqtt_url, "--db", db_url,
         "--http", f"127.0.0.1:{port}", "--kit", str(DEMO_KIT), "--client-id", client_id,
         *(["--share-group", share_group] if share_group else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    wait_until(healthy, timeout=30, what="fleet service healthy")
    return proc


def test_fleet_sigkilled_mid_ingest_loses_nothing_it_acknowledged(broker, tmp_path):
    """The fleet's persistent session keeps its queue at the broker while the service is dead."""
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    port = free_port()
    proc = spawn_fleet(broker.url, db_url, port)
    link = FleetLink("demo", "demo-scanner-1", "scanner", broker.url, tmp_path / "flash.db", resend_after_s=60).start()
    store = None
    try:
        assert link.connected.wait(10)
        for n in range(1, 1001):
            link.emit("demo-scanner-1", "event", Event, kind="checkin", data={"event": "DEMO-NIGHT", "ticket": f"T{n}", "verdict": "admitted"})
            if n == 400:
                wait_until(lambda: len(link.outbox) < 400, what="part of the stream receipted")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        time.sleep(0.5)
        proc = spawn_fleet(broker.url, db_url, port)
        # resend_after_s=60: the outbox drains through the broker's queue and the fleet's
        # persistent session, not because the producer sent everything again.
        wait_until(lambda: len(link.outbox) == 0, timeout=60, what=f"outbox drained (left {len(link.outbox)})")
        store = Store.open(db_url)
        assert stored_keys(store, "demo-scanner-1") == [(link.boot, s) for s in range(1, 1001)]
    finally:
        link.stop()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        if store:
            store.close()
