"""Many kits on one machine: a thousand kits' devices held by one broker and one fleet worker, a
reconnect storm, and how the ingest rate grows from one worker to two on a shared subscription.

    python -m bench.scale [--quick] [--kits N] [--devices-per-kit D] [--period S] [--window S]
                          [--db URL] [--scale-db URL] [--scale-messages N]

One run, all on this machine:

1. held load: a private Mosquitto (popkit.broker), the fleet service (``popkit fleet serve``, the
   whole service: ingest, API, alerts, views) in its own process on ``--db`` (default: a SQLite
   file, the embedded default), and ``popkit sim fleet``'s Swarm in this process: N kits x D
   devices, one message every ``--period`` s each, a persistent session per device, every
   message kept until the fleet's receipt. Once every device is connected and a warm-up has
   passed, ``--window`` seconds are measured: msg_s = messages the fleet receipted per second
   (a receipt follows the commit), fleet_cpu_pct / broker_cpu_pct = CPU seconds of that process
   per wall second, in % of ONE core (the machine has ``cores``);
2. reconnect storm: the broker is SIGKILLed and restarted; reconnect_storm_s = from the first
   device dropping until every device is connected again (full-jitter backoff, paced connects);
3. the ledger: the swarm stops emitting, every outbox drains; lost = messages emitted that the
   database does not hold, duplicates = rows beyond one per (device, boot, seq);
4. scaling: a flood of ``--scale-messages`` from a publisher process (bench.ingest's) ingested by
   one worker process, then a new flood by two worker processes sharing the stream
   (``--share-group``) on ``--scale-db`` (default: a throwaway PostgreSQL database, the database
   two workers share in production; SQLite if no server answers); scaling_2w = rate(2) / rate(1).

The last line of stdout is one JSON object; exit status 1 if anything was lost or doubled.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from bench.ingest import Publisher, count_rows, cpu_seconds, cpu_speed_us, make_job, manifest_for, say
from popkit.broker import MosquittoBroker, free_port

PG_ADMIN = os.environ.get("POPKIT_BENCH_PG", "postgresql://127.0.0.1:5432/postgres")
QUICK = dict(kits=200, window=20.0, scale_messages=20_000)
FULL = dict(kits=1000, window=60.0, scale_messages=60_000)


def spawn_worker(mqtt_url: str, db_url: str, client_id: str, share_group: str = "") -> subprocess.Popen:
    """``popkit fleet serve``, as ops run it, waiting until its API answers and ingest is subscribed."""
    port = free_port()
    env = {**os.environ, "POPKIT_SECRET_KEY": secrets.token_urlsafe(48)}
    proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "fleet", "serve", "--mqtt", mqtt_url, "--db", db_url,
                             "--http", f"127.0.0.1:{port}", "--client-id", client_id,
                             *(["--share-group", share_group] if share_group else [])],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fleet worker {client_id} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if json.load(r).get("broker_connected") is True:  # 200 only once ingest has subscribed
                    return proc
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError(f"fleet worker {client_id} not ready in 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - t0


# ---------------------------------------------------------------- held load, storm, ledger

def ledger_check(db_url: str, swarm) -> tuple[int, int]:
    """(lost, duplicates) of the swarm's messages in the database."""
    from sqlalchemy import text

    from fleet.db import make_engine

    emitted = {(led.device, led.boot): led.emitted for led in swarm.ledger().values()}
    engine = make_engine(db_url)
    stored: dict[tuple[str, str], tuple[int, int]] = {}
    with engine.connect() as conn:
        for table in ("telemetry", "events"):
            for device, boot, rows, distinct in conn.execute(text(
                    f"SELECT device_id, boot, count(*), count(DISTINCT seq) FROM {table} GROUP BY device_id, boot")):
                r, d = stored.get((device, boot), (0, 0))
                stored[(device, boot)] = (r + rows, d + distinct)
    engine.dispose()
    lost = sum(n - stored.get(key, (0, 0))[1] for key, n in emitted.items())
    duplicates = sum(rows - distinct for key, (rows, distinct) in stored.items() if key in emitted)
    return lost, duplicates


def held_load(args, stack: ExitStack, work: Path) -> dict:
    from popkit.kitregister import register_kits
    from simulators.swarm import Swarm

    broker = stack.enter_context(MosquittoBroker(data_dir=work / "broker"))
    broker.start()
    db_url = args.db or f"sqlite:///{work / 'fleet.db'}"
    swarm = Swarm(args.kits, args.devices_per_kit, broker.url, period_s=args.period, seed=1)
    say(f"registering {args.kits} kits ({len(swarm.devices)} devices) in {db_url.split('://')[0]}")
    register_kits(db_url, swarm.manifests())
    fleet = spawn_worker(broker.url, db_url, "fleet-scale-1")
    stack.callback(stop, fleet)
    swarm.start_in_thread(timeout=120)
    stack.callback(swarm.stop)
    wait_for(lambda: swarm.stats().startup_s is not None, 300, "every device connected")
    say(f"{len(swarm.devices)} devices connected in {swarm.stats().startup_s:.1f} s; warming up")
    time.sleep(min(args.period * 2, 15))

    s0, f0, b0, m0, t0 = swarm.stats(), cpu_seconds(fleet.pid), cpu_seconds(broker.proc.pid), cpu_seconds(), time.monotonic()
    time.sleep(args.window)
    s1, f1, b1, m1, t1 = swarm.stats(), cpu_seconds(fleet.pid), cpu_seconds(broker.proc.pid), cpu_seconds(), time.monotonic()
    wall = t1 - t0
    held = dict(msg_s=round((s1.receipted - s0.receipted) / wall, 1),
                offered_msg_s=round((s1.emitted - s0.emitted) / wall, 1),
                fleet_cpu_pct=round(100 * (f1 - f0) / wall, 1), broker_cpu_pct=round(100 * (b1 - b0) / wall, 1),
                swarm_cpu_pct=round(100 * (m1 - m0) / wall, 1), outstanding=s1.outstanding)
    say(f"held: {held}")

    say("reconnect storm: the broker SIGKILLed and restarted")
    waves = swarm.stats().waves
    broker.kill()
    broker.start()
    wait_for(lambda: swarm.stats().waves > waves and swarm.stats().last_recovery_s is not None
             and swarm.stats().connected == len(swarm.devices), 300, "every device back after the restart")
    storm = swarm.stats().last_recovery_s
    say(f"all {len(swarm.devices)} devices back {storm:.1f} s after the first dropped")

    swarm.emitting = False  # the ledger: stop making messages, let every outbox drain
    drain_s = wait_for(lambda: swarm.stats().outstanding == 0, 300, "every outbox drained", interval=1.0)
    lost, duplicates = ledger_check(db_url, swarm)
    st = swarm.stats()
    say(f"drained in {drain_s:.0f} s: emitted {st.emitted}, resends {st.resends}, lost {lost}, duplicates {duplicates}")
    return dict(held, reconnect_storm_s=round(storm, 1), emitted=st.emitted, resends=st.resends, lost=lost,
                duplicates=duplicates, db=db_url.split(":")[0])


# ---------------------------------------------------------------- scaling: one worker, then two

def throwaway_pg(stack: ExitStack, prefix: str) -> str:
    """A new database ``<prefix>_<random>`` on the local PostgreSQL server (PG_ADMIN), dropped when
    ``stack`` closes; its URL. Raises when there is no server."""
    from sqlalchemy import create_engine

    admin = create_engine(PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{secrets.token_hex(3)}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    stack.callback(drop)
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def scale_db(args, stack: ExitStack, work: Path) -> str:
    if args.scale_db:
        return args.scale_db
    try:
        return throwaway_pg(stack, "popkit_bench_scale")
    except Exception as exc:  # noqa: BLE001 - no server: measure on SQLite and say so
        print(f"bench.scale: no PostgreSQL at {PG_ADMIN} ({exc}); scaling measured on SQLite", file=sys.stderr)
        return f"sqlite:///{work / 'scale.db'}"


def flood_rate(publisher: Publisher, db_url: str, job: dict, procs: list, timeout: float) -> tuple[float, dict]:
    from fleet.store import Store

    store = Store.open(db_url)
    try:
        publisher.prepare(job)
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        publisher.go()
        t_first = time.time()
        wait_for(lambda: count_rows(store, job)[1] >= job["messages"], timeout, f"{len(procs)} worker(s) ingesting",
                 interval=0.1)
        wall = time.time() - t_first
        cpu = [round(100 * (cpu_seconds(p.pid) - c) / wall, 1) for p, c in zip(procs, cpu0)]
        publisher.finish(5)
        rows, distinct, _gaps = count_rows(store, job)
        return job["messages"] / wall, dict(workers=len(procs), wall_s=round(wall, 2), worker_cpu_pct=cpu,
                                            duplicates=rows - distinct)
    finally:
        store.close()


def scaling(args, stack: ExitStack, work: Path) -> dict:
    """One worker, then the same worker and a second one. Not two fresh runs: a stopped worker's
    persistent session stays in the shared subscription and the broker keeps queueing its share
    for it (nothing is lost: it gets them when it returns), which would starve the next run."""
    from fleet.store import Store

    db_url = scale_db(args, stack, work)
    broker = stack.enter_context(MosquittoBroker(data_dir=work / "scale-broker"))
    broker.start()
    jobs = {n: make_job(f"w{n}", f"scale-w{n}", 100, args.scale_messages, 4, 300, "raw") for n in (1, 2)}
    store = Store.open(db_url)
    for job in jobs.values():
        store.registry.register_kit(manifest_for(job))
    store.close()
    publisher = Publisher(broker.url)
    stack.callback(publisher.close)
    procs: list = []
    rates, detail = {}, {}
    for workers in (1, 2):
        procs.append(spawn_worker(broker.url, db_url, f"fleet-scale-{workers}", share_group="scale"))
        stack.callback(stop, procs[-1])
        time.sleep(1.0)  # every worker's SUBACK in: a shared subscription only shares among subscribers
        rates[workers], detail[workers] = flood_rate(publisher, db_url, jobs[workers], list(procs), 300)
        say(f"{workers} worker(s): {rates[workers]:.0f} msg/s, {detail[workers]}")
    return dict(scaling_2w=round(rates[2] / rates[1], 2), rate_1w=round(rates[1]), rate_2w=round(rates[2]),
                scale_db=db_url.split(":")[0], scale_detail=detail)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"smaller: {QUICK}")
    p.add_argument("--kits", type=int)
    p.add_argument("--devices-per-kit", type=int, default=5)
    p.add_argument("--period", type=float, default=5.0, help="seconds between one device's messages")
    p.add_argument("--window", type=float, help="seconds measured under held load")
    p.add_argument("--db", help="the held-load fleet's database URL (default: a SQLite file)")
    p.add_argument("--scale-db", help="the scaling run's shared database (default: a throwaway PostgreSQL db)")
    p.add_argument("--scale-messages", type=int)
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s")
    args = parse_args(argv)
    speed = cpu_speed_us()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="popkit-bench-scale-") as tmp:
        work = Path(tmp)
        held = held_load(args, stack, work)
        stack.close()  # the held-load broker, fleet and swarm gone before the flood
        with ExitStack() as scale_stack:
            scale = scaling(args, scale_stack, work)
    result = {"bench": "scale", "kits": args.kits, "devices": args.kits * args.devices_per_kit,
              "msg_s": held["msg_s"], "fleet_cpu_pct": held["fleet_cpu_pct"], "broker_cpu_pct": held["broker_cpu_pct"],
              "workers": 1, "scaling_2w": scale["scaling_2w"], "reconnect_storm_s": held["reconnect_storm_s"],
              "lost": held["lost"], "duplicates": held["duplicates"] + sum(d["duplicates"] for d in scale["scale_detail"].values()),
              "cores": os.cpu_count(), "cpu_speed_us": speed,
              "detail": {"held": held, "scale": scale}}
    print(json.dumps(result))
    return 1 if result["lost"] or result["duplicates"] else 0


if __name__ == "__main__":
    sys.exit(main())
