"""Fleet API under load: the dashboard's reads against a seeded day of a 1,000-kit fleet.

    python -m bench.api [--quick] [--db URL] [--clients K] [--duration S] [--keep]

One run, all on this machine:

1. a database (default: SQLite, WAL, in a temp dir; ``--db postgresql://.../NAME`` creates NAME
   if it does not exist and drops it afterwards) migrated by ``Store.open`` and seeded by
   ``bench.api_seed`` straight into the tables, row for row what ingest would store: 1,000 kits,
   10,000 devices, 1,000,000 telemetry rows over the last 24 h (``--quick``: 100 / 1,000 / 100,000);
2. the real app (``fleet.api.app.create_app(store)``, no ingest, no broker) under uvicorn in a
   child process, with every kit's manifest remembered (event windows: the forecasts compute),
   plus one bench-only route ``GET /bench/noop`` (a sync handler returning a constant: the same
   threadpool hop as the real routes, no database), the floor of this server and client;
3. K client threads (keep-alive ``http.client``, default 8) in this process hit one endpoint at a
   time for a fixed time each (20 s, quick 5 s), then one client alone for a quarter of that
   (the service time without queueing):
   ``/bench/noop`` (floor), ``/healthz``, the overview ``GET /api/v1/kits`` (a page of 100 kits:
   the first, worst first, a later one, one state, a search; ``OVERVIEWS``), a kit page
   ``GET /api/v1/kits/{random kit}``, and a power bank's battery history
   ``GET /api/v1/devices/{random power bank}/telemetry?kind=battery&since=<now - 24 h>&limit=5000``
   (the dashboard's battery chart request, with the 24 h window: one page, 720 readings at full size).

p50/p99/max per endpoint in ms, rps = all requests of the concurrent phases / their time; ratios
are p99 / the floor's p99.

4. Last Will to screen at the API level (``--lwt-trials``, default 5; needs mosquitto): the server
   runs the fleet's ingest worker on a private broker; a scanner in
   a process of its own comes online with its Last Will set and is SIGKILLed; measured from the
   Will's arrival at a plain subscriber to the moment ``GET /api/v1/kits/{kit}``, fetched on the
   SSE ``change`` event that names the kit (as the dashboard does), shows it offline. The browser's
   rendering is not included (tests/test_dashboard.py measures that). ``lwt_to_screen_ms`` is the
   worst trial. This phase restarts the server with ingest; the load phases run without it.

Progress goes to stderr; the last line of stdout is one JSON object.
Exit status 1 if a request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench.ingest import cpu_seconds
from popkit.broker import free_port

# The API wants a signed-in user: the bench signs its requests as an ops user the server creates,
# with a token the bench signs with the key it hands the server.
BENCH_USER = "bench-ops"
HEADERS: dict[str, str] = {}


def sign_in(server_cfg: dict) -> dict:
    """``server_cfg`` with a fresh signing key; HEADERS then carry a token for BENCH_USER signed with it."""
    from fleet.auth.tokens import issue

    key = secrets.token_urlsafe(32)
    HEADERS["Authorization"] = f"Bearer {issue(key.encode(), BENCH_USER, 0, 7 * 86_400)}"
    return dict(server_cfg, secret_key=key)

QUICK = dict(kits=100, rows=100_000, duration=5.0)
FULL = dict(kits=1000, rows=1_000_000, duration=20.0)
ACCEPT = dict(overview=50.0, kit_page=50.0, history=100.0)  # p99 ms, the issue's acceptance
VIEW_REFRESH_S = 10.0  # the default (FleetSettings.view_refresh_s): every kit's view recomputed this often
HISTORY_LIMIT = 5000
# What ops ask the overview (the dashboard's requests): the first page, worst first, a later page,
# one state, a search.
OVERVIEWS = ("/api/v1/kits", "/api/v1/kits?sort=health", "/api/v1/kits?offset={offset}",
             "/api/v1/kits?state=online", "/api/v1/kits?q={q}")  # as the dashboard asks (app.js loadHistory: kind=battery&limit=5000); the route's maximum


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------- the database

def pg_throwaway(stack: ExitStack, url: str, keep: bool) -> None:
    """Create the URL's database if missing (and drop it when done, unless keep); refuse a non-empty one."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    name = parsed.database
    admin_url = parsed.set(drivername="postgresql+psycopg", database="postgres")
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    stack.callback(admin.dispose)
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), dict(n=name)).first()
        if not exists:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            say(f"db: created PostgreSQL database {name}")
            if not keep:
                def drop() -> None:
                    with admin.connect() as c:
                        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    say(f"db: dropped {name}")
                stack.callback(drop)
            return
    check = create_engine(parsed.set(drivername="postgresql+psycopg"))
    try:
        with check.connect() as conn:
            has = conn.execute(text("SELECT to_regclass('public.kits') IS NOT NULL")).scalar()
            if has and conn.execute(text("SELECT count(*) FROM kits")).scalar():
                raise SystemExit(f"bench.api: database {name} already holds kits; give a new name (it is created "
                                 "and dropped) or an empty database")
    finally:
        check.dispose()


# ---------------------------------------------------------------- the server (child process)

def serve(argv: list[str]) -> None:
    """``python -m bench.api --serve JSON``: the app on uvicorn over the seeded database."""
    import uvicorn

    from fleet.api.app import create_app
    from fleet.settings import FleetSettings
    from fleet.store import Store

    cfg = json.loads(argv[0])
    store = Store.open(cfg["db"])  # the kits' event windows are in the database, as registration stores them
    ingest = None
    if cfg.get("mqtt_url"):  # for the Last Will phase: the fleet's ingest worker on the bench's broker
        from fleet.ingest import Ingest

        ingest = Ingest(FleetSettings(mqtt_url=cfg["mqtt_url"], db_url=cfg["db"], client_id="bench-api-fleet",
                                      view_refresh_s=cfg["view_refresh_s"]), store).start()
    app = create_app(store, ingest=ingest, settings=FleetSettings(view_refresh_s=cfg["view_refresh_s"],
                                                                  secret_key=cfg["secret_key"]))
    app.state.auth.users.put(BENCH_USER, "ops")  # token generation 0, as sign_in signed it

    @app.get("/bench/noop", include_in_schema=False)
    def noop():  # sync, as the real routes: the same threadpool hop
        return {"ok": True}

    try:
        uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="warning", access_log=False)
    finally:
        if ingest is not None:
            ingest.stop()
        store.close()


class Server:
    def __init__(self, cfg: dict):
        self.port = cfg["port"]
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.api", "--serve", json.dumps(cfg)],
                                     cwd=Path(__file__).resolve().parent.parent)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API server exited with {self.proc.returncode}")
            try:
                status, _ = request(http.client.HTTPConnection("127.0.0.1", self.port, timeout=5), "/bench/noop")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the API server did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- the clients

def request(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path, headers=HEADERS)
    resp = conn.getresponse()
    return resp.status, resp.read()


def percentile(sorted_ms: list[float], q: float) -> float | None:
    if not sorted_ms:
        return None
    k = min(len(sorted_ms) - 1, max(0, int(round(q / 100 * len(sorted_ms) + 0.5)) - 1))
    return sorted_ms[k]


def load(port: int, paths, clients: int, duration: float, server_pid: int) -> dict:
    """``clients`` threads, each on its own keep-alive connection, GET paths() back to back for ``duration``."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    nbytes = [0] * clients
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        rnd = random.Random(k)
        mine = lat[k]
        start.wait()
        while True:
            path = paths(rnd)
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                break
            try:
                status, body = request(conn, path)
            except (OSError, http.client.HTTPException) as exc:
                errors.append(f"{path}: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            mine.append((time.perf_counter() - t0) * 1000)
            nbytes[k] += len(body)
            if status != 200:
                errors.append(f"{path}: HTTP {status} {body[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds(server_pid)
    t0 = time.perf_counter()
    stop_at[0] = t0 + duration
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0  # includes the requests in flight at the deadline
    cpu1 = cpu_seconds(server_pid)
    all_ms = sorted(x for part in lat for x in part)
    n = len(all_ms)
    return dict(requests=n, errors=len(errors), first_errors=errors[:3], seconds=round(wall, 2),
                rps=round(n / wall, 1), p50_ms=_r(percentile(all_ms, 50)), p99_ms=_r(percentile(all_ms, 99)),
                max_ms=_r(all_ms[-1] if all_ms else None), mean_ms=_r(sum(all_ms) / n if n else None),
                bytes_avg=round(sum(nbytes) / n) if n else None,
                server_cpu_ms_per_req=_r((cpu1 - cpu0) * 1000 / n if n else None))


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


# ---------------------------------------------------------------- Last Will to screen (API level)

DOOMED_DEVICE = r"""
import sys, time
from plumbing.mqtt import new_client, parse_mqtt_url
from kits.contract import State, encode, topic
url, kit, device, boot = sys.argv[1:5]
t = parse_mqtt_url(url)
c = new_client(device + "-doomed")
ts = int(time.time() * 1000)
state = topic(kit, device, "state")
c.will_set(state, encode(State(boot=boot, seq=0, ts=ts + 1, online=False, role="scanner", reason="lwt")), qos=1, retain=True)
c.connect(t.host, t.port, keepalive=30, clean_start=True)
c.loop_start()
c.publish(state, encode(State(boot=boot, seq=0, ts=ts, online=True, role="scanner", fw="bench")), qos=1, retain=True).wait_for_publish(5)
print("up", flush=True)
while True:
    time.sleep(1)
"""


def lwt_trial(port: int, broker_url: str, kit: str, device: str, timeout: float = 10) -> dict:
    """One scanner (its own process, Last Will set) comes online, then is SIGKILLed: the broker
    publishes its Will. Measured: the Will's arrival at a plain subscriber -> the kit as
    ``GET /api/v1/kits/{kit}`` returns it shows the device offline, fetched (as the dashboard
    does) on the ``change`` event of ``GET /api/v1/stream`` that names the kit."""
    import signal

    from kits.contract import topic
    from plumbing.mqtt import new_client, parse_mqtt_url

    def kit_device_online() -> bool | None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            status, body = request(conn, f"/api/v1/kits/{kit}")
        finally:
            conn.close()
        return next((d["online"] for d in json.loads(body)["devices"] if d["id"] == device), None)

    boot = os.urandom(4).hex()
    proc = subprocess.Popen([sys.executable, "-c", DOOMED_DEVICE, broker_url, kit, device, boot],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
    dest = parse_mqtt_url(broker_url)
    will_at: list[float] = []
    sub = new_client(f"bench-api-will-{boot}")
    subscribed = threading.Event()
    sub.on_connect = lambda c, *_a: c.subscribe(topic(kit, device, "state"), qos=1)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.on_message = lambda _c, _u, m: will_at.append(time.time()) if b'"lwt"' in m.payload else None
    sub.connect(dest.host, dest.port, keepalive=30, clean_start=True)
    sub.loop_start()
    stream = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if proc.stdout.readline().strip() != "up" or not subscribed.wait(10):
            raise RuntimeError("the doomed device or the Will subscriber did not come up")
        deadline = time.monotonic() + timeout
        while kit_device_online() is not True:  # its birth ingested
            if time.monotonic() > deadline:
                raise TimeoutError(f"{device} never showed online")
            time.sleep(0.02)
        stream.request("GET", "/api/v1/stream", headers=HEADERS)
        resp = stream.getresponse()
        while resp.fp.readline().strip() != b"":  # the hello event: the subscription is live
            pass
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        seen_at = None
        while seen_at is None:
            line = resp.fp.readline()
            if not line:
                raise RuntimeError("the stream ended")
            if line.startswith(b"data:") and kit.encode() in line:
                data = json.loads(line[5:])
                if (kit in data.get("kits", []) or data.get("all")) and kit_device_online() is False:
                    seen_at = time.time()
            if time.monotonic() > deadline + timeout:
                raise TimeoutError(f"{device} never showed offline")
        for _ in range(200):
            if will_at:
                break
            time.sleep(0.01)
        return dict(kit=kit, device=device, lwt_to_screen_ms=_r((seen_at - will_at[0]) * 1000) if will_at else None,
                    kill_to_screen_ms=_r((seen_at - killed_at) * 1000))
    finally:
        stream.close()
        sub.disconnect()
        sub.loop_stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="100 kits, 1,000 devices, 100,000 rows, 5 s per endpoint")
    p.add_argument("--db", help="SQLAlchemy URL (default: SQLite in a temp dir). postgresql://.../NAME: NAME is "
                                "created if missing and then dropped at the end (unless --keep)")
    p.add_argument("--kits", type=int, help="kits (10 devices each; default 1,000, quick 100)")
    p.add_argument("--rows", type=int, help="telemetry rows (default 1,000,000, quick 100,000)")
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    p.add_argument("--duration", type=float, help="seconds per endpoint (default 20, quick 5)")
    p.add_argument("--lwt-trials", type=int, default=5, help="Last Will to screen trials (0: skip; needs mosquitto)")
    p.add_argument("--keep", action="store_true", help="keep the database (and the temp dir) for a look afterwards")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.kits = args.kits or preset["kits"]
    args.rows = args.rows or preset["rows"]
    args.duration = args.duration or preset["duration"]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1:])
        return 0
    args = parse_args(argv)
    import logging
    import signal

    # SIGTERM (timeout, Ctrl-C from a wrapper) still stops the server and drops the database.
    signal.signal(signal.SIGTERM, lambda *_a: sys.exit(143))

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s %(message)s", stream=sys.stderr)
    from bench.api_seed import seed, touch_last_seen
    from fleet.store import Store

    started = time.perf_counter()
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="popkit-bench-api-"))
        if not args.keep:
            stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        db_url = args.db or f"sqlite:///{tmp / 'fleet.db'}"
        db_kind = db_url.split(":", 1)[0].split("+", 1)[0]
        if db_kind == "postgresql":
            pg_throwaway(stack, db_url, args.keep)
        say(f"bench.api: {args.kits:,} kits, {args.kits * 10:,} devices, {args.rows:,} telemetry rows, "
            f"{args.clients} clients x {args.duration:g}s per endpoint, database {db_kind}"
            + (f" (kept: {db_url})" if args.keep else ""))

        # 1. seed
        end = now_ms()
        doors_open, ends = end - 2 * 3600_000, end + 4 * 3600_000  # the event is on: doors opened 2 h ago
        store = Store.open(db_url)
        try:
            info = seed(store.engine, args.kits, args.rows, end, doors_open, ends, say=say)
            sizes = {}
            if db_kind == "sqlite":
                path = Path(store.engine.url.database)
                sizes["db_mb"] = round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 1e6, 1)
            else:
                with store.engine.connect() as conn:
                    sizes["db_mb"] = round(conn.exec_driver_sql("SELECT pg_database_size(current_database())")
                                           .scalar() / 1e6, 1)
        finally:
            store.close()
        say(f"seed: {info['rows']:,} rows + {info['kits']:,} kits / {info['devices']:,} devices in {info['seed_s']}s "
            f"(ledger {info['seed_ledger_s']}s, {info['rows_per_s']:,} rows/s); power banks: {info['pb_rows_each']} "
            f"readings each, every {info['pb_period_s']}s; database {sizes['db_mb']} MB")
        kit_ids = [m.id for m in info["manifests"]]
        banks = [d.id for d in info["devs"] if d.role == "powerbank"]

        # 2. serve (the app alone: no ingest, no broker)
        port = free_port()
        server_cfg = sign_in(dict(db=db_url, port=port, kits=args.kits, doors_open_ms=doors_open, ends_ms=ends,
                                  pb_period_s=info["pb_period_s"], mqtt_url=None, view_refresh_s=VIEW_REFRESH_S))
        server = Server(server_cfg)
        stack.callback(server.stop)
        server.wait_ready()
        pid = server.proc.pid
        since = end - 24 * 3600_000

        endpoints = {
            "floor": lambda rnd: "/bench/noop",
            "healthz": lambda rnd: "/healthz",
            "overview": lambda rnd: rnd.choice(OVERVIEWS).format(offset=rnd.randrange(0, args.kits, 100),
                                                                  q=rnd.choice(kit_ids)),
            "kit_page": lambda rnd: f"/api/v1/kits/{rnd.choice(kit_ids)}",
            "history": lambda rnd: f"/api/v1/devices/{rnd.choice(banks)}/telemetry?kind=battery&since={since}&limit={HISTORY_LIMIT}",
        }
        # Warm-up: imports, the threadpool, the connection pool, the database's caches.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        rnd = random.Random(0)
        for name, path in endpoints.items():
            for _ in range(2 if name == "overview" else 10):
                status, body = request(conn, path(rnd))
                if status != 200:
                    raise RuntimeError(f"{name}: HTTP {status}: {body[:300]!r}")
        status, overview_body = request(conn, "/api/v1/kits")
        overview = json.loads(overview_body)["items"]
        status, history_body = request(conn, endpoints["history"](rnd))
        history_items = len(json.loads(history_body)["items"])
        conn.close()
        say(f"overview: first page {len(overview)} kits, {len(overview_body) / 1e6:.2f} MB of JSON; "
            f"kit health {sorted({k['health']['status'] for k in overview})}; "
            f"history page: {history_items} readings, {len(history_body) / 1e3:.0f} kB")

        results: dict[str, dict] = {}
        solo: dict[str, dict] = {}
        for name, paths in endpoints.items():
            touch_last_seen_engine(db_url, touch_last_seen)
            results[name] = r = load(port, paths, args.clients, args.duration, pid)
            say(f"{name:9s} {args.clients} clients: {r['requests']:6,} req {r['rps']:8,.1f} rps  p50 {r['p50_ms']} "
                f"p99 {r['p99_ms']} max {r['max_ms']} ms  server CPU {r['server_cpu_ms_per_req']} ms/req  "
                f"errors {r['errors']}")
            solo[name] = s = load(port, paths, 1, max(1.0, args.duration / 4), pid)
            say(f"{name:9s} 1 client : {s['requests']:6,} req {s['rps']:8,.1f} rps  p50 {s['p50_ms']} "
                f"p99 {s['p99_ms']} max {s['max_ms']} ms  server CPU {s['server_cpu_ms_per_req']} ms/req")
        views = view_metrics(port)
        say(f"kit views: {views['full_passes']} full passes, the last {views['full_pass_ms']} ms for {args.kits:,} kits "
            f"(every {server_cfg['view_refresh_s']:g} s: {views['refresh_cpu_pct']} % of one core); "
            f"{views['reads_recomputed']} reads recomputed a view first")
        server.stop()

        # 3. Last Will to screen, API level, on the seeded fleet: the server again, now with the
        # fleet's ingest worker on a private broker.
        lwt: list[dict] = []
        broker_url = None
        if args.lwt_trials:
            from popkit.broker import MosquittoBroker, mosquitto_binary

            if mosquitto_binary():
                broker = MosquittoBroker(data_dir=tmp / "broker")
                broker.start()
                stack.callback(broker.stop)
                broker_url = broker.url
            else:
                say("lwt: no mosquitto binary; Last Will to screen not measured")
        if broker_url:
            server = Server(dict(server_cfg, port=(port := free_port()), mqtt_url=broker_url))
            stack.callback(server.stop)
            server.wait_ready()
            rnd = random.Random(7)
            for kit in rnd.sample(kit_ids, min(args.lwt_trials, len(kit_ids))):
                lwt.append(t := lwt_trial(port, broker_url, kit, f"{kit}-scan-1"))
                say(f"lwt: {t['device']}: Will at a subscriber -> offline in GET /api/v1/kits/{kit} "
                    f"{t['lwt_to_screen_ms']} ms (kill -> screen {t['kill_to_screen_ms']} ms)")
        server.stop()
    lwt_ms = sorted(t["lwt_to_screen_ms"] for t in lwt if t["lwt_to_screen_ms"] is not None)

    measured = ("overview", "kit_page", "history")
    total_req = sum(results[n]["requests"] for n in measured)
    total_s = sum(results[n]["seconds"] for n in measured)
    floor = results["floor"]["p99_ms"] or None
    errors = sum(r["errors"] for r in results.values()) + sum(r["errors"] for r in solo.values())
    out = {
        "bench": "api",
        "kits": args.kits,
        "devices": info["devices"],
        "rows": info["rows"],
        "overview_p99_ms": results["overview"]["p99_ms"],
        "kit_page_p99_ms": results["kit_page"]["p99_ms"],
        "history_p99_ms": results["history"]["p99_ms"],
        "lwt_to_screen_ms": lwt_ms[-1] if lwt_ms else None,
        "rps": round(total_req / total_s, 1),
        "db": db_kind,
        "clients": args.clients,
        "duration_s": args.duration,
        "baseline_p99_ms": floor,
        "baseline_rps": results["floor"]["rps"],
        "healthz_p99_ms": results["healthz"]["p99_ms"],
        "healthz_rps": results["healthz"]["rps"],
        "ratio_p99": {n: (round(results[n]["p99_ms"] / floor, 1) if floor else None) for n in ("healthz", *measured)},
        "accept": {n: results[n]["p99_ms"] is not None and results[n]["p99_ms"] <= ACCEPT[n] for n in measured},
        "endpoints": {n: {k: results[n][k] for k in ("requests", "rps", "p50_ms", "p99_ms", "max_ms",
                                                     "server_cpu_ms_per_req", "bytes_avg")} for n in results},
        "solo": {n: {k: solo[n][k] for k in ("rps", "p50_ms", "p99_ms", "max_ms", "server_cpu_ms_per_req")}
                 for n in solo},
        "overview_bytes": len(overview_body),
        "overview_page_kits": len(overview),
        "view_full_pass_ms": views["full_pass_ms"],
        "view_refresh_s": VIEW_REFRESH_S,
        "view_refresh_cpu_pct": views["refresh_cpu_pct"],
        "view_reads_recomputed": views["reads_recomputed"],
        "history_items": history_items,
        "errors": errors,
        "seed_s": info["seed_s"],
        "seed_ledger_s": info["seed_ledger_s"],
        "seed_rows_per_s": info["rows_per_s"],
        "pb_rows_each": info["pb_rows_each"],
        "db_mb": sizes["db_mb"],
        "lwt_to_screen_ms_all": lwt_ms,
        "kill_to_screen_ms_all": [t["kill_to_screen_ms"] for t in lwt],
        "note": "lwt_to_screen_ms: the worst of the trials, API level (Will at a subscriber -> SSE change -> "
                "GET /api/v1/kits/{id} shows the device offline); no browser rendering (tests/test_dashboard.py)",
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if errors:
        for r in list(results.values()) + list(solo.values()):
            for e in r["first_errors"]:
                say(f"error: {e}")
    print(json.dumps(out), flush=True)
    return 1 if errors else 0


def view_metrics(port: int) -> dict:
    """What keeping the kit views fresh cost the server: its own /metrics (fleet/views/cache.py)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        _status, body = request(conn, "/metrics")
    finally:
        conn.close()
    values = {}
    for line in body.decode().splitlines():
        if line.startswith("popkit_kit_view"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    full_s = values.get("popkit_kit_view_full_pass_seconds", 0.0)
    return dict(full_passes=int(values.get('popkit_kit_view_passes_total{kind="full"}', 0)),
                full_pass_ms=round(full_s * 1000, 1), refresh_cpu_pct=round(100 * full_s / VIEW_REFRESH_S, 1),
                reads_recomputed=int(values.get("popkit_kit_view_reads_recomputed_total", 0)))


def touch_last_seen_engine(db_url: str, touch) -> None:
    """Every device heard from just now (as a live fleet's next batches would say), before each phase."""
    from fleet import db

    engine = db.make_engine(db_url)
    try:
        touch(engine, now_ms())
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
