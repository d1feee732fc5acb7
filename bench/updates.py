"""Field updates, end to end: one real scanner taking a bundle while it scans, and a staged rollout to
a thousand simulated kits.

    python -m bench.updates [--quick] [--kits N] [--db URL|pg] [--seed S] [--no-device]

1. The device: bench.update_device.measure(quick), the real scanner firmware in the unix-port
   MicroPython taking a bundle from the kit's cache while it keeps scanning (bundle_kb,
   device_update_s, device_peak_heap_kb, scans_during_update, scans_unanswered).
2. The rollout, all on this machine: a private Mosquitto, the fleet's ingest and API on ``--db``
   (default: a SQLite file; ``pg``: a throwaway database on the local PostgreSQL) with its rollout worker (fleet/updates/worker.py; the bench calls its
   ``tick()`` every STEP_S), and the swarm (simulators/swarm.py) of N kits (1,000; --quick 100),
   each an agent, its power bank and one scanner, that take updates as real kits do
   (simulators/swarm_updates.py): a seeded FAIL_P of the scanners fail ("sha256 mismatch") and
   ROLLBACK_P roll back. Every SHOW_EVERY-th kit is in its show (doors opened an hour ago). A real
   signed bundle (``popkit release build --role scanner --port unix``) is uploaded through the API
   and a rollout started through it, as ops do: groups [1, "10%", "50%", "100%"], an error threshold
   below the failing share (so it pauses: the bench resumes it each time, as ops would, and counts
   the pauses), a success threshold that the failures and the shows leave room for, a rate limit
   high enough to finish.

   rollout_s: from the rollout's creation until every device outside a show is final (committed,
   failed, rolled back). Then the shows end (the kits registered again with their event over) and
   the bench waits until every device is final and the rollout done (rollout_done_s).
   in_show_touched: update commands the kits in their show received (the swarm's own log, not the
   fleet's records) before their show ended: must be 0. failed / rolled_back: what the devices
   reported, checked against the fleet's final records.

   Baselines measured in the same run, against the same kits' agents and the same fleet:
   cmd_ms, the fleet's cost of one plain command (``identify``: stored, published) to each agent,
   against offer_ms, its cost per device offered by the worker's steps (plan, record, token,
   command) = offer_vs_cmd; step_idle_ms, a worker step with no rollout running, against
   step_rollout_ms, a step that plans the whole rollout but offers nothing = step_vs_idle.

The last line of stdout is one JSON object; progress goes to stderr. Exit status 1 when a kit in
its show was sent an update, the rollout never paused, the fleet's records and the devices
disagree, or the device part misses its acceptance (peak heap over 48 KB, a scan unanswered).
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.ingest import cpu_speed_us
from bench.scale import throwaway_pg

QUICK = dict(kits=100)
FULL = dict(kits=1000)
STEP_S = 0.25  # how often the bench ticks the rollout worker (the fleet's default is 5 s)
FAIL_P, ROLLBACK_P = 0.05, 0.03  # shares of the scanners whose update fails / rolls back
ERROR_THRESHOLD = 0.04  # below the failing share: the rollout must pause at it
SUCCESS_THRESHOLD = 0.75  # room for the failures and the kits in their show (5 %)
SHOW_EVERY = 20  # every 20th kit is in its show: 5 %
RATE_PER_MIN = 20_000
DELAYS = dict(fetch_s=(0.2, 0.6), download_s=(0.3, 1.0), trial_s=(0.3, 0.8))  # simulated, seconds
HEAP_BUDGET_KB = 48


def say(text: str) -> None:
    """Progress, on stderr: stdout ends with the one JSON line."""
    print(text, file=sys.stderr, flush=True)


def device_part(quick: bool) -> dict:
    try:
        from bench.update_device import measure
    except ImportError as exc:
        say(f"device part skipped: bench.update_device is not importable ({exc})")
        return dict(device_error=f"bench.update_device: {exc}")
    say("device: a real scanner taking a bundle from the kit's cache while it scans")
    t0 = time.monotonic()
    try:
        out = measure(quick)
    except Exception as exc:  # noqa: BLE001 - reported (exit 1); the rollout part still runs
        say(f"device part failed: {exc!r}")
        return dict(device_error=f"bench.update_device: {exc!r}"[:300])
    say(f"device: {out} ({time.monotonic() - t0:.0f} s)")
    return out


# ---------------------------------------------------------------- the rollout part

def signed_bundle(work: Path) -> tuple[Path, Path]:
    """The real scanner release for the unix port, signed by a throwaway release key: (bundle, public key file)."""
    from kits.release import new_private_key, public_key_of
    from popkit.firmware import read_manifest
    from popkit.release import build

    pem = new_private_key()
    key = work / "release.key"
    key.write_bytes(pem)
    key.chmod(0o600)
    pub = work / "release.pub"
    pub.write_text(public_key_of(pem).hex() + "\n")
    version = read_manifest("scanner", "unix").version.split("-", 1)[1]
    return build("scanner", version, key, work / "releases-built", port="unix"), pub


def upload_body(folder: Path) -> dict:
    from kits.release import MANIFEST, SIGNATURE

    files = {p.relative_to(folder / "files").as_posix(): base64.b64encode(p.read_bytes()).decode()
             for p in sorted((folder / "files").rglob("*")) if p.is_file()}
    return {"manifest": (folder / MANIFEST).read_text(), "sig": (folder / SIGNATURE).read_bytes().hex(), "files": files}


def with_show(manifest, now: datetime, over: bool = False):
    """The kit's manifest with its event window: doors opened an hour ago, ending in two hours (or just over)."""
    from kits.manifest import EventWindow

    ends = now - timedelta(seconds=1) if over else now + timedelta(hours=2)
    return manifest.model_copy(update={"event": EventWindow(doors_open=now - timedelta(hours=3 if over else 1),
                                                            ends=ends)})


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1000


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - t0


def rollout_part(args, stack: ExitStack, work: Path) -> dict:
    from pydantic import SecretStr

    from fleet.api.app import create_app
    from fleet.auth.testing import ops_client
    from fleet.commands.delivery import Publisher
    from fleet.service import build
    from fleet.settings import FleetSettings
    from fleet.updates.model import FINAL
    from fleet.updates.worker import RolloutWorker
    from popkit.broker import MosquittoBroker
    from simulators.swarm import Swarm
    from simulators.swarm_updates import UpdateBehaviour

    say("building and signing the scanner's release (unix port)")
    bundle, pub = signed_bundle(work)
    broker = stack.enter_context(MosquittoBroker(data_dir=work / "broker"))
    broker.start()
    db_url = throwaway_pg(stack, "popkit_bench_updates") if args.db == "pg" else args.db or f"sqlite:///{work / 'fleet.db'}"
    settings = FleetSettings(mqtt_url=broker.url, db_url=db_url, client_id=f"fleet-bench-{secrets.token_hex(3)}",
                             secret_key=SecretStr(secrets.token_urlsafe(48)), release_pubkey=str(pub),
                             release_dir=str(work / "releases"), public_url="http://127.0.0.1:9",
                             update_step_s=STEP_S)
    store, ingest = build(settings)
    stack.callback(store.close)
    ingest.start()
    stack.callback(ingest.stop)
    if not ingest.connected.wait(30):
        raise RuntimeError("the fleet's ingest did not connect to the bench's broker")
    app = create_app(store, ingest, settings=settings)
    ops = ops_client(app, "ops-bench")
    publisher = Publisher.for_ingest(store, ingest)
    worker = RolloutWorker(store, publisher, settings)

    behaviour = UpdateBehaviour(fail_p=FAIL_P, rollback_p=ROLLBACK_P, seed=args.seed, fetch_s=DELAYS["fetch_s"],
                                download_s=DELAYS["download_s"], trial_s=DELAYS["trial_s"])
    swarm = Swarm(args.kits, 3, broker.url, period_s=args.period, seed=args.seed, checkin_p=0.0, updates=behaviour)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    manifests = swarm.manifests()
    show = {m.id for i, m in enumerate(manifests, 1) if i % SHOW_EVERY == 0}
    say(f"registering {len(manifests)} kits ({len(swarm.devices)} devices; {len(show)} in their show) in "
        f"{db_url.split('://')[0]}")
    for m in manifests:
        store.registry.register_kit(with_show(m, now) if m.id in show else m)
    ingest.refresh_devices()
    swarm.start_in_thread(timeout=120)
    stack.callback(swarm.stop, 10)
    wait_for(lambda: swarm.stats().startup_s is not None, 300, "every device connected")
    say(f"{len(swarm.devices)} devices connected in {swarm.stats().startup_s:.1f} s")
    scanners = sorted(d.id for d in swarm.devices if d.role == "scanner")
    agents = sorted(d.id for d in swarm.devices if d.role == "agent")

    # Baselines: worker steps with no rollout; a plain command to every agent.
    idle = [timed(worker.tick)[1] for _ in range(20)]
    t_cmd = time.monotonic()
    sends = [timed(publisher.send_command, a, "identify", ttl_s=600, requested_by="bench")[1] for a in agents]
    wait_for(lambda: swarm.update_log().acks["ok"] >= len(agents), 120, "every agent answering its plain command")
    cmd_round_s = time.monotonic() - t_cmd
    say(f"baseline: idle step {statistics.median(idle):.1f} ms; plain command {statistics.mean(sends):.2f} ms "
        f"each, all {len(agents)} answered {cmd_round_s:.1f} s after the first was sent")

    r = ops.post("/api/v1/releases", json=upload_body(bundle))
    if r.status_code != 201:
        raise RuntimeError(f"release upload refused: {r.status_code} {r.text[:300]}")
    release = r.json()
    r = ops.post("/api/v1/rollouts", json=dict(release=release["id"], groups=[1, "10%", "50%", "100%"],
                                               success_threshold=SUCCESS_THRESHOLD, error_threshold=ERROR_THRESHOLD,
                                               rate_per_min=RATE_PER_MIN))
    if r.status_code != 201:
        raise RuntimeError(f"rollout refused: {r.status_code} {r.text[:300]}")
    rollout_id, created_ms = r.json()["id"], r.json()["created_ms"]
    say(f"rollout {rollout_id} of {release['id']} ({release['size'] / 1024:.1f} KB) to {len(scanners)} scanners")

    pauses: list[str] = []
    offer_ms, offers, planning = 0.0, 0, []
    show_scanners = {d for d in scanners if d.rsplit("-", 2)[0] in show}

    def current():
        ro = store.updates.rollout(rollout_id)
        if ro is None:
            raise RuntimeError(f"rollout {rollout_id} is gone")
        return ro

    def step() -> dict[str, str]:
        nonlocal offer_ms, offers
        sent, ms = timed(worker.tick)
        if sent:
            offer_ms += ms
            offers += len(sent)
        else:
            planning.append(ms)
        ro = current()
        if ro.state == "paused":
            pauses.append(ro.pause_reason or "")
            say(f"paused: {ro.pause_reason}; resuming, as ops would")
            rr = ops.post(f"/api/v1/rollouts/{rollout_id}/resume")
            if rr.status_code != 200:
                raise RuntimeError(f"resume refused: {rr.status_code} {rr.text[:300]}")
        return {u.device: u.state for u in store.updates.updates(rollout_id)}

    def run_until(done, timeout: float, what: str) -> dict[str, str]:
        deadline, last_say = time.monotonic() + timeout, 0.0
        while True:
            t = time.monotonic()
            states = step()
            if done(states):
                return states
            if t > deadline:
                raise TimeoutError(f"{what}: not within {timeout:.0f} s; {summary(states)}")
            if t - last_say > 5:
                say(f"{(now_ms() - created_ms) / 1000:5.1f} s  {summary(states)}")
                last_say = t
            time.sleep(max(0.0, STEP_S - (time.monotonic() - t)))

    states = run_until(lambda s: all(s[d] in FINAL for d in s if d not in show_scanners), args.timeout,
                       "every device outside a show final")
    rollout_s = (now_ms() - created_ms) / 1000
    say(f"every device outside a show final after {rollout_s:.1f} s: {summary(states)}")
    show_end_ms = now_ms()
    touched = [c for c in swarm.update_log().commands if c.kit in show and c.action == "update"]
    ended = datetime.now(timezone.utc).replace(microsecond=0)
    for m in manifests:
        if m.id in show:
            store.registry.register_kit(with_show(m, ended, over=True))
    say(f"the {len(show)} shows are over; their kits' turn")
    states = run_until(lambda s: current().state == "done", args.timeout,
                       "the rollout done")
    rollout_done_s = (now_ms() - created_ms) / 1000

    wait_for(lambda: sum(swarm.update_log().acks.values()) >= len(agents) + len(scanners), 60, "every update acked")
    log = swarm.update_log()
    reported = {d: s for d, (s, _r) in log.final.items() if d in states}
    disagree = sorted(d for d in states if states[d] != reported.get(d))
    after_show = [c for c in log.commands if c.kit in show and c.action == "update" and c.received_ms >= show_end_ms]
    out = dict(kits=args.kits, devices=len(swarm.devices), scanners=len(scanners), db=db_url.split(":")[0],
               release=release["id"], release_kb=round(release["size"] / 1024, 1),
               rollout_s=round(rollout_s, 1), rollout_done_s=round(rollout_done_s, 1),
               failed=sum(s == "failed" for s in reported.values()),
               rolled_back=sum(s == "rolled_back" for s in reported.values()),
               committed=sum(s == "committed" for s in reported.values()),
               pauses=len(pauses), in_show_kits=len(show), in_show_touched=len(touched),
               in_show_updated_after=len({c.device for c in after_show}),
               fetches=log.fetches, update_commands=sum(c.action == "update" for c in log.commands),
               duplicates=log.duplicates, disagree=len(disagree),
               offer_ms=round(offer_ms / max(offers, 1), 2), cmd_ms=round(statistics.mean(sends), 2),
               step_idle_ms=round(statistics.median(idle), 2),
               step_rollout_ms=round(statistics.median(planning), 2) if planning else None,
               step_us_per_device=round(1000 * statistics.median(planning) / len(scanners), 1) if planning else None,
               cmd_round_s=round(cmd_round_s, 2))
    out["offer_vs_cmd"] = round(out["offer_ms"] / out["cmd_ms"], 1) if out["cmd_ms"] else None
    out["step_vs_idle"] = round(out["step_rollout_ms"] / out["step_idle_ms"], 1) \
        if out["step_rollout_ms"] and out["step_idle_ms"] else None
    out["first_pause"] = pauses[0] if pauses else None
    if disagree:
        say(f"the fleet's records and the devices disagree on {len(disagree)}: "
            f"{[(d, states[d], reported.get(d)) for d in disagree[:5]]}")
    return out


def summary(states: dict[str, str]) -> str:
    from collections import Counter

    return ", ".join(f"{k} {v}" for k, v in sorted(Counter(states.values()).items()))


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.updates", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smaller: {QUICK}")
    p.add_argument("--kits", type=int)
    p.add_argument("--period", type=float, default=10.0, help="seconds between one device's telemetry")
    p.add_argument("--db", help="the fleet's database URL (default: a SQLite file; pg: a throwaway PostgreSQL database)")
    p.add_argument("--seed", type=int, default=18, help="which devices fail and roll back")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds each rollout phase may take")
    p.add_argument("--no-device", action="store_true", help="skip the real scanner's part")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s")
    args = parse_args(argv)
    t0 = time.monotonic()
    device = {} if args.no_device else device_part(args.quick)
    with tempfile.TemporaryDirectory(prefix="popkit-bench-updates-") as tmp, ExitStack() as stack:
        rollout = rollout_part(args, stack, Path(tmp))  # the stack (swarm, fleet, broker) closes before tmp goes
    keys = ("bundle_kb", "device_update_s", "device_peak_heap_kb", "scans_during_update", "scans_unanswered")
    result = {"bench": "updates", **{k: device.get(k) for k in keys},
              **{k: rollout[k] for k in ("kits", "rollout_s", "failed", "rolled_back", "pauses", "in_show_touched",
                                         "rollout_done_s", "offer_vs_cmd", "step_vs_idle")},
              "cores": os.cpu_count(), "cpu_speed_us": cpu_speed_us(), "wall_s": round(time.monotonic() - t0, 1),
              "detail": {"device": device, "rollout": rollout,
                         "settings": dict(step_s=STEP_S, fail_p=FAIL_P, rollback_p=ROLLBACK_P,
                                          error_threshold=ERROR_THRESHOLD, success_threshold=SUCCESS_THRESHOLD,
                                          rate_per_min=RATE_PER_MIN, delays_s=DELAYS, show_every=SHOW_EVERY)}}
    bad = []
    if rollout["in_show_touched"]:
        bad.append("a kit in its show was sent an update")
    if not rollout["pauses"]:
        bad.append("the rollout never paused at its error threshold")
    if rollout["disagree"]:
        bad.append("the fleet's records and the devices disagree")
    if not args.no_device:
        if "device_error" in device:
            bad.append(device["device_error"])
        else:
            if (device.get("device_peak_heap_kb") or 0) > HEAP_BUDGET_KB:
                bad.append(f"device_peak_heap_kb {device['device_peak_heap_kb']} is over the {HEAP_BUDGET_KB} KB budget")
            if device.get("scans_unanswered"):
                bad.append(f"{device['scans_unanswered']} scan(s) unanswered during the update")
            if not device.get("scans_during_update"):
                bad.append("no scan answered during the update")
    for b in bad:
        print(f"bench.updates: {b}", file=sys.stderr)
    print(json.dumps(result))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
