"""Releases and rollouts through the fleet API (fleet/updates/, fleet/api/routes/updates.py), on real
SQLite and PostgreSQL: an upload with a good signature is kept, a bad one refused with its reason and
nothing kept; only ops start, pause, resume or abort a rollout; every such change and every hold is
in the audit log; a held kit and a kit in its show wait, and the rollout says why; device reports
move each update on, and the error threshold pauses the rollout."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from fleet.api.app import create_app
from fleet.auth.testing import client_as, ops_client
from fleet.db import now_ms
from fleet.settings import FleetSettings
from fleet.store import Store
from kits.manifest import parse_manifest
from kits.release import MANIFEST, SIGNATURE, new_private_key, public_key_of, write_bundle

HOUR = 3_600_000


def kit_toml(kit: str, scanners: int, show: tuple[datetime, datetime] | None = None) -> str:
    event = ""
    if show is not None:
        event = f"[event]\ndoors_open = {show[0].isoformat()}\nends = {show[1].isoformat()}\n\n"
    devices = "".join(f'[[devices]]\nid = "{kit}-scanner-{n}"\nrole = "scanner"\nmodel = "esp32-gm65"\n\n'
                      for n in range(scanners))
    return f'id = "{kit}"\nname = "Kit {kit}"\nagent = "{kit}-agent"\n\n{event}{devices}'


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    store = Store.open(url)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    store.registry.register_kit(parse_manifest(kit_toml("alpha", 4)))
    store.registry.register_kit(parse_manifest(kit_toml("beta", 4, (now - timedelta(hours=1), now + timedelta(hours=2)))))
    pem = new_private_key()
    (tmp_path / "release.pub").write_text(public_key_of(pem).hex() + "\n")
    settings = FleetSettings(release_pubkey=str(tmp_path / "release.pub"), release_dir=str(tmp_path / "releases"))
    app = create_app(store, settings=settings)
    w = type("World", (), dict(store=store, app=app, pem=pem, tmp=tmp_path, now=now, ends=now + timedelta(hours=2),
                               ops=ops_client(app, "ops-olga"), crew=client_as(app, "crew-a", "crew", kits=["alpha"]),
                               crew_b=client_as(app, "crew-b", "crew", kits=["beta"])))
    yield w
    store.close()


def bundle(world, version: str = "0.4.0", key: bytes | None = None, role: str = "scanner") -> Path:
    files = {"app_main.mpy": b"M\x06 app " + version.encode(), "scanner.mpy": b"M\x06 scanner"}
    out = world.tmp / f"build-{version}-{len(list(world.tmp.glob('build-*')))}"
    return write_bundle(out, role, version, 6, files, key or world.pem, created_ms=now_ms())


def upload_body(folder: Path) -> dict:
    files = {p.relative_to(folder / "files").as_posix(): base64.b64encode(p.read_bytes()).decode()
             for p in sorted((folder / "files").rglob("*")) if p.is_file()}
    return {"manifest": (folder / MANIFEST).read_text(), "sig": (folder / SIGNATURE).read_bytes().hex(), "files": files}


def upload(world, version: str = "0.4.0") -> dict:
    r = world.ops.post("/api/v1/releases", json=upload_body(bundle(world, version)))
    assert r.status_code == 201, r.text
    return r.json()


# ---------------------------------------------------------------- releases

def test_a_signed_bundle_is_kept_and_listed_and_a_bad_one_is_refused_with_its_reason(world):
    rel = upload(world)
    assert rel["id"] == "scanner-0.4.0" and rel["fw"] == "scanner-0.4.0" and rel["mpy_abi"] == 6
    assert [f["path"] for f in rel["files"]] == ["app_main.mpy", "scanner.mpy"] and rel["created_by"] == "ops-olga"
    kept = world.tmp / "releases" / "scanner-0.4.0"
    assert (kept / "files" / "scanner.mpy").read_bytes() == b"M\x06 scanner" and len((kept / SIGNATURE).read_bytes()) == 64
    assert [r["id"] for r in world.ops.get("/api/v1/releases").json()] == ["scanner-0.4.0"]
    assert world.ops.get("/api/v1/releases/scanner-0.4.0").json() == rel
    first = (kept / MANIFEST).read_bytes()
    again = upload_body(bundle(world))  # the same version built again: other bytes (its created_ms)
    assert again["manifest"].encode() != first
    assert world.ops.post("/api/v1/releases", json=again).status_code == 409  # a version once
    assert (kept / MANIFEST).read_bytes() == first  # and the kept bundle is still the one its row describes

    def refused(body: dict, why: str) -> None:
        r = world.ops.post("/api/v1/releases", json=body)
        assert r.status_code == 422 and why in r.json()["detail"], r.text
        assert world.ops.get("/api/v1/releases/scanner-0.5.0").status_code == 404
        assert not (world.tmp / "releases" / "scanner-0.5.0").exists()
        assert [p.name for p in (world.tmp / "releases").iterdir()] == ["scanner-0.4.0"]  # no leftover

    good = upload_body(bundle(world, "0.5.0"))
    refused(upload_body(bundle(world, "0.5.0", key=new_private_key())), "bad signature")
    refused({**good, "sig": ("00" * 64)}, "bad signature")
    refused({**good, "manifest": good["manifest"].replace('"0.5.0"', '"0.5.1"')}, "bundle refused")
    tampered = dict(good["files"], **{"scanner.mpy": base64.b64encode(b"M\x06 scannex").decode()})
    refused({**good, "files": tampered}, "hash mismatch: files/scanner.mpy")
    refused({**good, "files": {"app_main.mpy": good["files"]["app_main.mpy"]}}, "missing file: files/scanner.mpy")
    refused({**good, "files": {**good["files"], "evil.mpy": ""}}, "extra file not in the manifest: files/evil.mpy")
    assert world.ops.post("/api/v1/releases", json=good).status_code == 201


def test_without_a_release_key_uploads_are_refused_saying_so(world):
    app = create_app(world.store, settings=FleetSettings(release_dir=str(world.tmp / "releases")))
    r = ops_client(app).post("/api/v1/releases", json=upload_body(bundle(world)))
    assert r.status_code == 409 and "POPKIT_RELEASE_PUBKEY" in r.json()["detail"]


def test_a_retired_release_cannot_be_rolled_out_and_one_in_a_rollout_cannot_be_retired(world):
    upload(world, "0.4.0")
    upload(world, "0.5.0")
    assert world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.5.0"}).status_code == 201
    r = world.ops.post("/api/v1/releases/scanner-0.5.0/retire")
    assert r.status_code == 409 and "rollout" in r.json()["detail"]
    r = world.ops.post("/api/v1/releases/scanner-0.4.0/retire")
    assert r.status_code == 200 and r.json()["retired_ms"]
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0"})
    assert r.status_code == 409 and "retired" in r.json()["detail"]
    assert [x["id"] for x in world.ops.get("/api/v1/releases", params={"retired": False}).json()] == ["scanner-0.5.0"]


# ---------------------------------------------------------------- roles and the audit log

def test_crew_cannot_upload_start_or_pause_and_ops_can_and_every_action_is_audited(world):
    body = upload_body(bundle(world))
    assert world.crew.post("/api/v1/releases", json=body).status_code == 403
    assert world.ops.post("/api/v1/releases", json=body).status_code == 201
    assert world.crew.get("/api/v1/releases").status_code == 403
    assert world.crew.post("/api/v1/rollouts", json={"release": "scanner-0.4.0"}).status_code == 403
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "groups": [1, "100%"]})
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    for action in ("pause", "resume", "abort"):
        assert world.crew.post(f"/api/v1/rollouts/{rid}/{action}").status_code == 403
        assert world.crew.get(f"/api/v1/rollouts/{rid}").status_code == 403
    assert world.ops.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409  # running: nothing to resume
    r = world.ops.post(f"/api/v1/rollouts/{rid}/pause", json={"reason": "checking the canary"})
    assert r.status_code == 200 and r.json()["state"] == "paused"
    assert r.json()["pause_reason"] == "by ops-olga: checking the canary"
    assert world.ops.post(f"/api/v1/rollouts/{rid}/resume").json()["state"] == "running"
    assert world.ops.post(f"/api/v1/rollouts/{rid}/abort").json()["state"] == "aborted"
    assert world.ops.post(f"/api/v1/rollouts/{rid}/resume").status_code == 409  # aborted is for good
    assert world.ops.get("/api/v1/rollouts/999").status_code == 404
    assert world.crew.post("/api/v1/kits/alpha/updates/hold", json={"reason": "soundcheck"}).status_code == 200
    assert world.crew.delete("/api/v1/kits/alpha/updates/hold").json() == {"kit_id": "alpha", "lifted": True}

    log = [(e["by"], e["what"], e["target"]) for e in world.ops.get("/api/v1/audit").json()]
    assert log == [
        ("crew-a", "DELETE /api/v1/kits/{kit_id}/updates/hold", "/api/v1/kits/alpha/updates/hold"),
        ("crew-a", "POST /api/v1/kits/{kit_id}/updates/hold", "/api/v1/kits/alpha/updates/hold"),
        ("ops-olga", "POST /api/v1/rollouts/{rollout_id}/abort", f"/api/v1/rollouts/{rid}/abort"),
        ("ops-olga", "POST /api/v1/rollouts/{rollout_id}/resume", f"/api/v1/rollouts/{rid}/resume"),
        ("ops-olga", "POST /api/v1/rollouts/{rollout_id}/pause", f"/api/v1/rollouts/{rid}/pause"),
        ("ops-olga", "POST /api/v1/rollouts", "/api/v1/rollouts"),
        ("ops-olga", "POST /api/v1/releases", "/api/v1/releases"),
    ]  # refused requests (403, 409) are not changes: not logged
    # The crew sees its kit's holds in its audit log, not the other kits' or ops' rollouts.
    assert [e["what"] for e in world.crew.get("/api/v1/audit").json()] == [
        "DELETE /api/v1/kits/{kit_id}/updates/hold", "POST /api/v1/kits/{kit_id}/updates/hold"]


# ---------------------------------------------------------------- holds, shows, progress

def test_a_held_kit_and_a_kit_in_its_show_wait_with_why_and_are_offered_once_free(world):
    upload(world)
    assert world.crew.post("/api/v1/kits/beta/updates/hold").status_code == 404  # another crew's kit
    r = world.crew.post("/api/v1/kits/alpha/updates/hold", json={"reason": "soundcheck"})
    assert r.status_code == 200 and r.json()["by"] == "crew-a"
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "groups": ["100%"], "rate_per_min": 100})
    rid = r.json()["id"]
    assert r.json()["progress"] == [{"group": 1, "spec": "100%", "size": 8, "committed": 0, "failed": 0,
                                     "in_flight": 0, "not_started": 8, "complete": False}]
    delivery = world.app.state.updates
    assert delivery.step() == []  # alpha held, beta in its show: nothing offered
    why = {d["device_id"]: d["reason"] for d in world.ops.get(f"/api/v1/rollouts/{rid}").json()["device_updates"]}
    assert why["alpha-scanner-0"] == "held by crew crew-a: soundcheck"
    assert why["beta-scanner-0"] == f"in show until {world.ends.strftime('%H:%M')} UTC"
    mine = world.crew.get("/api/v1/kits/alpha/updates").json()
    assert mine["hold"]["reason"] == "soundcheck" and mine["waits"] == "held by crew crew-a: soundcheck"
    assert {d["state"] for d in mine["devices"]} == {"waiting"} and len(mine["devices"]) == 4
    assert world.crew.get("/api/v1/kits/beta/updates").status_code == 404
    assert world.crew_b.get("/api/v1/kits/beta/updates").json()["waits"].startswith("in show until")

    assert world.crew.delete("/api/v1/kits/alpha/updates/hold").json()["lifted"]
    offers = delivery.step()
    assert sorted(o["device"] for o in offers) == [f"alpha-scanner-{n}" for n in range(4)]
    o = offers[0]
    assert {k: o[k] for k in ("kind", "rollout", "release", "role", "version", "fw", "kit", "agent")} == {
        "kind": "update_offer", "rollout": rid, "release": "scanner-0.4.0", "role": "scanner", "version": "0.4.0",
        "fw": "scanner-0.4.0", "kit": "alpha", "agent": "alpha-agent"}
    assert len(o["manifest_sha256"]) == 64 and json.dumps(o)  # plain JSON, for the agent's topic
    assert delivery.step() == []  # offered once
    # After the show ends, beta's devices are offered.
    later = delivery.step(now=int(world.ends.timestamp() * 1000) + 1)
    assert sorted(o["device"] for o in later) == [f"beta-scanner-{n}" for n in range(4)]


def test_device_reports_move_updates_on_and_the_error_threshold_pauses_the_rollout(world):
    upload(world)
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["alpha"],
                                                 "groups": [1, "100%"], "error_threshold": 0.5})
    rid = r.json()["id"]
    delivery, updates = world.app.state.updates, world.store.updates
    [canary] = delivery.step()
    assert canary["device"] == "alpha-scanner-0"
    assert updates.device_reported("alpha-scanner-1", "committed") is None  # never offered
    assert updates.device_reported("alpha-scanner-0", "downloading").state == "downloading"
    assert updates.device_reported("alpha-scanner-0", "offered") is None  # behind: nothing
    assert updates.device_reported("alpha-scanner-0", "committed").state == "committed"
    assert sorted(o["device"] for o in delivery.step()) == ["alpha-scanner-1", "alpha-scanner-2", "alpha-scanner-3"]
    updates.device_reported("alpha-scanner-1", "rolled_back", "self-check failed: no QR module")
    delivery.step()
    assert world.ops.get(f"/api/v1/rollouts/{rid}").json()["state"] == "running"  # 1/3 < 50 %
    updates.device_reported("alpha-scanner-2", "failed", "hash mismatch: scanner.mpy")
    delivery.step()
    got = world.ops.get(f"/api/v1/rollouts/{rid}").json()
    assert got["state"] == "paused"
    assert got["pause_reason"] == "error threshold: group 2 has 2/3 failed or rolled back (pauses at 50%)"
    assert got["progress"][1] == {"group": 2, "spec": "100%", "size": 3, "committed": 0, "failed": 2,
                                  "in_flight": 1, "not_started": 0, "complete": False}
    reasons = {d["device_id"]: (d["state"], d["reason"]) for d in got["device_updates"]}
    assert reasons["alpha-scanner-1"] == ("rolled_back", "self-check failed: no QR module")
    # The list counts every rollout's devices the same way, without a read per rollout.
    [listed] = [x for x in world.ops.get("/api/v1/rollouts").json() if x["id"] == rid]
    assert listed["totals"] == {"size": 4, "committed": 1, "failed": 2, "in_flight": 1, "not_started": 0}
    # Resumed: those failures are acknowledged; the last device commits and the rollout is done.
    assert world.ops.post(f"/api/v1/rollouts/{rid}/resume").json()["state"] == "running"
    updates.device_reported("alpha-scanner-3", "committed")
    delivery.step()
    assert world.ops.get(f"/api/v1/rollouts/{rid}").json()["state"] == "done"
    assert [d["state"] for d in world.crew.get("/api/v1/kits/alpha/updates").json()["devices"]] == [
        "committed", "rolled_back", "failed", "committed"]


def test_a_device_is_in_one_rollout_at_a_time(world):
    upload(world, "0.4.0")
    upload(world, "0.5.0")
    assert world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["alpha"]}).status_code == 201
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.5.0"})
    assert r.status_code == 409 and "alpha-scanner-0" in r.json()["detail"]
    assert world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.5.0", "kits": ["beta"]}).status_code == 201
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.5.0", "devices": ["nope"]})
    assert r.status_code == 409 and "nope" in r.json()["detail"]
    assert world.ops.post("/api/v1/rollouts", json={"release": "scanner-9.0.0"}).status_code == 404
    assert world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.5.0", "groups": ["0"]}).status_code == 422


def test_a_device_already_on_the_release_counts_as_committed_and_a_newer_one_needs_a_downgrade(world):
    from fleet.ledger import Batch
    from kits.contract import State

    upload(world, "0.4.0")
    boot, now = "beef0001", now_ms()
    states = [(d, State(boot=boot, seq=0, ts=now, online=True, role="scanner", fw=fw))
              for d, fw in (("alpha-scanner-0", "scanner-0.4.0"), ("alpha-scanner-1", "scanner-0.5.0"),
                            ("alpha-scanner-2", "scanner-0.3.9"))]
    world.store.ledger.write_batch(Batch(states=states))
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["alpha"], "groups": ["100%"]})
    got = {d["device_id"]: (d["state"], d["reason"]) for d in r.json()["device_updates"]}
    assert got["alpha-scanner-0"] == ("committed", "already runs scanner-0.4.0")
    assert "alpha-scanner-1" not in got  # runs 0.5.0: not rolled back unless ops ask
    assert got["alpha-scanner-2"] == ("pending", None) and got["alpha-scanner-3"] == ("pending", None)
    assert not r.json()["downgrade"]
    assert world.ops.post(f"/api/v1/rollouts/{r.json()['id']}/abort").status_code == 200

    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "devices": ["alpha-scanner-1"]})
    assert r.status_code == 409 and "a rollback needs downgrade" in r.json()["detail"]
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "devices": ["alpha-scanner-1"],
                                                 "downgrade": True})
    assert r.status_code == 201 and r.json()["downgrade"]
    [offer] = world.app.state.updates.step()
    assert offer["device"] == "alpha-scanner-1" and offer["downgrade"] is True


def test_an_aborted_rollout_offers_no_other_device(world):
    upload(world)
    r = world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["alpha"], "groups": [1, "100%"]})
    rid, delivery = r.json()["id"], world.app.state.updates
    [canary] = delivery.step()
    assert world.ops.post(f"/api/v1/rollouts/{rid}/abort").json()["state"] == "aborted"
    world.store.updates.device_reported(canary["device"], "committed")  # mid-update: it finishes its own
    assert delivery.step() == []
    got = world.ops.get(f"/api/v1/rollouts/{rid}").json()
    assert {d["device_id"]: (d["state"], d["reason"]) for d in got["device_updates"]} == {
        "alpha-scanner-0": ("committed", None), **{f"alpha-scanner-{n}": ("waiting", "rollout aborted")
                                                   for n in (1, 2, 3)}}


def test_two_workers_stepping_at_once_offer_each_device_once(world):
    import threading

    upload(world)
    world.ops.post("/api/v1/rollouts", json={"release": "scanner-0.4.0", "kits": ["alpha"], "groups": ["100%"]})
    url = world.store.engine.url.render_as_string(hide_password=False)
    other = Store(world.store.engine) if url.startswith("sqlite") else Store.open(url)
    from fleet.updates.delivery import UpdateDelivery

    workers = [world.app.state.updates, UpdateDelivery(other)]
    got: list[list[dict]] = [[], []]
    start = threading.Barrier(2)

    def run(i: int) -> None:
        start.wait()
        got[i] = workers[i].step()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    offered = sorted(o["device"] for o in got[0] + got[1])
    assert offered == [f"alpha-scanner-{n}" for n in range(4)]  # every device once, by one worker or the other
    if other.engine is not world.store.engine:
        other.close()
