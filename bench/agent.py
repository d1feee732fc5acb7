"""Agent soak bench: the kit's agent on a simulated kit, its memory and CPU next to a bare MQTT producer.

    python -m bench.agent [--quick]

One run, all on this machine:

1. a private Mosquitto (``popkit.broker``) and the fleet (``fleet.service.build``: Store + Ingest on
   SQLite, in this process) ingesting from it with the bench kit registered, so receipts flow back
   and the agent's outbox drains as in a real kit;
2. ``kit_up_s``: wall time of ``popkit kit up BENCH_KIT --simulate --mqtt BROKER`` (the hosted parts
   simulated, the scanner and lighting controller as their real firmware in the unix-port
   micropython) from process start to exit; it must exit 0 (ready). Median of 3 (1 with --quick),
   each on a fresh data folder; ``selftest_s`` is the self-test's own time from its
   ``READY (1.2 s)`` line;
3. the soak: ``popkit agent run --kit BENCH_KIT --simulate`` as a subprocess. After a warm-up (its
   power-up self-test included) the process and its children are sampled every second with psutil:
   CPU% = (user + system CPU seconds) / wall seconds over the window, in % of one core; RSS and USS
   maxima over the whole soak (MB = 2**20 bytes).
   - idle: the kit at its normal cadences (each part's telemetry every 5-10 s, the agent's health
     every 10 s: ~0.7 message/s);
   - busy: the agent restarted on the same kit with every part at 0.5 s: 5 parts x 2 /s + health
     = ~10 messages/s (``busy_msg_s``); ``*_msg_s_measured`` is what the fleet newly stored from the
     agent and its parts over the window (rows in its database);
   the kit's scanner and lighting controller run beside it as their real firmware (as ``kit up``
   starts them: ``popkit.simkit.start_firmware``, no crowd at the door), so the agent's self-test is
   READY and its door hub is up; they are not sampled;
4. the baseline, on the same broker with the same sampling: a minimal paho-mqtt client process
   (MQTT v5, network thread, as the agent's link) publishing nothing (idle), then publishing
   10 JSON telemetry messages/s at QoS 1 (busy): the floor for a Python MQTT producer. Ratios are
   agent / baseline.

With ``--simulate`` the simulators (VE.Direct and ESC/POS on ptys, the BLE lamps through a simulated
bleak backend, GPIO on gpiozero's MockFactory) run inside the agent process, so its figures include
them: on a real kit that work is done by the hardware. The JSON's ``note`` says so.

Acceptance (the issue's): RSS <= 60 MB, idle CPU <= 1 %, ``kit up`` ready in under 10 s. The exit
status is 0 when the bench ran, whether or not those hold (the numbers are the report); nonzero
when something broke (the agent died, ``kit up`` was not ready, the fleet stored nothing).

Progress lines go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
MB = 2**20
BUSY_MSG_S = 10
KIT_ID = "bench-kit"

# Per-part telemetry periods (s). Idle: a kit's normal cadences. Busy: 5 parts at 0.5 s = 10 msg/s,
# plus the agent's own health telemetry every 10 s (agent/daemon.py HEALTH_PERIOD_S).
IDLE = {"power": 5, "printer": 10, "flood": 10, "lamp": 10}
BUSY = {"power": 0.5, "printer": 0.5, "flood": 0.5, "lamp": 0.5}

FULL = dict(kitup_runs=3, warmup_s=10.0, window_s=30.0, base_warmup_s=5.0)
QUICK = dict(kitup_runs=1, warmup_s=10.0, window_s=10.0, base_warmup_s=3.0)

MANIFEST = """\
# bench/agent.py's kit: the listening room's parts (tests the agent at realistic cadences)
id = "{kit}"
name = "Agent bench kit"
agent = "bench-agent"

[event]
doors_open = 2026-11-21T19:00:00+01:00
ends = 2026-11-21T23:30:00+01:00

[[devices]]
id = "bench-power"
role = "powerbank"
model = "victron-smartshunt"
bus = "serial:/dev/ttyUSB0"
telemetry_s = {power}
expect = {{ min_soc = 60 }}

[[devices]]
id = "bench-printer"
role = "printer"
model = "epson-tm-t20"
bus = "serial:/dev/ttyUSB1"
telemetry_s = {printer}

[[devices]]
id = "bench-door"
role = "scanner"
model = "esp32-gm65"

[[devices]]
id = "bench-stage"
role = "lighting"
model = "esp32-pwm-dmx"

[[devices]]
id = "bench-flood"
role = "light"
model = "relay"
bus = "gpio:17"
telemetry_s = {flood}
expect = {{ safety = true }}

[[devices]]
id = "bench-lamp-1"
role = "light"
model = "elk-bledom"
bus = "ble:BE:16:02:00:11:01"
telemetry_s = {lamp}

[[devices]]
id = "bench-lamp-2"
role = "light"
model = "elk-bledom"
bus = "ble:BE:16:02:00:11:02"
telemetry_s = {lamp}

[[devices]]
id = "bench-panel"
role = "panel"
model = "kit-panel"
bus = "gpio"
pins = {{ button = 27, red = 5, green = 6, blue = 13 }}
"""

# The floor: a bare paho producer with a network thread, idle or publishing RATE JSON messages/s at QoS 1.
BASELINE = r"""
import json, sys, threading, time
import paho.mqtt.client as mqtt
host, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-baseline-" + str(time.time_ns()),
                protocol=mqtt.MQTTv5)
up = threading.Event()
c.on_connect = lambda *a: up.set()
c.connect(host, port, keepalive=60)
c.loop_start()
if not up.wait(10):
    sys.exit("baseline: no connection")
print("connected", flush=True)
seq, nxt = 0, time.monotonic()
while True:
    if rate <= 0:
        time.sleep(3600)
        continue
    seq += 1
    body = {"v": 1, "kit": "bench-baseline", "device": "bench-baseline-1", "boot": "0123abcd", "seq": seq,
            "ts": int(time.time() * 1000), "kind": "telemetry",
            "body": {"v": 12.54, "i": -6.0, "p": -75.2, "soc": 87.0, "ttg_min": 870}}
    c.publish("bench/baseline/telemetry", json.dumps(body, separators=(",", ":")), qos=1)
    nxt += 1.0 / rate
    time.sleep(max(0.0, nxt - time.monotonic()))
"""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Broken(Exception):
    """Something the bench needs did not work: exit nonzero."""


def write_manifest(path: Path, cadence: dict) -> Path:
    path.write_text(MANIFEST.format(kit=KIT_ID, **cadence))
    return path


def reap(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop ``proc`` with ``sig`` (its own clean shutdown), SIGKILL it if it hangs, then any descendant left."""
    if proc is None:
        return
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for k in kids:
        try:
            if k.is_running():
                k.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(kids, timeout=5)
    for k in alive:
        try:
            k.kill()
        except psutil.Error:
            pass


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ---------------------------------------------------------------- sampling


def tree_cpu_s(root: psutil.Process, seen: dict[int, float]) -> float:
    """CPU seconds (user + system) of ``root`` and its live descendants, those that ended counted
    at their last reading (``seen``, per pid, updated)."""
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            seen[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return sum(seen.values())


def tree_mem(root: psutil.Process) -> tuple[int, int]:
    rss = uss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            m = p.memory_full_info()
            rss += m.rss
            uss += m.uss
        except psutil.Error:
            pass
    return rss, uss


def soak(proc: subprocess.Popen, warmup_s: float, window_s: float, label: str, log: Path | None = None,
         counter=None) -> dict:
    """Sample ``proc`` (and children) every second: warm-up, then a CPU window. Returns CPU%, RSS/USS maxima
    over the whole time (MB) and, with ``counter`` (a callable), its rate over the window."""
    root = psutil.Process(proc.pid)
    seen: dict[int, float] = {}
    rss_max = uss_max = 0
    t_end_warm = time.monotonic() + warmup_s
    say(f"  {label}: warm-up {warmup_s:.0f} s")
    while time.monotonic() < t_end_warm:
        _alive(proc, label, log)
        rss, uss = tree_mem(root)
        rss_max, uss_max = max(rss_max, rss), max(uss_max, uss)
        time.sleep(1.0)
    say(f"  {label}: measuring {window_s:.0f} s")
    c0, w0 = tree_cpu_s(root, seen), time.monotonic()
    n0 = counter() if counter else 0
    while time.monotonic() - w0 < window_s:
        time.sleep(min(1.0, max(0.0, window_s - (time.monotonic() - w0))))
        _alive(proc, label, log)
        rss, uss = tree_mem(root)
        rss_max, uss_max = max(rss_max, rss), max(uss_max, uss)
    c1, w1 = tree_cpu_s(root, seen), time.monotonic()
    n1 = counter() if counter else 0
    out = {"cpu_pct": round((c1 - c0) / (w1 - w0) * 100, 2), "rss_mb": round(rss_max / MB, 1),
           "uss_mb": round(uss_max / MB, 1), "procs": len(seen)}
    if counter:
        out["msg_s"] = round((n1 - n0) / (w1 - w0), 2)
    say(f"  {label}: CPU {out['cpu_pct']} %, RSS max {out['rss_mb']} MB (USS {out['uss_mb']} MB)"
        + (f", fleet stored {out['msg_s']} msg/s" if counter else ""))
    return out


def _alive(proc: subprocess.Popen, label: str, log: Path | None) -> None:
    if proc.poll() is not None:
        raise Broken(f"{label}: the process exited ({proc.returncode}) during the soak\n{tail(log) if log else ''}")


# ---------------------------------------------------------------- the parts


def popkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "popkit.cli", *args]


def kit_up(manifest: Path, mqtt_url: str, data: Path, n: int, stack: ExitStack) -> tuple[list[float], list[float]]:
    walls, selftests = [], []
    for i in range(n):
        d = data / f"kitup-{i}"
        d.mkdir(parents=True)
        log = d / "kitup.log"
        out = open(log, "w")
        stack.callback(out.close)
        t0 = time.monotonic()
        # SIGINT is kit up's clean stop (its firmware processes are in their own sessions).
        proc = subprocess.Popen(popkit("kit", "up", str(manifest), "--simulate", "--mqtt", mqtt_url, "--data", str(d)),
                                stdout=out, stderr=subprocess.STDOUT, cwd=d, env=dict(os.environ, COLUMNS="120"))
        stack.callback(reap, proc, signal.SIGINT)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            raise Broken(f"kit up did not finish in 60 s\n{tail(log)}") from None
        wall = time.monotonic() - t0
        if rc != 0:
            raise Broken(f"kit up exited {rc} (0 = ready)\n{tail(log)}")
        m = re.search(r"\bREADY\s*\(([\d.]+) s\)", log.read_text(errors="replace"))
        walls.append(wall)
        if m:
            selftests.append(float(m.group(1)))
        say(f"  kit up #{i + 1}: exit 0 in {wall:.2f} s" + (f" (self-test {m.group(1)} s)" if m else ""))
    return walls, selftests


def agent_soak(manifest: Path, mqtt_url: str, data: Path, label: str, cfg: dict, counter,
               stack: ExitStack) -> tuple[dict, float | None]:
    data.mkdir(parents=True)
    log = data / "agent.log"
    out = open(log, "w")
    stack.callback(out.close)
    proc = subprocess.Popen(popkit("agent", "run", "--kit", str(manifest), "--mqtt", mqtt_url, "--data", str(data),
                                   "--simulate"), stdout=out, stderr=subprocess.STDOUT, cwd=data)
    stack.callback(reap, proc)
    try:
        got = soak(proc, cfg["warmup_s"], cfg["window_s"], label, log, counter)
    finally:
        reap(proc)
    text = tail(log, 200_000)
    m = re.search(r": (READY|DEGRADED|NOT READY) \(([\d.]+) s\)", text)
    if not m:
        raise Broken(f"{label}: the agent's power-up self-test reported no verdict\n{tail(log)}")
    if m.group(1) != "READY":
        raise Broken(f"{label}: the agent's self-test said {m.group(1)} on the healthy simulated kit\n{tail(log)}")
    if proc.returncode not in (0, -signal.SIGTERM):
        raise Broken(f"{label}: the agent exited {proc.returncode} on SIGTERM\n{tail(log)}")
    return got, float(m.group(2))


def baseline(host: str, port: int, rate: float, data: Path, label: str, cfg: dict, stack: ExitStack) -> dict:
    log = data / f"baseline-{label.split()[-1]}.log"
    out = open(log, "w")
    stack.callback(out.close)
    proc = subprocess.Popen([sys.executable, "-c", BASELINE, host, str(port), str(rate)], stdout=out,
                            stderr=subprocess.STDOUT)
    stack.callback(reap, proc)
    try:
        return soak(proc, cfg["base_warmup_s"], cfg["window_s"], label, log)
    finally:
        reap(proc)


def agent_rows(store, devices: list[str]) -> int:
    """Ledger rows (telemetry, events, acks) the fleet has stored from the agent and its hosted parts."""
    from sqlalchemy import func, select

    from fleet import db

    with store.engine.connect() as conn:
        return sum(conn.execute(select(func.count()).select_from(t).where(t.c.device_id.in_(devices))).scalar_one()
                   for t in (db.telemetry, db.events))


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def run(quick: bool) -> dict:
    from fleet.service import build
    from fleet.settings import FleetSettings
    from popkit.broker import MosquittoBroker
    from plumbing.mqtt import parse_mqtt_url

    cfg = QUICK if quick else FULL
    with ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="popkit-bench-agent-"))
        stack.callback(lambda: __import__("shutil").rmtree(tmp, ignore_errors=True))
        idle_kit = write_manifest(tmp / "bench-kit.toml", IDLE)
        busy_kit = write_manifest(tmp / "bench-kit-busy.toml", BUSY)

        broker = MosquittoBroker(data_dir=tmp / "broker").start()
        stack.callback(broker.stop)
        target = parse_mqtt_url(broker.url)
        say(f"bench.agent: broker {broker.url}, data in {tmp}")

        settings = FleetSettings(mqtt_url=broker.url, db_url=f"sqlite:///{tmp / 'fleet.db'}", kits=[str(idle_kit)],
                                 client_id=f"bench-fleet-{secrets.token_hex(3)}", batch_wait_ms=20)
        store, ingest = build(settings)
        stack.callback(store.close)
        ingest.start()
        stack.callback(ingest.stop, 5.0)
        if not ingest.connected.wait(10):
            raise Broken("the fleet did not connect to the broker")
        agent_devices = ["bench-agent", "bench-power", "bench-printer", "bench-flood", "bench-lamp-1", "bench-lamp-2"]
        stored = lambda: agent_rows(store, agent_devices)  # noqa: E731

        say(f"kit up ({cfg['kitup_runs']}x): {idle_kit.name} --simulate (scanner + lighting firmware in micropython)")
        walls, selftests = kit_up(idle_kit, broker.url, tmp, cfg["kitup_runs"], stack)

        say("agent soak: popkit agent run --simulate (the scanner and lighting firmware up beside it, as in a kit)")
        from popkit.simkit import start_firmware
        from kits.manifest import load_manifest

        (tmp / "esp32").mkdir()
        start_firmware(load_manifest(idle_kit), broker.url, tmp / "esp32", set(), stack)
        idle, agent_selftest_s = agent_soak(idle_kit, broker.url, tmp / "agent-idle", "agent idle", cfg, stored, stack)
        busy, _ = agent_soak(busy_kit, broker.url, tmp / "agent-busy", "agent busy", cfg, stored, stack)
        if idle["msg_s"] <= 0 or busy["msg_s"] <= 0:
            raise Broken(f"the fleet stored nothing from the agent (idle {idle['msg_s']}, busy {busy['msg_s']} msg/s)")

        say("baseline: a bare paho producer (MQTT v5, network thread)")
        b_idle = baseline(target.host, target.port, 0, tmp, "baseline idle", cfg, stack)
        b_busy = baseline(target.host, target.port, BUSY_MSG_S, tmp, "baseline busy", cfg, stack)
        rejected = dict(ingest.metrics.rejected)

    rss = max(idle["rss_mb"], busy["rss_mb"])
    b_rss = max(b_idle["rss_mb"], b_busy["rss_mb"])
    kit_up_s = round(statistics.median(walls), 2)
    return {
        "bench": "agent",
        "rss_mb": rss,
        "idle_cpu_pct": idle["cpu_pct"],
        "busy_cpu_pct": busy["cpu_pct"],
        "busy_msg_s": BUSY_MSG_S,
        "kit_up_s": kit_up_s,
        "busy_msg_s_measured": busy["msg_s"],
        "idle_msg_s_measured": idle["msg_s"],
        "uss_mb": max(idle["uss_mb"], busy["uss_mb"]),
        "rss_mb_idle": idle["rss_mb"],
        "rss_mb_busy": busy["rss_mb"],
        "agent_procs": max(idle["procs"], busy["procs"]),
        "kit_up_runs_s": [round(w, 2) for w in walls],
        "selftest_s": round(statistics.median(selftests), 2) if selftests else None,
        "agent_selftest_s": agent_selftest_s,
        "baseline_rss_mb": b_rss,
        "baseline_uss_mb": max(b_idle["uss_mb"], b_busy["uss_mb"]),
        "baseline_idle_cpu_pct": b_idle["cpu_pct"],
        "baseline_busy_cpu_pct": b_busy["cpu_pct"],
        "rss_ratio": ratio(rss, b_rss),
        "idle_cpu_ratio": ratio(idle["cpu_pct"], b_idle["cpu_pct"]),
        "busy_cpu_ratio": ratio(busy["cpu_pct"], b_busy["cpu_pct"]),
        # An idle paho client often reads 0.0 % (psutil counts CPU in 10 ms ticks): then the ratio is null
        # and the difference says what the agent costs above the floor.
        "idle_cpu_over_baseline_pct": round(idle["cpu_pct"] - b_idle["cpu_pct"], 2),
        "busy_cpu_over_baseline_pct": round(busy["cpu_pct"] - b_busy["cpu_pct"], 2),
        "fleet_rejected": rejected,
        "window_s": cfg["window_s"],
        "warmup_s": cfg["warmup_s"],
        "quick": quick,
        "cpu_count": os.cpu_count(),
        "note": ("with --simulate the hosted parts' simulators (VE.Direct and ESC/POS on ptys, BLE lamps via a "
                 "simulated bleak backend, GPIO on gpiozero MockFactory) run inside the agent process: its RSS "
                 "and CPU include them. CPU % is of one core; MB = 2**20 bytes; baseline = bare paho-mqtt v5 "
                 "client, idle / 10 msg/s QoS 1, same broker and sampling."),
        "acceptance": {"rss_le_60mb": rss <= 60, "idle_cpu_le_1pct": idle["cpu_pct"] <= 1.0,
                       "kit_up_lt_10s": kit_up_s < 10},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 kit up, 10 s windows (CI)")
    args = ap.parse_args(argv)
    try:
        result = run(args.quick)
    except Broken as exc:
        say(f"bench.agent: FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("bench.agent: interrupted")
        return 130
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
