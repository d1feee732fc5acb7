"""Real parts for the tests: a private Mosquitto per test, the fleet in-process, throwaway PostgreSQL databases."""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from popkit.broker import MosquittoBroker, mosquitto_binary

REPO = Path(__file__).resolve().parent.parent
DEMO_KIT = REPO / "kits" / "examples" / "demo.toml"
PG_ADMIN_URL = os.environ.get("POPKIT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The fleet refuses to start without a signing key (fleet/auth/secret.py): the tests run it as a
# deployment would, with a random one (inherited by the `popkit fleet serve` processes they start).
# tests/test_api_auth.py removes it where it checks the refusal.
os.environ.setdefault("POPKIT_SECRET_KEY", secrets.token_urlsafe(32))


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _no_firmware_left_running():
    """A test's firmware processes end with it, whatever the test forgot (tests/device/firmware.py)."""
    yield
    from tests.device.firmware import kill_leftovers

    kill_leftovers()


@pytest.fixture
def broker(tmp_path):
    """A mosquitto of our own on a free port; the test may stop(), kill() and start() it again."""
    if mosquitto_binary() is None:
        pytest.fail("mosquitto is not installed: the tests need a real broker (apt-get install mosquitto; .ci/run does)")
    b = MosquittoBroker(data_dir=tmp_path / "broker")
    b.start()
    yield b
    b.close()


@dataclass
class Fleet:
    store: object
    ingest: object
    api: object  # fastapi TestClient, signed in as an ops user (fleet.auth.testing.ops_client)
    settings: object

    def wait_ingested(self, n: int, timeout: float = 20.0) -> None:
        wait_until(lambda: self.ingest.metrics.ingested >= n, timeout, what=f"{n} messages ingested "
                   f"(have {self.ingest.metrics.ingested})")


def start_fleet(mqtt_url: str, db_url: str, client_id: str | None = None, kits=(DEMO_KIT,)) -> Fleet:
    from fleet.api.app import create_app
    from fleet.auth.testing import ops_client
    from fleet.service import build
    from fleet.settings import FleetSettings

    settings = FleetSettings(mqtt_url=mqtt_url, db_url=db_url, kits=[str(k) for k in kits],
                             client_id=client_id or f"fleet-test-{secrets.token_hex(3)}", batch_wait_ms=5)
    store, ingest = build(settings)
    ingest.start()
    assert ingest.connected.wait(10), "fleet did not connect to the broker"
    return Fleet(store, ingest, ops_client(create_app(store, ingest)), settings)


def known_event(api, event: str) -> None:
    """Make ``event`` known to the fleet (a revocation for an unknown event is refused) without giving
    any scanner a key: its key for no kit yet, through the API as ops would."""
    import time as _time

    r = api.put(f"/api/v1/events/{event}/key", json={"key": "00" * 32, "not_before": 0,
                                                     "expires": int(_time.time()) + 86400, "kits": []})
    assert r.status_code == 200, r.text


@pytest.fixture
def fleet(broker, tmp_path):
    """The fleet (store + ingest + API) on SQLite, ingesting from the test's broker, with the demo kit registered."""
    f = start_fleet(broker.url, f"sqlite:///{tmp_path / 'fleet.db'}")
    yield f
    f.ingest.stop()
    f.store.close()


@pytest.fixture
def pg_url():
    """A throwaway PostgreSQL database on the local server, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
                                     isolation_level="AUTOCOMMIT")
    name = f"popkit_test_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # noqa: BLE001 - any failure here means no server to test against
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


class Collector:
    """A raw paho subscriber that records what it sees (for receipts, states, commands)."""

    def __init__(self, url: str, topics: list[str]):
        from plumbing.mqtt import new_client, parse_mqtt_url

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.client = new_client(f"collector-{secrets.token_hex(3)}")
        self.client.on_connect = lambda c, *_: (c.subscribe([(t, 1) for t in topics]), None)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        target = parse_mqtt_url(url)
        self.client.connect(target.host, target.port, clean_start=True)
        self.client.loop_start()
        assert self.ready.wait(5), "collector could not subscribe"

    def _on_message(self, _c, _u, msg) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def on(self, topic_suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.endswith(topic_suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def collect(broker):
    made = []

    def make(*topics: str) -> Collector:
        c = Collector(broker.url, list(topics))
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def publisher(url: str):
    """A bare paho client for injecting hand-made (and malformed) messages."""
    from plumbing.mqtt import new_client, parse_mqtt_url

    client = new_client(f"pub-{secrets.token_hex(3)}")
    target = parse_mqtt_url(url)
    client.connect(target.host, target.port, clean_start=True)
    client.loop_start()
    return client
