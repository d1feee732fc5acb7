"""Rollouts delivered (fleet/updates/worker.py, fleet/api/routes/bundle.py), through a real Mosquitto,
on real SQLite and PostgreSQL: the worker turns each offer into an ``update`` command to the kit's
agent, whose token the bundle route accepts for that release only; the agent's error acks and the
devices' failed states (published as they would be) pause the rollout at its error threshold; a kit
in its show or in use waits, then is offered; an offer with no news times out; and the bundle route's
Range, 416, 401 and 403."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from fleet.api.app import create_app
from fleet.api.routes import bundle as bundle_route
from fleet.auth.testing import ops_client
from fleet.db import now_ms
from fleet.service import build
from fleet.settings import FleetSettings
from fleet.updates.model import KitWindow, kit_wait
from fleet.updates.tokens import mint
from fleet.updates.worker import RolloutWorker
from kits.contract import Ack, Command, Event, UpdateCommandArgs, decode, encode
from kits.release import MANIFEST, SIGNATURE, new_private_key, public_key_of
from tests.conftest import Collector, publisher, wait_until
from tests.test_updates_api import bundle, kit_toml, upload_body

PUBLIC = "https://fleet.example:8443"
HOUR = 3_600_000


@pytest.fixture(params=["sqlite", "postgresql"])
def line(request, tmp_path, broker):
    """The fleet (ingest + API + a rollout worker not started: the test ticks it) on a real broker, with
    kit alpha (4 scanners, no show) and kit beta (2 scanners, in its show now); a collector of every
    command; a paho client to publish as the kits' devices and agents do."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ends = now + timedelta(hours=2)
    kits = []
    for name, text in (("alpha", kit_toml("alpha", 4)), ("beta", kit_toml("beta", 2, (now - timedelta(hours=1), ends)))):
        (tmp_path / f"{name}.toml").write_text(text)
        kits.append(str(tmp_path / f"{name}.toml"))
    pem = new_private_key()
    (tmp_path / "release.pub").write_text(public_key_of(pem).hex() + "\n")
    settings = FleetSettings(mqtt_url=broker.url, db_url=url, kits=kits, client_id=f"fleet-{tmp_path.name[-8:]}",
                             batch_wait_ms=5, release_pubkey=str(tmp_path / "release.pub"),
                             release_dir=str(tmp_path / "releases"), public_url=PUBLIC + "/")
    store, ingest = build(settings)
    ingest.start()
    assert ingest.connected.wait(10), "fleet did not connect to the broker"
    app = create_app(store, ingest, settings=settings)
    cmds = Collector(broker.url, ["popkit/v1/+/+/cmd"])
    pub = publisher(broker.url)
    w = type("Line", (), dict(store=store, ingest=ingest, app=app, settings=settings, pem=pem, tmp=tmp_path,
                              ops=ops_client(app, "ops-olga"), anon=TestClient(app), cmds=cmds, pub=pub,
                              ends_ms=int(ends.timestamp() * 1000), seq=[0],
                              worker=RolloutWorker(store, app.state.publisher, settings, key=app.state.auth.key)))
    yield w
    pub.loop_stop()
    cmds.close()
    ingest.stop()
    store.close()


def upload(line, version: str = "0.4.0") -> dict:
    r = line.ops.post("/api/v1/releases", json=upload_body(bundle(line, version)))
    assert r.status_code == 201, r.text
    return r.json()


def rollout(line, **body) -> int:
    r = line.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def devices(line, rid: int) -> dict[str, tuple[str, str | None]]:
    got = line.ops.get(f"/api/v1/rollouts/{rid}").json()
    return {d["device_id"]: (d["state"], d["reason"]) for d in got["device_updates"]}


def update_commands(line, n: int) -> list[tuple[str, Command]]:
    """The first ``n`` update commands seen on the broker: (topic, command)."""
    wait_until(lambda: len(line.cmds.on("/cmd")) >= n, what=f"{n} update command(s) on the broker")
    with line.cmds._lock:
        return [(t, decode("cmd", p)) for t, p, _ in line.cmds.messages][:n]


def publish(line, topic: str, payload: bytes, retain: bool = False) -> None:
    line.pub.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)


def agent_acks(line, kit: str, cmd: Command, status: str, detail: str | None = None) -> None:
    line.seq[0] += 1
    publish(line, f"popkit/v1/{kit}/{kit}-agent/ack", encode(Ack(boot="a901", seq=line.seq[0], ts=now_ms(),
                                                                   cmd_id=cmd.id, status=status, detail=detail)))


def device_says(line, device: str, update: dict, fw: str = "scanner-0.3.0") -> None:
    """A device's retained state, as the firmware publishes it, with its A/B news."""
    body = {"boot": "d00d", "seq": 0, "ts": now_ms(), "online": True, "role": "scanner", "fw": fw,
            "reason": "birth", "clock": "synced", "update": update}
    publish(line, f"popkit/v1/{device.split('-')[0]}/{device}/state", json.dumps(body).encode(), retain=True)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------- the command and its token

def test_the_worker_sends_an_update_command_whose_token_the_bundle_route_takes_for_that_release_only(line):
    rel = upload(line)
    upload(line, "0.5.0")
    rid = rollout(line, kits=["alpha"], groups=[1, "100%"])
    [sent] = line.worker.tick()
    assert sent["device"] == "alpha-scanner-0" and sent["agent"] == "alpha-agent"
    [(topic, cmd)] = update_commands(line, 1)
    assert topic == "popkit/v1/alpha/alpha-agent/cmd" and cmd.action == "update" and cmd.id == sent["command"]
    assert cmd.expires - cmd.ts == 6 * HOUR  # a slow fetch through the kit's uplink still acks in time
    args = UpdateCommandArgs.model_validate(cmd.args)
    assert (args.rollout, args.release, args.device, args.fw) == (rid, "scanner-0.4.0", "alpha-scanner-0", "scanner-0.4.0")
    assert (args.manifest_sha256, args.size, args.downgrade) == (rel["manifest_sha256"], rel["size"], False)
    assert args.url == f"{PUBLIC}/api/v1/releases/scanner-0.4.0/bundle/"  # public_url, its trailing / dropped
    assert devices(line, rid)["alpha-scanner-0"] == ("offered", None)
    # The device's own view and its kit's show where its update is.
    shown = {"state": "offered", "why": None, "fw": "scanner-0.4.0", "rollout": rid, "release": "scanner-0.4.0"}
    got = line.ops.get("/api/v1/devices/alpha-scanner-0").json()["update"]
    assert {k: got[k] for k in shown} == shown
    kit = {d["id"]: d["update"] for d in line.ops.get("/api/v1/kits/alpha").json()["devices"]}
    assert {k: kit["alpha-scanner-0"][k] for k in shown} == shown and kit["alpha-agent"] is None
    assert kit["alpha-scanner-1"]["state"] == "waiting" and kit["alpha-scanner-1"]["why"].startswith("group 2 waits")
    # The command is the fleet's record too: pending until the agent answers.
    assert line.ops.get("/api/v1/devices/alpha-agent/commands").json()[0]["status"] == "pending"

    path = args.url[len(PUBLIC):]
    kept = line.tmp / "releases" / "scanner-0.4.0"
    r = line.anon.get(path + "manifest.json", headers=bearer(args.token))
    assert r.status_code == 200 and r.content == (kept / MANIFEST).read_bytes()
    assert r.headers["etag"] == f'"{rel["manifest_sha256"]}"'
    r = line.anon.get(path + "manifest.sig", headers=bearer(args.token))
    assert r.status_code == 200 and r.content == (kept / SIGNATURE).read_bytes()
    r = line.anon.get(path + "files/scanner.mpy", headers=bearer(args.token))
    assert r.status_code == 200 and r.content == b"M\x06 scanner" and r.headers["accept-ranges"] == "bytes"
    # ... and not another release's bundle, nor with a token that expired or was tampered with.
    assert line.anon.get("/api/v1/releases/scanner-0.5.0/bundle/manifest.json", headers=bearer(args.token)).status_code == 403
    expired = mint(line.app.state.auth.key, "alpha", "scanner-0.4.0", 60, now=time.time() - 120)
    r = line.anon.get(path + "manifest.json", headers=bearer(expired))
    assert r.status_code == 401 and "expired" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    kit, rest = args.token.split(".", 1)
    for bad in (f"beta.{rest}", args.token[:-2] + ("AA" if not args.token.endswith("AA") else "BB"), "x", ""):
        assert line.anon.get(path + "manifest.json", headers=bearer(bad)).status_code == 401, bad
    # A user's token is not a bundle token.
    assert line.ops.get(path + "manifest.json").status_code == 401


def test_the_bundle_route_serves_ranges_and_refuses_what_it_must_counting_each_refusal(line):
    upload(line)
    token = mint(line.app.state.auth.key, "alpha", "scanner-0.4.0", 600)
    files = "/api/v1/releases/scanner-0.4.0/bundle/files/"
    whole = line.anon.get(files + "app_main.mpy", headers=bearer(token)).content
    assert whole == b"M\x06 app 0.4.0"
    before = dict(bundle_route.REFUSED)

    def get(path: str, rng: str | None = None, token: str | None = token):
        return line.anon.get(path, headers={**(bearer(token) if token else {}), **({"Range": rng} if rng else {})})

    r = get(files + "app_main.mpy", "bytes=2-5")
    assert (r.status_code, r.content, r.headers["content-range"]) == (206, whole[2:6], f"bytes 2-5/{len(whole)}")
    r = get(files + "app_main.mpy", "bytes=4-")  # the rest: how an agent resumes
    assert (r.status_code, r.content, r.headers["content-range"]) == (206, whole[4:], f"bytes 4-{len(whole) - 1}/{len(whole)}")
    r = get(files + "app_main.mpy", f"bytes=3-{len(whole) + 50}")  # an end past the file is clipped to it
    assert (r.status_code, r.content) == (206, whole[3:])
    for rng in (f"bytes={len(whole)}-", "bytes=5-2", "bytes=0-1,4-5", "bytes=-3", "lines=1-2"):
        r = get(files + "app_main.mpy", rng)
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(whole)}", rng
    assert get(files + "nope.mpy").status_code == 404
    assert get(files + "%2e%2e/manifest.json").status_code == 404  # only the manifest's own paths, never joined
    assert get(files + "app_main.mpy", token=None).status_code == 401
    ghost = mint(line.app.state.auth.key, "alpha", "scanner-9.9.9", 600)
    assert get("/api/v1/releases/scanner-9.9.9/bundle/manifest.json", token=ghost).status_code == 404
    assert get("/api/v1/releases/scanner-9.9.9/bundle/manifest.json").status_code == 403
    counted = {k: bundle_route.REFUSED[k] - before.get(k, 0) for k in bundle_route.REASONS}
    assert counted == {"missing_token": 1, "bad_token": 0, "expired_token": 0, "other_release": 1,
                       "unknown_release": 1, "unknown_file": 2, "bad_range": 5}
    shown = line.ops.get("/metrics").text  # the count reaches Prometheus through /metrics
    assert f'popkit_bundle_refused_total{{reason="bad_range"}} {bundle_route.REFUSED["bad_range"]}' in shown


# ---------------------------------------------------------------- acks and states through the broker

def test_error_acks_and_failed_states_pause_the_rollout_at_its_error_threshold(line):
    upload(line)
    rid = rollout(line, kits=["alpha"], groups=["100%"], error_threshold=0.75, rate_per_min=100)
    assert len(line.worker.tick()) == 4
    cmds = {UpdateCommandArgs.model_validate(c.args).device: c for _t, c in update_commands(line, 4)}
    agent_acks(line, "alpha", cmds["alpha-scanner-0"], "error", "bundle: bad signature")
    agent_acks(line, "alpha", cmds["alpha-scanner-1"], "rejected", "no release public key configured")
    agent_acks(line, "alpha", cmds["alpha-scanner-3"], "ok")
    device_says(line, "alpha-scanner-3", {"state": "downloading", "fw": "scanner-0.4.0"})
    wait_until(lambda: devices(line, rid)["alpha-scanner-3"][0] == "downloading", what="scanner 3 downloading")
    got = devices(line, rid)
    assert got["alpha-scanner-0"] == ("failed", "bundle: bad signature")
    assert got["alpha-scanner-1"] == ("failed", "refused by the kit's agent: no release public key configured")
    assert got["alpha-scanner-2"] == ("offered", None)
    line.worker.tick()
    assert line.ops.get(f"/api/v1/rollouts/{rid}").json()["state"] == "running"  # 2/4: under 75 %
    device_says(line, "alpha-scanner-2", {"state": "failed", "why": "hash mismatch files/app_main.mpy",
                                          "fw": "scanner-0.4.0"})
    wait_until(lambda: devices(line, rid)["alpha-scanner-2"][0] == "failed", what="scanner 2 failed")
    assert devices(line, rid)["alpha-scanner-2"] == ("failed", "hash mismatch files/app_main.mpy")
    assert line.worker.tick() == []
    got = line.ops.get(f"/api/v1/rollouts/{rid}").json()
    assert got["state"] == "paused"
    assert got["pause_reason"] == "error threshold: group 1 has 3/4 failed or rolled back (pauses at 75%)"
    # A late answer for a device whose update is over moves nothing.
    agent_acks(line, "alpha", cmds["alpha-scanner-0"], "ok")
    device_says(line, "alpha-scanner-3", {"state": "committed", "fw": "scanner-0.4.0"}, fw="scanner-0.4.0")
    wait_until(lambda: devices(line, rid)["alpha-scanner-3"][0] == "committed", what="scanner 3 committed")
    assert devices(line, rid)["alpha-scanner-0"] == ("failed", "bundle: bad signature")


# ---------------------------------------------------------------- never during a show, nor in use

def test_a_kit_in_its_show_is_skipped_then_offered_once_the_show_ends(line):
    upload(line)
    rid = rollout(line, kits=["beta"], groups=["100%"])
    assert line.worker.tick() == []
    assert {why for _s, why in devices(line, rid).values()} == {f"in show until "
                                                               f"{time.strftime('%H:%M', time.gmtime(line.ends_ms / 1000))} UTC"}
    assert line.cmds.on("/cmd") == []
    sent = line.worker.tick(now=line.ends_ms + 60_000)
    assert sorted(o["device"] for o in sent) == ["beta-scanner-0", "beta-scanner-1"]
    assert {t for t, _c in update_commands(line, 2)} == {"popkit/v1/beta/beta-agent/cmd"}


def test_a_kit_in_use_waits_until_its_last_checkin_is_ten_minutes_old(line):
    upload(line)
    scan = now_ms() - 3 * 60_000
    publish(line, "popkit/v1/alpha/alpha-scanner-2/event", encode(Event(
        boot="c0ffee", seq=1, ts=scan, kind="checkin", data={"event": "GIG-1", "ticket": "T1", "verdict": "admitted"})))
    wait_until(lambda: line.ingest.metrics.ingested >= 1, what="the check-in stored")
    rid = rollout(line, kits=["alpha"], groups=["100%"])
    assert line.worker.tick(now=scan + 3 * 60_000) == []
    assert {why for _s, why in devices(line, rid).values()} == {"in use: last check-in 3 min ago"}
    kit = line.ops.get("/api/v1/kits/alpha/updates").json()
    assert kit["waits"].startswith("in use: last check-in")
    assert line.worker.tick(now=scan + 9 * 60_000) == []
    assert len(line.worker.tick(now=scan + 10 * 60_000 + 1)) == 4


def test_an_offer_with_no_news_from_the_kit_fails_after_the_timeout(line):
    upload(line)
    rid = rollout(line, kits=["alpha"], groups=["100%"], error_threshold=1.0)
    t0 = now_ms()
    assert len(line.worker.tick(now=t0 - 10 * 60_000)) == 4  # offered ten minutes ago
    cmds = {UpdateCommandArgs.model_validate(c.args).device: c for _t, c in update_commands(line, 4)}
    agent_acks(line, "alpha", cmds["alpha-scanner-0"], "ok")  # news: the agent took it
    device_says(line, "alpha-scanner-1", {"state": "downloading", "fw": "scanner-0.4.0"})  # news: it downloads
    wait_until(lambda: devices(line, rid)["alpha-scanner-1"][0] == "downloading", what="scanner 1 downloading")
    wait_until(lambda: any(c["status"] == "ok" for c in line.ops.get("/api/v1/devices/alpha-agent/commands").json()),
               what="the ok ack stored")
    line.worker.tick(now=t0 + 2 * HOUR - 5 * 60_000)  # 2 h after the offer, under 2 h after the ack
    got = devices(line, rid)
    assert got["alpha-scanner-0"] == ("offered", None) and got["alpha-scanner-1"] == ("downloading", None)
    assert got["alpha-scanner-2"] == got["alpha-scanner-3"] == ("failed", "no answer from the kit in 2 h")
    line.worker.tick(now=t0 + 2 * HOUR + 60_000)
    assert devices(line, rid)["alpha-scanner-0"] == ("failed", "no answer from the kit in 2 h")
    assert devices(line, rid)["alpha-scanner-1"] == ("downloading", None)  # it has news: no timeout


def test_a_kit_without_an_agent_is_never_offered_and_says_why():
    assert kit_wait(KitWindow(has_agent=False), 0) == "no agent registered for this kit: nothing to deliver the update through"
    # Show and hold come first: they say when the kit will be free.
    assert kit_wait(KitWindow(held_by="crew-a", has_agent=False), 0) == "held by crew crew-a"
    assert kit_wait(KitWindow(last_checkin_ms=0), 59_999) == "in use: last check-in under a minute ago"
    assert kit_wait(KitWindow(last_checkin_ms=0), 10 * 60_000) is None


def test_the_second_of_two_workers_does_not_step_while_the_first_holds_the_lease(line):
    upload(line)
    other = RolloutWorker(line.store, line.app.state.publisher, line.settings, key=line.app.state.auth.key)
    assert other.tick() == []  # nothing to offer yet, but it took the lease
    rollout(line, kits=["alpha"], groups=["100%"], rate_per_min=100)
    assert line.worker.tick() == []  # the lease is the other's: nothing stepped
    assert line.cmds.on("/cmd") == []
    assert len(other.tick()) == 4
    assert len(update_commands(line, 4)) == 4


def test_an_agent_release_is_committed_once_the_agents_state_reports_its_version(line):
    from kits.release import write_bundle

    folder = write_bundle(line.tmp / "agent-build", "agent", "0.2.0", None,
                          {"requirements.txt": b"popkit==0.2.0\n"}, line.pem, created_ms=now_ms())
    assert line.ops.post("/api/v1/releases", json=upload_body(folder)).status_code == 201
    r = line.ops.post("/api/v1/rollouts", json={"release": "agent-0.2.0", "kits": ["alpha"], "groups": ["100%"]})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    [sent] = line.worker.tick()
    assert (sent["device"], sent["agent"]) == ("alpha-agent", "alpha-agent")  # the agent updates itself
    [(_t, cmd)] = update_commands(line, 1)
    agent_acks(line, "alpha", cmd, "ok")

    def agent_state(fw: str) -> None:
        line.seq[0] += 1
        body = {"boot": "a902", "seq": 0, "ts": now_ms(), "online": True, "role": "agent", "fw": fw,
                "reason": "birth", "clock": "synced"}
        publish(line, "popkit/v1/alpha/alpha-agent/state", json.dumps(body).encode(), retain=True)

    agent_state("agent-0.1.0")  # still the old one (it restarts into the new one once installed)
    wait_until(lambda: line.ingest.metrics.states >= 1, what="the agent's state stored")
    assert devices(line, rid)["alpha-agent"] == ("offered", None)
    agent_state("agent-0.2.0")
    wait_until(lambda: devices(line, rid)["alpha-agent"][0] == "committed", what="the agent's update committed")
    assert devices(line, rid)["alpha-agent"] == ("committed", "runs agent-0.2.0")
