"""A rollout from the real fleet to a kit's agent, end to end: the fleet (ingest, API under uvicorn,
rollout worker) on a real Mosquitto sends its ``update`` commands; the agent daemon fetches the
bundle from the fleet's bundle route (fleet/api/routes/bundle.py) through an "uplink" (a TCP proxy
the test cuts mid-file and brings back), resumes, acks, offers each door, and withdraws each offer
once its door reports the release committed, which the fleet records too.

The uplink parses what crosses it (one HTTP response a connection: the agent closes each), so the
test counts the body bytes of each file the agent was sent: every byte once, cut or not.
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from fleet.api.app import create_app
from fleet.auth.testing import ops_client
from fleet.service import build
from fleet.settings import FleetSettings
from fleet.updates.worker import RolloutWorker
from kits.contract import decode
from kits.release import new_private_key, public_key_of, write_bundle
from tests.conftest import wait_until
from tests.test_agent_update_offers import APP, FILES, KIT, KitAgent, retained_offers, state
from tests.test_updates_api import upload_body


def _stop_listening(sock: socket.socket) -> None:
    """Close a listening socket another thread is blocked in accept() on. close() alone leaves the
    port accepting on Linux until that accept() returns; shutdown() wakes it at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Uplink:
    """A TCP proxy to ``target``: ``cut_after`` downstream bytes of a file's response, then that
    connection is closed and the listener with it (the uplink is down) until ``up()``."""

    def __init__(self, target: int):
        self.target = target
        self.cut_after: int | None = None
        self.responses: list[dict] = []  # {"path", "range", "status", "body"} per connection
        self.down = threading.Event()
        self._lock = threading.Lock()
        self._listen(0)

    def _listen(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))  # SO_REUSEADDR: back on the same port
        self.port = self.sock.getsockname()[1]
        self.down.clear()
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def up(self) -> None:
        self._listen(self.port)

    def close(self) -> None:
        _stop_listening(self.sock)

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(4096)
            if not chunk:
                break
            head += chunk
        upstream.sendall(head)
        path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else ""
        rng = re.search(rb"\r\nRange: bytes=(\d+)-", head, re.I)
        entry = {"path": path, "range": int(rng.group(1)) if rng else None, "status": None, "body": 0}
        with self._lock:
            budget = self.cut_after if "/files/" in path else None
            if budget is not None:
                self.cut_after = None
        got = b""
        sent = 0
        while True:
            chunk = upstream.recv(65536)
            if not chunk:
                break
            if budget is not None and sent + len(chunk) > budget:
                chunk = chunk[:budget - sent]
            client.sendall(chunk)
            sent += len(chunk)
            got += chunk if len(got) < 4096 else b""
            if budget is not None and sent >= budget:
                break
        end = got.find(b"\r\n\r\n")
        entry["status"] = int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/") else None
        entry["body"] = sent - (end + 4) if end >= 0 else 0
        with self._lock:
            self.responses.append(entry)
        upstream.close()
        client.close()
        if budget is not None and sent >= budget:  # the uplink drops, and stays down
            _stop_listening(self.sock)
            self.down.set()

    def file_bodies(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.responses:
            if "/files/" in r["path"]:
                name = r["path"].split("/files/", 1)[1]
                out[name] = out.get(name, 0) + r["body"]
        return out


@pytest.fixture
def fleet(broker, tmp_path):
    import uvicorn

    from popkit.broker import free_port

    (tmp_path / "fleet").mkdir()
    (tmp_path / "fleet" / "uk.toml").write_text(KIT)
    pem = new_private_key()
    (tmp_path / "fleet" / "release.pub").write_text(public_key_of(pem).hex() + "\n")
    port = free_port()
    uplink = Uplink(port)
    settings = FleetSettings(mqtt_url=broker.url, db_url=f"sqlite:///{tmp_path / 'fleet' / 'fleet.db'}",
                             kits=[str(tmp_path / "fleet" / "uk.toml")], client_id="fleet-e2e", batch_wait_ms=5,
                             release_pubkey=str(tmp_path / "fleet" / "release.pub"),
                             release_dir=str(tmp_path / "fleet" / "releases"),
                             public_url=f"http://127.0.0.1:{uplink.port}")  # the agent reaches it through its uplink
    store, ingest = build(settings)
    ingest.start()
    assert ingest.connected.wait(10)
    app = create_app(store, ingest, settings=settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, what="uvicorn serving the fleet")
    ops = ops_client(app, "ops-olga")
    folder = write_bundle(tmp_path / "build", "scanner", "0.4.0", 6, FILES, pem, created_ms=1)
    r = ops.post("/api/v1/releases", json=upload_body(folder))
    assert r.status_code == 201, r.text
    worker = RolloutWorker(store, app.state.publisher, settings, key=app.state.auth.key)
    yield type("Fleet", (), dict(ops=ops, worker=worker, uplink=uplink, pub=public_key_of(pem), release=r.json()))
    uplink.close()
    server.should_exit = True
    thread.join(10)
    ingest.stop()
    store.close()


def test_a_rollout_reaches_the_doors_through_the_kits_agent_across_an_uplink_cut(fleet, broker, tmp_path: Path):
    agent_dir = tmp_path / "kit"
    agent_dir.mkdir()
    k = KitAgent(broker, agent_dir, fleet.pub)
    try:
        r = fleet.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["uk"], "groups": ["100%"]})
        assert r.status_code == 201, r.text
        rid = r.json()["id"]
        fleet.uplink.cut_after = 120_000  # into app_main.mpy (300 KB)
        sent = fleet.worker.tick()
        assert sorted(o["device"] for o in sent) == ["door-1", "door-2"]
        assert fleet.uplink.down.wait(20), "the uplink never dropped"
        wait_until(lambda: k.fetcher.counts["retries"] >= 2, 20, what="the agent retrying the dropped uplink")
        assert k.cache.folder("scanner-0.4.0") is None
        fleet.uplink.up()

        for o in sent:
            assert k.ack(o["command"]) == ("ok", f"offered scanner-0.4.0 to {o['device']}")
        assert k.fetcher.counts["fetches"] == 1
        # every file's bytes crossed the uplink once; the resumed request asked from where the cut left it
        assert fleet.uplink.file_bodies() == {p: len(b) for p, b in FILES.items() if b}
        asked = [r["range"] for r in fleet.uplink.responses if r["path"].endswith("/files/app_main.mpy")]
        assert asked[0] == 0 and len(asked) == 2 and 0 < asked[1] < len(APP)
        assert all(r["status"] in (200, 206) for r in fleet.uplink.responses)
        offers = retained_offers(broker)
        assert {d: decode("update", p).release for d, p in offers.items()} == {"door-1": "scanner-0.4.0",
                                                                               "door-2": "scanner-0.4.0"}

        def fleet_states():
            got = fleet.ops.get(f"/api/v1/rollouts/{rid}").json()
            return {d["device_id"]: d["state"] for d in got["device_updates"]}

        assert fleet_states() == {"door-1": "offered", "door-2": "offered"}  # acked ok: nothing failed
        for door in ("door-1", "door-2"):
            offered_ms = k.offers.offers[door]["offer"]["ts"]
            k.pub.publish(f"popkit/v1/uk/{door}/state", state(door, "scanner-0.4.0", offered_ms + 1000,
                                                               {"state": "committed", "why": "healthy 60 s"}),
                          qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda: fleet_states() == {"door-1": "committed", "door-2": "committed"}, 15,
                   what="the fleet seeing both doors committed")
        wait_until(lambda: not k.offers.offers, 10, what="the agent withdrawing both offers")
        assert retained_offers(broker) == {}
    finally:
        k.stop()
