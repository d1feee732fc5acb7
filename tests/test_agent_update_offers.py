"""The fleet's ``update`` command at the kit's agent (agent/updates/fetch.py, offers.py): the bundle
fetched from the fleet's HTTP API into the kit's cache once, resumed after an uplink cut with no
byte downloaded twice, verified, then offered retained to each ESP32 at the kit broker, deferred
while the kit is in use, withdrawn once the device reports; an agent release starts the
self-update. A real Mosquitto and the agent daemon in this process; commands arrive on the agent's
cmd topic and acks are read off its ack topic, as the fleet would see them.

The bundle server here speaks the fleet route's protocol (docs/protocol.md, the update command):
``GET <url>manifest.json|manifest.sig|files/<path>`` with a Bearer token, Range on files (206,
Content-Range; 416 outside), 401 for another token. It counts every body byte it sends and can cut
a response mid-file and stop listening, as an uplink that drops.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from agent.backends import open_hardware
from agent.daemon import Agent
from agent.link import FleetLink
from agent.statewatch import StateWatch
from agent.updates import selfupdate
from agent.updates.cache import UpdateCache
from agent.updates.fetch import BundleFetcher
from agent.updates.offers import RESULT_FILE, UpdateOffers, agent_update_report
from kits.contract import Command, decode, encode, subscription, topic
from kits.manifest import load_manifest
from kits.release import new_private_key, public_key_of, write_bundle
from simulators.kit import SimulatedKit
from tests.conftest import Collector, publisher, wait_until

KIT = """
id = "uk"
name = "Update kit"
agent = "uk-agent"

[[devices]]
id = "door-1"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "door-2"
role = "scanner"
model = "esp32-gm65"
"""
TOKEN = "kit-uk-scanner-token"
APP = os.urandom(300_000)  # several 64 KB reads: the cut lands mid-file
FILES = {"app_main.mpy": APP, "lib/scan.mpy": b"scan" * 3000, "empty.mpy": b""}
HOST, PORT = "192.168.4.1", 8468  # the update server's address, as the offers carry it


# ---------------------------------------------------------------- a bundle server, as the fleet's route


class BundleServer:
    """Bundles at /api/v1/releases/<release>/bundle/...; ``cut_after``: body bytes of files to send
    before the uplink drops (the response is cut and the server stops listening)."""

    def __init__(self, releases: Path, port: int = 0):
        self.releases = releases
        self.sent: dict[str, int] = {}  # "release/files/path" -> body bytes sent
        self.requests: list[str] = []
        self.cut_after: int | None = None
        self.down = threading.Event()
        self._lock = threading.Lock()
        self._serve(port)

    def _serve(self, port: int) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.down.clear()
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, release: str) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/releases/{release}/bundle/"

    def uplink_down(self) -> None:
        threading.Thread(target=self._stop, daemon=True).start()

    def _stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.down.set()

    def uplink_up(self) -> None:
        self._serve(self.port)

    def close(self) -> None:
        if not self.down.is_set():
            self._stop()

    def files_sent(self, release: str) -> dict[str, int]:
        return {k.split("/files/", 1)[1]: v for k, v in self.sent.items() if k.startswith(f"{release}/files/")}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                m = re.fullmatch(r"/api/v1/releases/([a-z]+-[0-9.]+)/bundle/(manifest\.json|manifest\.sig|files/.+)",
                                 self.path)
                server.requests.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, b'{"detail": "bad token"}')
                path = server.releases / m.group(1) / m.group(2) if m else None
                if path is None or not path.is_file():
                    return self._send(404, b'{"detail": "no such file"}')
                data = path.read_bytes()
                start, end = 0, len(data) - 1
                rng = self.headers.get("Range")
                if rng:
                    r = re.fullmatch(r"bytes=(\d+)-(\d*)", rng)
                    start = int(r.group(1))
                    end = int(r.group(2)) if r.group(2) else len(data) - 1
                    if start >= len(data) or end < start:
                        return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                body = data[start:end + 1]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                key = f"{m.group(1)}/{m.group(2)}"
                with server._lock:
                    budget = server.cut_after if m.group(2).startswith("files/") else None
                    if budget is not None:
                        body = body[:budget]
                        server.cut_after = None
                self.wfile.write(body)
                self.wfile.flush()
                with server._lock:
                    server.sent[key] = server.sent.get(key, 0) + len(body)
                if budget is not None:  # the uplink drops mid-body: the client has what was sent
                    self.close_connection = True
                    server.uplink_down()

            def _send(self, code, body, headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def keys():
    priv = new_private_key()
    return priv, public_key_of(priv)


@pytest.fixture
def releases(tmp_path, keys):
    out = tmp_path / "releases"
    out.mkdir()
    write_bundle(out, "scanner", "0.4.0", 6, FILES, keys[0], created_ms=1)
    return out


@pytest.fixture
def bundles(releases):
    s = BundleServer(releases)
    yield s
    s.close()


class FakeClock:
    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class KitAgent:
    """The agent daemon on the test broker, with its update offers; ``acks()`` as the fleet sees them."""

    def __init__(self, broker, tmp_path: Path, pub: bytes | None, *, quiet_s: float = 0.0, clock=None,
                 start_selfupdate=None, host: str | None = HOST, port: int | None = PORT, serve: bool | None = None):
        path = tmp_path / "kit.toml"
        path.write_text(KIT)
        self.manifest = load_manifest(path)
        self.data = tmp_path / "agent"
        self.data.mkdir(exist_ok=True)
        self.broker = broker
        self.cache = UpdateCache(self.data / "updates", pub)
        self.fetcher = BundleFetcher(self.cache, timeout_s=5, backoff_s=0.05, backoff_cap_s=0.2)
        self.started: list[tuple[str, Path]] = []
        self.acks_seen = Collector(broker.url, [topic("uk", "uk-agent", "ack"), topic("uk", "uk-agent", "state")])
        self.link = FleetLink("uk", "uk-agent", "agent", broker.url, self.data / "outbox.db").start()
        # the link's state follows its subscriptions on one connection: once it is out, commands reach it
        wait_until(lambda: any(p and decode("state", p).boot == self.link.boot and decode("state", p).online
                               for p in self.acks_seen.on("/state")), 10, what="the agent's link subscribed")
        self.watch = StateWatch("uk", broker.url).start()
        self.hw = open_hardware(self.manifest, SimulatedKit())
        self.agent = Agent(self.manifest, self.link, self.hw, self.watch, self.data, simulate=True)
        self.offers = UpdateOffers(self.manifest, broker.url, self.data, self.cache, self.link.ack, host=host,
                                   port=port, serve=serve, fetcher=self.fetcher, quiet_s=quiet_s, clock=clock or time.time,
                                   start_selfupdate=start_selfupdate or (lambda v, b: self.started.append((v, b))))
        self.agent.offers = self.offers.start()
        wait_until(self.offers.connected.is_set, 10, what="the offers' session at the kit broker")
        self.loop = asyncio.new_event_loop()

        async def main():
            poll = asyncio.create_task(self.offers.run(period_s=0.05))
            try:
                await self.agent.run()
            finally:
                poll.cancel()
                await self.hw.close()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(main(),), daemon=True)
        self.thread.start()
        wait_until(lambda: self.agent._running.is_set(), 10, what="the agent running")
        self.pub = publisher(broker.url)

    def command(self, cid: str, release: str, device: str, url: str, manifest_sha256: str, **more) -> None:
        now = int(time.time() * 1000)
        args = {"rollout": 1, "release": release, "device": device, "fw": release, "manifest_sha256": manifest_sha256,
                "size": 0, "url": url, "token": TOKEN, **more}
        cmd = Command(id=cid, ts=now, expires=now + 6 * 3600_000, action="update", args=args)
        self.pub.publish(topic("uk", "uk-agent", "cmd"), encode(cmd), qos=1).wait_for_publish(5)

    def acks(self) -> dict[str, tuple[str, str | None]]:
        out = {}
        for payload in self.acks_seen.on("/ack"):
            a = decode("ack", payload)
            out[a.cmd_id] = (a.status, a.detail)
        return out

    def ack(self, cid: str, timeout: float = 30.0) -> tuple[str, str | None]:
        return wait_until(lambda: self.acks().get(cid), timeout, what=f"the ack of {cid}")

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.loop.call_soon_threadsafe(self.agent.stop)
        self.thread.join(15)
        self.offers.stop()
        self.watch.stop()
        self.link.stop(flush_s=1)
        self.pub.disconnect()
        self.pub.loop_stop()
        self.acks_seen.close()


@pytest.fixture
def kit_agent(broker, tmp_path, keys):
    made = []

    def make(pub=keys[1], **kw) -> KitAgent:
        k = KitAgent(broker, tmp_path, pub, **kw)
        made.append(k)
        return k

    yield make
    for k in made:
        k.stop()


def sha(folder: Path) -> str:
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


def retained_offers(broker) -> dict[str, bytes]:
    """What a device subscribing now would be handed: the retained update topics at the broker, as
    of the messages that reach a subscriber within a moment (a withdrawal still on its way to the
    broker arrives live, after the retained offer it clears)."""
    c = Collector(broker.url, [subscription("update", kit="uk")])
    try:
        time.sleep(0.3)  # retained messages arrive right after the subscription (no timing is asserted)
        offers: dict[str, bytes] = {}
        with c._lock:
            for t, p, _retained in c.messages:
                if p:
                    offers[t.split("/")[3]] = p
                else:
                    offers.pop(t.split("/")[3], None)
        return offers
    finally:
        c.close()


# ---------------------------------------------------------------- tests


def test_one_fetch_for_two_doors_resumes_after_an_uplink_cut_and_offers_each(kit_agent, bundles, releases, broker):
    k = kit_agent()
    rel = releases / "scanner-0.4.0"
    bundles.cut_after = 100_000  # app_main.mpy is 300 KB: the uplink drops a third of the way in
    k.command("c1", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), sha(rel))
    k.command("c2", "scanner-0.4.0", "door-2", bundles.url("scanner-0.4.0"), sha(rel))
    assert bundles.down.wait(20), "the uplink never dropped"
    wait_until(lambda: k.fetcher.counts["retries"] >= 2, 20, what="retries against the dropped uplink")
    assert k.cache.folder("scanner-0.4.0") is None  # not whole yet: no device may start on it
    bundles.uplink_up()

    assert k.ack("c1") == ("ok", "offered scanner-0.4.0 to door-1")
    assert k.ack("c2") == ("ok", "offered scanner-0.4.0 to door-2")
    assert k.fetcher.counts["fetches"] == 1  # one fetch for the two doors
    # nothing downloaded twice: every file's bytes went over the uplink exactly once, cut or not
    # (an empty file is whole from the start: never asked for)
    assert bundles.files_sent("scanner-0.4.0") == {p: len(b) for p, b in FILES.items() if b}
    assert sum(bundles.files_sent("scanner-0.4.0").values()) == sum(map(len, FILES.values()))
    folder = k.cache.folder("scanner-0.4.0")
    assert folder is not None and (folder / "files" / "app_main.mpy").read_bytes() == APP

    offers = retained_offers(broker)
    assert set(offers) == {"door-1", "door-2"}
    for device, cid in (("door-1", "c1"), ("door-2", "c2")):
        offer = decode("update", offers[device])
        assert (offer.id, offer.release, offer.fw, offer.host, offer.port, offer.rollback) == (
            cid, "scanner-0.4.0", "scanner-0.4.0", HOST, PORT, False)

    # the same release again (a later rollout's door) is not fetched again: it is cached whole
    asked = len(bundles.requests)
    k.command("c3", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), sha(rel))
    assert k.ack("c3")[0] == "ok"
    assert len(bundles.requests) == asked and k.fetcher.counts["fetches"] == 1


def test_refused_bundles_are_acked_error_with_the_reason_and_leave_nothing(kit_agent, bundles, releases, broker, keys,
                                                                           tmp_path):
    k = kit_agent()
    # another release key signed this one
    other = new_private_key()
    write_bundle(releases, "scanner", "0.5.0", 6, FILES, other, created_ms=2)
    k.command("bad-sig", "scanner-0.5.0", "door-1", bundles.url("scanner-0.5.0"), sha(releases / "scanner-0.5.0"))
    status, why = k.ack("bad-sig")
    assert status == "error" and why.startswith("bundle: bad signature"), why

    # a file changed after signing: found once the file is whole, and nothing of it is kept
    write_bundle(releases, "scanner", "0.6.0", 6, FILES, keys[0], created_ms=3)
    app = releases / "scanner-0.6.0" / "files" / "app_main.mpy"
    app.write_bytes(b"X" + APP[1:])
    k.command("bad-hash", "scanner-0.6.0", "door-1", bundles.url("scanner-0.6.0"), sha(releases / "scanner-0.6.0"))
    status, why = k.ack("bad-hash")
    assert status == "error" and why == "bundle: hash mismatch: files/app_main.mpy is not the file that was signed", why

    # a manifest other than the one the fleet named, and a token the fleet refuses
    k.command("bad-sha", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), "0" * 64)
    assert k.ack("bad-sha") == ("error", "bundle: manifest.json is not the one the fleet named (manifest_sha256 differs)")
    k.command("bad-token", "scanner-0.4.0", "door-2", bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0"),
              token="stolen")
    assert k.ack("bad-token") == ("error", "fetch: manifest.json: HTTP 401 (token refused)")

    assert k.cache.names() == []
    assert not any((k.cache.root / ".partial").iterdir())  # no half bundle left behind either
    assert retained_offers(broker) == {}
    assert k.offers.counts["errors"] == 4 and k.offers.counts["published"] == 0


def test_commands_the_agent_can_never_take_are_rejected_before_any_fetch(kit_agent, bundles, releases, tmp_path):
    k = kit_agent()
    url, digest = bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0")
    k.command("not-ours", "scanner-0.4.0", "door-9", url, digest)
    k.command("wrong-role", "lighting-0.4.0", "door-1", url, digest)
    k.command("bad-args", "scanner-0.4.0", "door-1", url, "not-a-digest")
    k.command("agent-for-door", "agent-0.2.0", "door-1", url, digest)
    assert k.ack("not-ours") == ("rejected", "door-9 is not an ESP32 of kit uk")
    assert k.ack("wrong-role") == ("rejected", "door-1 is a scanner, not a lighting")
    status, why = k.ack("bad-args")
    assert status == "rejected" and why.startswith("update: bad args: manifest_sha256"), why
    assert k.ack("agent-for-door") == ("rejected", "an agent release is for uk-agent, not door-1")
    assert bundles.requests == []
    assert k.offers.counts["rejected"] == 4


def test_an_agent_without_the_release_public_key_rejects_updates(kit_agent, bundles, releases):
    k = kit_agent(pub=None)
    k.command("no-key", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0"))
    assert k.ack("no-key") == ("rejected", "no release public key is configured (POPKIT_RELEASE_PUBKEY): "
                                           "bundles are refused")
    assert bundles.requests == []


def checkin(pub, device: str) -> None:
    from kits.contract import Event

    ev = Event(boot="abcd", seq=1, ts=int(time.time() * 1000), kind="checkin",
               data={"event": "EV-1", "ticket": "T1", "verdict": "admitted"})
    pub.publish(topic("uk", device, "event"), encode(ev), qos=1).wait_for_publish(5)


def test_an_offer_waits_while_the_kit_is_in_use_and_survives_a_restart(kit_agent, bundles, releases, broker):
    clock = FakeClock()
    k = kit_agent(quiet_s=600, clock=clock)
    clock.t += 601  # quiet since the agent's start
    checkin(k.pub, "door-2")  # ... until a door checks someone in
    wait_until(lambda: k.offers.last_door == "door-2", 10, what="the check-in seen by the offers")
    k.command("c1", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0"))
    wait_until(lambda: k.offers.counts["deferred"] == 1, 20, what="the offer deferred")
    assert k.offers.in_use().startswith("kit in use: a check-in at door-2 0s ago")
    assert retained_offers(broker) == {} and "c1" not in k.acks()  # not told, so not acked

    clock.t += 599  # still in use
    k.offers.poll()
    assert retained_offers(broker) == {}

    # the agent restarts with the offer pending: kept on disk, the new agent counts the kit as in use
    k.stop()
    clock.t += 1
    k2 = kit_agent(quiet_s=600, clock=clock)
    assert k2.offers.offers["door-1"]["published"] is False
    k2.offers.poll()
    assert retained_offers(broker) == {}
    clock.t += 600  # quiet: out it goes, and the command is acked by the agent that published it
    assert k2.ack("c1") == ("ok", "offered scanner-0.4.0 to door-1")
    assert decode("update", retained_offers(broker)["door-1"]).id == "c1"


def test_offers_wait_for_an_update_server_that_could_not_listen_yet(kit_agent, bundles, releases, broker):
    k = kit_agent(host=None, port=None, serve=True)  # POPKIT_UPDATE_LISTEN set, its address not up yet
    k.command("c1", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0"))
    wait_until(lambda: k.offers.counts["deferred"] == 1, 20, what="the offer waiting for the server")
    assert retained_offers(broker) == {} and "c1" not in k.acks()
    k.offers.serving("10.42.0.1", 8468)  # the kit's interface came up: the server listens
    assert k.ack("c1") == ("ok", "offered scanner-0.4.0 to door-1")
    offer = decode("update", retained_offers(broker)["door-1"])
    assert (offer.host, offer.port) == ("10.42.0.1", 8468)

    # and an agent with no update server configured refuses ESP32 releases outright
    k.stop()
    k2 = kit_agent(host=None, port=None)
    k2.command("c2", "scanner-0.4.0", "door-2", bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0"))
    assert k2.ack("c2") == ("rejected", "no update server on the kit network (POPKIT_UPDATE_LISTEN is not set)")


def state(device: str, fw: str, ts: int, update: dict | None = None) -> bytes:
    s = {"boot": "beef", "seq": 0, "ts": ts, "online": True, "role": "scanner", "fw": fw}
    if update is not None:
        s["update"] = update
    return json.dumps(s).encode()


def test_an_offer_is_withdrawn_once_the_door_reports_the_release_committed(kit_agent, bundles, releases, broker):
    k = kit_agent()
    url, digest = bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0")
    k.command("c1", "scanner-0.4.0", "door-1", url, digest)
    k.command("c2", "scanner-0.4.0", "door-2", url, digest)
    k.ack("c1"), k.ack("c2")
    offered_ms = k.offers.offers["door-1"]["offer"]["ts"]
    st = topic("uk", "door-1", "state")
    # old news: a failure of this fw retained from a try long before this offer withdraws nothing,
    # and neither does a trial of it
    k.pub.publish(st, state("door-1", "scanner-0.3.0", offered_ms - 3600_000,
                            {"state": "failed", "why": "tag mismatch", "fw": "scanner-0.4.0"}), qos=1, retain=True)
    k.pub.publish(topic("uk", "door-2", "state"), state("door-2", "scanner-0.4.0", offered_ms,
                                                        {"state": "trial"}), qos=1, retain=True).wait_for_publish(5)
    time.sleep(0.3)  # let them arrive (what follows asserts state, not time)
    assert set(retained_offers(broker)) == {"door-1", "door-2"}

    k.pub.publish(st, state("door-1", "scanner-0.4.0", offered_ms + 5000,
                            {"state": "committed", "why": "healthy 60 s"}), qos=1, retain=True)
    wait_until(lambda: "door-1" not in k.offers.offers, 10, what="door-1's offer withdrawn")
    k.pub.publish(topic("uk", "door-2", "state"), state("door-2", "scanner-0.3.0", offered_ms + 5000,
                                                        {"state": "rolled_back", "why": "never healthy in 300 s",
                                                         "fw": "scanner-0.4.0"}), qos=1, retain=True)
    wait_until(lambda: "door-2" not in k.offers.offers, 10, what="door-2's offer withdrawn")
    assert retained_offers(broker) == {}
    assert json.loads((k.data / "update-offers.json").read_text()) == {"offers": {}}
    assert k.offers.counts["withdrawn"] == 2


def test_an_agent_release_is_fetched_then_starts_the_self_update(kit_agent, bundles, releases, keys, tmp_path, broker):
    write_bundle(releases, "agent", "0.2.0", None, {"popkit-0.2.0-py3-none-any.whl": b"wheel" * 1000,
                                                      "requirements.txt": b"popkit==0.2.0\n"}, keys[0], created_ms=4)
    k = kit_agent()
    (k.data / "updates").mkdir(parents=True, exist_ok=True)
    (k.data / "updates" / RESULT_FILE).write_text('{"status": "rolled_back", "version": "0.1.5", "reason": "x"}')
    k.command("a1", "agent-0.2.0", "uk-agent", bundles.url("agent-0.2.0"), sha(releases / "agent-0.2.0"))
    assert k.ack("a1") == ("ok", "self-update to 0.2.0 started")
    folder = k.cache.folder("agent-0.2.0")
    assert k.started == [("0.2.0", folder)]  # what the unit gets as %i, and the cached bundle it installs
    assert not (k.data / "updates" / RESULT_FILE).exists()  # the last outcome is old news now
    assert retained_offers(broker) == {}  # an agent release is offered to nobody

    # the updater (run here as the unit would, on a bundle that cannot install: not an agent's key)
    # writes its outcome where the agent reads it at its next start
    pub = tmp_path / "release.pub"
    pub.write_text(public_key_of(new_private_key()).hex())
    code = selfupdate.main(["--bundle", str(folder), "--pubkey", str(pub), "--root", str(tmp_path / "opt"),
                            "--kit", str(tmp_path / "kit.toml"), "--result", str(k.data / "updates" / RESULT_FILE)])
    assert code == 1
    report = agent_update_report(k.data)
    assert report.state == "failed" and report.fw == "agent-0.2.0" and report.why.startswith("bad signature")


def test_the_agent_state_carries_its_last_self_update_rollback(broker, tmp_path):
    data = tmp_path / "agent"
    (data / "updates").mkdir(parents=True)
    (data / "updates" / RESULT_FILE).write_text(json.dumps(
        {"status": "rolled_back", "version": "0.2.0", "previous": "0.1.0", "reason": "self-test: not ready"}))
    states = Collector(broker.url, [topic("uk", "uk-agent", "state")])
    link = FleetLink("uk", "uk-agent", "agent", broker.url, data / "outbox.db", fw="agent-0.1.0")
    link.update = agent_update_report(data)
    link.start()
    try:
        got = wait_until(lambda: [decode("state", p) for p in states.on("/state") if p], 10, what="the agent's state")
        s = got[-1]
        assert s.fw == "agent-0.1.0"
        assert s.update.model_dump() == {"state": "rolled_back", "why": "self-test: not ready", "fw": "agent-0.2.0"}
    finally:
        link.stop()
        states.close()
    (data / "updates" / RESULT_FILE).write_text('{"status": "committed", "version": "0.2.0"}')
    assert agent_update_report(data) is None  # a commit needs no news: the fw says it


def test_popkit_agent_run_takes_the_command_and_offers_its_own_update_server(broker, bundles, releases, keys, tmp_path):
    """The agent as the service starts it (settings file, its update server on a free port): the
    offer names that server, and a door asking it for the manifest gets it, tagged with its key."""
    import http.client
    import signal
    import socket
    import subprocess
    import sys

    from kits.release import device_tag

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    door_key = bytes(range(32))
    (tmp_path / "update-keys.json").write_text(json.dumps({"door-1": door_key.hex()}))
    (tmp_path / "update-keys.json").chmod(0o600)
    (tmp_path / "release.pub").write_text(keys[1].hex())
    (tmp_path / "kit.toml").write_text(KIT)
    data = tmp_path / "data"
    (tmp_path / "agent.env").write_text(
        f"POPKIT_MQTT_URL={broker.url}\nPOPKIT_AGENT_DATA={data}\nPOPKIT_UPDATE_LISTEN=127.0.0.1\n"
        f"POPKIT_UPDATE_PORT={port}\nPOPKIT_UPDATE_KEYS={tmp_path / 'update-keys.json'}\n"
        f"POPKIT_RELEASE_PUBKEY={tmp_path / 'release.pub'}\nPOPKIT_UPDATE_QUIET_S=0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPKIT_")}
    acks = Collector(broker.url, [topic("uk", "uk-agent", "ack"), topic("uk", "uk-agent", "state")])
    proc = subprocess.Popen([str(Path(sys.executable).with_name("popkit")), "agent", "run", "--kit",
                             str(tmp_path / "kit.toml"), "--simulate", "--env", str(tmp_path / "agent.env")],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "agent.log", "wb"))
    pub = publisher(broker.url)
    try:
        # its state comes after its subscriptions (one connection, in order): a command now reaches it
        wait_until(lambda: any(p and decode("state", p).online for p in acks.on("/state")), 30,
                   what="the agent online")
        now = int(time.time() * 1000)
        rel = releases / "scanner-0.4.0"
        cmd = Command(id="run-1", ts=now, expires=now + 3600_000, action="update", args={
            "rollout": 1, "release": "scanner-0.4.0", "device": "door-1", "fw": "scanner-0.4.0",
            "manifest_sha256": sha(rel), "size": 0, "url": bundles.url("scanner-0.4.0"), "token": TOKEN})
        pub.publish(topic("uk", "uk-agent", "cmd"), encode(cmd), qos=1).wait_for_publish(5)
        ack = wait_until(lambda: [decode("ack", p) for p in acks.on("/ack") if decode("ack", p).cmd_id == "run-1"],
                         30, what="the agent's ack")[0]
        assert (ack.status, ack.detail) == ("ok", "offered scanner-0.4.0 to door-1"), (tmp_path / "agent.log").read_text()
        offer = decode("update", retained_offers(broker)["door-1"])
        assert (offer.host, offer.port) == ("127.0.0.1", port)

        conn = http.client.HTTPConnection(offer.host, offer.port, timeout=5)  # the door, as its download starts
        conn.request("GET", f"/updates/{offer.release}/manifest.json", headers={"X-Popkit-Device": "door-1"})
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 200 and body == (rel / "manifest.json").read_bytes()
        assert r.getheader("X-Popkit-Tag") == device_tag(door_key, body).hex()
    finally:
        pub.disconnect()
        pub.loop_stop()
        acks.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_an_offer_to_a_door_already_running_the_release_is_withdrawn_once_out(kit_agent, bundles, releases, broker):
    k = kit_agent()
    k.pub.publish(topic("uk", "door-1", "state"), state("door-1", "scanner-0.4.0", int(time.time() * 1000)),
                  qos=1, retain=True).wait_for_publish(5)
    wait_until(lambda: "door-1" in k.offers.states, 10, what="door-1's state seen")
    k.command("c1", "scanner-0.4.0", "door-1", bundles.url("scanner-0.4.0"), sha(releases / "scanner-0.4.0"))
    assert k.ack("c1") == ("ok", "offered scanner-0.4.0 to door-1")
    wait_until(lambda: not k.offers.offers, 10, what="the offer withdrawn")
    assert retained_offers(broker) == {} and k.offers.counts["withdrawn"] == 1


def test_a_fetch_cut_by_an_agent_restart_resumes_from_the_partial_fill(bundles, releases, keys, tmp_path):
    """The first agent's fetch dies with it mid-file (the uplink was down when it stopped); the next
    agent, given the same command again, asks only for what the partial fill lacks."""
    from kits.contract import UpdateCommandArgs

    args = UpdateCommandArgs(rollout=1, release="scanner-0.4.0", device="door-1", fw="scanner-0.4.0",
                             manifest_sha256=sha(releases / "scanner-0.4.0"), size=0,
                             url=bundles.url("scanner-0.4.0"), token=TOKEN)
    root = tmp_path / "updates"
    bundles.cut_after = 150_000

    async def first():
        task = asyncio.ensure_future(BundleFetcher(UpdateCache(root, keys[1]), backoff_s=0.05,
                                                   backoff_cap_s=0.1).fetch(args))
        while not bundles.down.is_set():
            await asyncio.sleep(0.02)
        task.cancel()  # the agent stops
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(first())
    assert UpdateCache(root, keys[1]).names() == []
    bundles.uplink_up()
    again = BundleFetcher(UpdateCache(root, keys[1]))
    folder = asyncio.run(again.fetch(args))
    assert (folder / "files" / "app_main.mpy").read_bytes() == APP
    assert bundles.files_sent("scanner-0.4.0") == {p: len(b) for p, b in FILES.items() if b}
    assert again.counts["bytes"] == sum(map(len, FILES.values())) - 150_000  # only what the first lacked


def test_a_bundle_the_kits_card_has_no_room_for_is_refused_before_its_files(bundles, releases, keys, tmp_path):
    from agent.updates.fetch import RESERVE, FetchError
    from kits.contract import UpdateCommandArgs

    args = UpdateCommandArgs(rollout=1, release="scanner-0.4.0", device="door-1", fw="scanner-0.4.0",
                             manifest_sha256=sha(releases / "scanner-0.4.0"), size=0,
                             url=bundles.url("scanner-0.4.0"), token=TOKEN)
    total = sum(map(len, FILES.values()))
    full = BundleFetcher(UpdateCache(tmp_path / "updates", keys[1]), disk_free=lambda _p: RESERVE + total - 1)
    with pytest.raises(FetchError) as refused:
        asyncio.run(full.fetch(args))
    assert str(refused.value) == (f"bundle: {total} bytes to fetch and {RESERVE + total - 1} free on the kit's card "
                                  "(64 MB stay free for its outbox)")
    assert bundles.files_sent("scanner-0.4.0") == {}  # not a byte of the files
    roomy = BundleFetcher(UpdateCache(tmp_path / "updates", keys[1]), disk_free=lambda _p: RESERVE + total)
    assert asyncio.run(roomy.fetch(args)).name == "scanner-0.4.0"


def test_a_command_that_reaches_the_agent_while_it_starts_waits_for_its_handler(broker, tmp_path):
    """The fleet sends what is unanswered as soon as the agent's birth reaches it, which may be before
    the agent's loop runs commands: such a command is held, not rejected (an update refused for
    that would fail its device)."""
    acks = Collector(broker.url, [topic("uk", "uk-agent", "ack"), topic("uk", "uk-agent", "state")])
    link = FleetLink("uk", "uk-agent", "agent", broker.url, tmp_path / "outbox.db", hold_commands=True).start()
    pub = publisher(broker.url)
    try:
        wait_until(lambda: any(p and decode("state", p).online for p in acks.on("/state")), 10, what="the link up")
        now = int(time.time() * 1000)
        for cid, expires in (("early", now + 3600_000), ("stale", now + 300)):
            pub.publish(topic("uk", "uk-agent", "cmd"), encode(Command(id=cid, ts=now, expires=expires,
                                                                        action="selftest")), qos=1).wait_for_publish(5)
        wait_until(lambda: len(link._held_cmds) == 2, 10, what="both commands held")
        time.sleep(0.4)  # "stale" expires while it waits
        ran = []
        link.set_command_handler(lambda device, cmd: (ran.append((device, cmd.id)),
                                                      link.ack(device, cmd.id, "ok")))
        assert ran == [("uk-agent", "early")]
        got = wait_until(lambda: {a.cmd_id: a.status for a in (decode("ack", p) for p in acks.on("/ack"))}
                         if len(acks.on("/ack")) >= 2 else None, 10, what="both answered")
        assert got == {"early": "ok", "stale": "expired"}
    finally:
        pub.disconnect()
        pub.loop_stop()
        link.stop()
        acks.close()
