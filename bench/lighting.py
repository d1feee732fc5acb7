"""Venue lighting bench (issue 6): compiling venues into controller timelines, and the controller's boot.

    python -m bench.lighting [--quick] [--venues N] [--trials N]

1. compile: N generated venues (100; ``--quick`` 20), seeded, each with 10 zones (2 safety zones with a
   floor_level) mapped to PWM channels r/g/b/w and DMX slot runs of 1..3 controllers, 20 schedules (weekly,
   one-off and sun-relative windows; a few priorities, and a schedule only takes a priority at which its
   windows overlap no other's over the compiled span, so nothing conflicts), 6-10 scenes, two overrides (a
   zone level on now, a whole scene later), time zones from London to Sydney. Every controller of a venue
   is compiled for 48 h with ``fleet.venues.compile_timeline``; ``compile_ms_per_venue`` is the median over
   venues of the time to compile all of a venue's controllers (p99 and max too). Baseline in the same run:
   ``json.dumps`` (compact) of those same timelines, the encoding the fleet does anyway before pushing.
   Sizes: each timeline as the controller receives it, the ``config`` payload ``{version, ts, data}`` in
   compact JSON, against the firmware's 4096-byte limit (docs/lighting-timeline.md "Size on the device"):
   ``over_4096_at_48h`` counts the controllers whose 48 h payload the device would refuse.
2. boot_to_scene_ms: the lighting app (device/apps/lighting/main.py) from its ROMFS image in the unix-port
   MicroPython (heap 64 KB + the image, as tests/device/test_lighting_app.py runs it), with its
   ``timeline.json`` already on the flash directory (written as device/lib/lighting.py keeps it: the config
   payload's bytes) whose current window is scene "b", and the broker down (its port closed). Measured from
   just before the process is spawned to the arrival at simulators/pwm.py of the last of the boot's first
   four PWM records (one per channel), which must already be scene b (no fade up from dark). Baseline:
   the same firmware with an empty flash, to its first four PWM records (all dark). Trials alternate
   (10; quick 3), after one discarded warm-up boot of each.
3. override_to_output_p99_ms: ``measure_override`` is a placeholder until the fleet's venue API exists.

Progress goes to stderr; the last stdout line is one JSON object. Exit status 1 on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, time as dtime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from bench.firmware import Proc, pct, say, tool

DATA_HEAP = 64 * 1024
KB = 1024
MAX_CONFIG = 4096  # device/lib/lighting.py MAX_CONFIG_BYTES
HORIZON_H = 48
FULL = dict(venues=100, trials=10)
QUICK = dict(venues=20, trials=3)
L = 257  # linear duty_u16 per level (the app runs with gamma null here)
TZS = ("Europe/London", "America/New_York", "Australia/Sydney", "Asia/Tokyo", "Europe/Berlin",
       "America/Los_Angeles", "America/Sao_Paulo", "Asia/Kolkata", "Pacific/Auckland", "Africa/Johannesburg",
       "Europe/Helsinki", "America/Chicago")
# rough coordinates per zone, for the sun
COORDS = {"Europe/London": (51.5, -0.1), "America/New_York": (40.7, -74.0), "Australia/Sydney": (-33.9, 151.2),
          "Asia/Tokyo": (35.7, 139.7), "Europe/Berlin": (52.5, 13.4), "America/Los_Angeles": (34.1, -118.2),
          "America/Sao_Paulo": (-23.5, -46.6), "Asia/Kolkata": (22.6, 88.4), "Pacific/Auckland": (-36.8, 174.8),
          "Africa/Johannesburg": (-26.2, 28.0), "Europe/Helsinki": (60.2, 24.9), "America/Chicago": (41.9, -87.6)}
PRIORITIES = (10, 20, 30, 40, 50)  # "a few"; a schedule that fits none of them gets one of its own (100+)
DMX_SLOTS = 24  # per controller, as the device config's default


def fail(msg: str) -> SystemExit:
    return SystemExit(f"bench.lighting: {msg}")


# ---------------------------------------------------------------- 1. compile

def gen_venue(rng: random.Random, i: int, start: datetime):
    """(venue, zones, scenes, schedules, overrides, controller ids): one seeded venue."""
    from fleet.venues import (OnceWindow, OpeningHours, Output, Override, Scene, SunEdge, SunWindow, Venue,
                              WeeklyWindow, Zone, ZoneLevel)
    from fleet.venues.compiler import schedule_windows

    tz = TZS[i % len(TZS)]
    lat, lon = COORDS[tz]
    venue = Venue(id=f"venue-{i:03d}", name=f"Venue {i}", tz=tz, latitude=lat + rng.uniform(-1, 1),
                  longitude=lon + rng.uniform(-1, 1),
                  hours=[OpeningHours(days=["mon", "tue", "wed", "thu", "fri"], open=dtime(17), close=dtime(1)),
                         OpeningHours(days=["sat", "sun"], open=dtime(11), close=dtime(2))])
    ctrls = [f"v{i:03d}-lights-{k + 1}" for k in range(rng.randint(1, 3))]
    free_pwm = {c: list("rgbw") for c in ctrls}
    next_slot = {c: 1 for c in ctrls}
    zones = []
    for z in range(10):
        outs = []
        c = rng.choice(ctrls)
        if free_pwm[c] and (rng.random() < 0.6 or z < 2):
            ch = free_pwm[c].pop(0)
            outs.append(Output(controller=c, kind="pwm", channel=ch))
        c = rng.choice(ctrls)
        n = rng.randint(1, 3)
        if next_slot[c] + n - 1 <= DMX_SLOTS and (rng.random() < 0.7 or not outs):
            outs.append(Output(controller=c, kind="dmx", slot=next_slot[c], count=n))
            next_slot[c] += n
        if not outs:  # every controller's PWM and DMX taken: any free slot, else a PWM channel
            c = min(ctrls, key=lambda c: next_slot[c])
            if next_slot[c] <= DMX_SLOTS:
                outs.append(Output(controller=c, kind="dmx", slot=next_slot[c], count=1))
                next_slot[c] += 1
            else:
                c = next(c for c in ctrls if free_pwm[c])
                outs.append(Output(controller=c, kind="pwm", channel=free_pwm[c].pop(0)))
        safety = z < 2
        zones.append(Zone(id=f"z{z}", name=f"{'Exit' if safety else 'Zone'} {z}", safety=safety,
                          floor_level=rng.randint(20, 80) if safety else None, outputs=outs))
    scenes = []
    for s in range(rng.randint(6, 10)):
        levels = {}
        for z in rng.sample(range(10), rng.randint(2, 10)):
            rgb = tuple(rng.randint(0, 255) for _ in range(3)) if rng.random() < 0.3 else None
            levels[f"z{z}"] = ZoneLevel(level=rng.randint(1, 255), rgb=rgb)
        scenes.append(Scene(id=f"s{s}", levels=levels, fade_ms=rng.choice((0, 0, 500, 2000, 10_000))))
    scene_ids = [s.id for s in scenes]

    tzinfo = venue.zone
    lo, hi = start, start + timedelta(hours=HORIZON_H)
    today = start.astimezone(tzinfo).date()
    days_all = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    cands = []
    for k in range(20):
        kind = ("weekly", "once", "sun")[k % 3] if k < 18 else "weekly"
        sid, scene = f"sch{k}", rng.choice(scene_ids)
        if kind == "weekly":
            h = rng.randint(6, 22)
            dur = rng.choice((30, 60, 90, 120, 180, 240))
            st = dtime(h, rng.choice((0, 15, 30, 45)))
            en = (datetime.combine(today, st) + timedelta(minutes=dur)).time()
            days = sorted(rng.sample(days_all, rng.randint(2, 7)), key=days_all.index)
            extra = {}
            if rng.random() < 0.3:
                extra = dict(valid_from=today - timedelta(days=rng.randint(0, 30)),
                             valid_until=today + timedelta(days=rng.randint(1, 60)))
            cands.append(WeeklyWindow(id=sid, scene=scene, days=days, start=st, end=en, **extra))
        elif kind == "once":
            d = today + timedelta(days=rng.randint(0, 2))
            if rng.random() < 0.5:
                st = dtime(rng.randint(8, 23), rng.choice((0, 30)))
                en = (datetime.combine(d, st) + timedelta(minutes=rng.choice((45, 90, 150)))).time()
                cands.append(OnceWindow(id=sid, scene=scene, date=d, start=st, end=en))
            else:
                s_at = datetime.combine(d, dtime(rng.randint(0, 22), rng.choice((0, 20, 40))))
                cands.append(OnceWindow(id=sid, scene=scene, start_at=s_at,
                                        end_at=s_at + timedelta(minutes=rng.choice((30, 60, 200)))))
        else:
            form = rng.random()
            if form < 0.4:
                start_e = SunEdge(event="sunset", offset_min=rng.choice((-30, -15, 0, 10)))
                end_e = dtime(23, 30) if rng.random() < 0.5 else dtime(rng.randint(0, 2), 0)
            elif form < 0.7:
                start_e = SunEdge(event="sunset", offset_min=rng.choice((0, 20)))
                end_e = SunEdge(event="sunrise", offset_min=rng.choice((-20, 0)))
            else:
                start_e = SunEdge(event="sunrise", offset_min=rng.choice((-30, 0, 15)))
                end_e = dtime(rng.randint(9, 11), 0)
            cands.append(SunWindow(id=sid, scene=scene, start=start_e, end=end_e,
                                   days=sorted(rng.sample(days_all, rng.randint(3, 7)), key=days_all.index)))
    # Priorities: each schedule takes the first of a shuffled few at which its windows (over the span the
    # compiler expands) overlap no accepted schedule's; else one of its own. No ScheduleConflict possible.
    schedules, taken = [], {}  # priority -> [(start, end)]
    own = 100
    for c in cands:
        spans = [(w.start, w.end) for w in schedule_windows(venue, [c], lo, hi)]
        prios = list(PRIORITIES)
        rng.shuffle(prios)
        for p in prios + [None]:
            if p is None:
                p, own = own, own + 1
                break
            if not any(s < e2 and s2 < e for s, e in spans for s2, e2 in taken.get(p, ())):
                break
        taken.setdefault(p, []).extend(spans)
        schedules.append(c.model_copy(update={"priority": p}))
    overrides = [
        Override(id="o-zone", zone=f"z{rng.randint(2, 9)}", level=ZoneLevel(level=rng.randint(0, 255)),
                 fade_ms=1000, expires=start + timedelta(hours=rng.randint(1, 5))),
        Override(id="o-scene", scene=rng.choice(scene_ids), starts=start + timedelta(hours=rng.randint(6, 20)),
                 expires=start + timedelta(hours=rng.randint(21, 30))),
    ]
    return venue, zones, scenes, schedules, overrides, ctrls


def run_compile(n_venues: int, seed: int) -> dict:
    from fleet.venues import CompileError, compile_timeline

    rng = random.Random(seed)
    start = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    t0 = time.monotonic()
    venues = [gen_venue(rng, i, start) for i in range(n_venues)]
    say(f"compile: {n_venues} venues generated in {time.monotonic() - t0:.1f}s "
        f"({sum(len(v[5]) for v in venues)} controllers, {sum(len(v[3]) for v in venues)} schedules, "
        f"priorities used {sorted({s.priority for v in venues for s in v[3]})}); compiling {HORIZON_H} h from "
        f"{start:%Y-%m-%d %H:%M}Z")
    errors = []
    v0 = venues[0]
    compile_timeline(*v0[:5], v0[5][0], start, HORIZON_H)  # warm-up (imports, zone caches), not counted
    per_venue, per_ctrl, enc_venue, sizes, tl_sizes, windows, scenes, ratios = [], [], [], [], [], [], [], []
    for venue, zones, scs, schedules, overrides, ctrls in venues:
        tls = []
        t_v = 0.0
        for c in ctrls:
            t = time.perf_counter()
            try:
                tl = compile_timeline(venue, zones, scs, schedules, overrides, c, start, HORIZON_H)
            except CompileError as exc:  # ScheduleConflict included
                errors.append(f"{venue.id}/{c}: {type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t
            t_v += dt
            per_ctrl.append(dt * 1000)
            tls.append(tl)
        if not tls:
            continue
        per_venue.append(t_v * 1000)
        t = time.perf_counter()
        payloads = [json.dumps({"version": 1, "ts": int(start.timestamp() * 1000), "data": tl},
                               separators=(",", ":")) for tl in tls]
        enc = (time.perf_counter() - t) * 1000
        enc_venue.append(enc)
        ratios.append(t_v * 1000 / enc if enc > 0 else float("inf"))
        for tl, p in zip(tls, payloads):
            sizes.append(len(p.encode()))
            tl_sizes.append(len(json.dumps(tl, separators=(",", ":")).encode()))
            windows.append(len(tl["windows"]))
            scenes.append(len(tl["scenes"]))
    if not per_venue:
        raise fail("no venue compiled:\n" + "\n".join(errors[:5]))
    over = sum(1 for s in sizes if s > MAX_CONFIG)
    say(f"compile: per venue p50 {pct(per_venue, 50):.2f} ms, p99 {pct(per_venue, 99):.2f} ms, max "
        f"{max(per_venue):.2f} ms (per controller p50 {pct(per_ctrl, 50):.2f} ms); json.dumps of the same "
        f"p50 {pct(enc_venue, 50):.3f} ms (compile / dumps p50 {pct(ratios, 50):.0f}x); payloads p50 "
        f"{pct(sizes, 50)} B, max {max(sizes)} B, {over} of {len(sizes)} over {MAX_CONFIG} B; windows p50 "
        f"{pct(windows, 50)}, max {max(windows)}; errors {len(errors)}")
    return dict(per_venue=per_venue, per_ctrl=per_ctrl, enc=enc_venue, ratios=ratios, sizes=sizes,
                tl_sizes=tl_sizes, windows=windows, scenes=scenes, over=over, errors=errors,
                venues=len(per_venue), controllers=len(per_ctrl), tzs=sorted({v[0].tz for v in venues}),
                prios=[len({s.priority for s in v[3]}) for v in venues])


# ---------------------------------------------------------------- 2. boot to scene

def build_rom(out: Path) -> Path:
    from popkit.firmware import FirmwareError
    from popkit.romfs import build_image

    try:
        return build_image("lighting", "unix", out)  # the role as deployed: main is the app
    except FirmwareError as exc:
        raise fail(str(exc)) from None


def spawn(image: Path, cfg: Path, cwd: Path) -> Proc:
    from popkit.romfs import boot_code, heap_for

    cmd = [tool("micropython"), "-X", f"heapsize={heap_for(DATA_HEAP, image, 'lighting')}", "-c", boot_code(image, "main"),
           str(cfg)]
    env = dict(os.environ, MICROPYPATH=".frozen")
    return Proc(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, bufsize=1))


def boot_timeline(t: int) -> dict:
    """As the test's: "a" is over, "b" holds now (for an hour)."""
    return {"format": 1, "default": "dark",
            "scenes": {"dark": {"levels": {}}, "a": {"levels": {"w": 50, "dmx": {"1": [10]}}},
                       "b": {"levels": {"g": 180, "w": 200, "dmx": {"1": [220, 30]}}, "fade_ms": 300}},
            "windows": [[t - 7200, t - 1800, "a", 10], [t - 1800, t + 3600, "b", 10]]}


def one_boot(image: Path, work: Path, pwm, dmx, scene: bool, n: int) -> dict:
    """Spawn the app with (scene) or without a timeline on its flash; the boot's first four PWM records."""
    from popkit.broker import free_port

    d = work / f"{'scene' if scene else 'empty'}-{n}"
    flash = d / "flash"
    flash.mkdir(parents=True)
    if scene:  # device/lib/lighting.py keeps the config payload's bytes as received, in TIMELINE_FILE
        t = int(time.time())
        (flash / "timeline.json").write_bytes(
            json.dumps({"version": 5, "ts": t * 1000, "data": boot_timeline(t)}, separators=(",", ":")).encode())
    cfg = {"kit": "bench", "device": "bench-lights-1", "broker": ["127.0.0.1", free_port()],  # nobody listens
           "dmx_slots": 24, "state_dir": str(flash), "pwm": ["127.0.0.1", pwm.port], "dmx": ["127.0.0.1", dmx.port],
           "gamma": None, "telemetry_s": 30, "keepalive": 5, "response_ms": 1500, "backoff_ms": 200,
           "backoff_max_ms": 500}
    path = d / "lighting.json"
    path.write_text(json.dumps(cfg))
    want = [0, 180 * L, 0, 200 * L] if scene else [0, 0, 0, 0]
    sessions = len(pwm.sessions)
    t0 = time.monotonic()
    app = spawn(image, path, d)
    try:
        deadline = t0 + 10
        while True:
            if len(pwm.sessions) > sessions and len(pwm.writes(pwm.sessions[sessions])) >= 4:
                break
            if time.monotonic() > deadline or app.proc.poll() is not None:
                tail = "\n".join(app.lines[-20:])
                raise fail(f"boot {d.name}: no four PWM records within 10 s (exit {app.proc.poll()})\n{tail}")
            time.sleep(0.0005)
        first = pwm.writes(pwm.sessions[sessions])[:4]
        boot = (max(tw for tw, _, _ in first) - t0) * 1000
        first_rec = (min(tw for tw, _, _ in first) - t0) * 1000
        straight = sorted((c, du) for _, c, du in first) == list(enumerate(want))
        m = app.expect(r"SCENE (\S+) (\d+) (\S+)", timeout=5)
        dmx_ok = None
        if scene:
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                f = dmx.last()
                if f is not None and f.slots[:2] == bytes([220, 30]):
                    dmx_ok = True
                    break
                time.sleep(0.002)
            dmx_ok = bool(dmx_ok)
        errors = [ln for ln in app.lines if "Traceback" in ln or "MemoryError" in ln]
        return dict(boot=boot, first=first_rec, straight=straight, fw_scene=m.group(1), fw_ms=int(m.group(2)),
                    version=m.group(3), dmx=dmx_ok, errors=errors, writes=first)
    finally:
        app.stop()
        shutil.rmtree(d, ignore_errors=True)


def run_boot(tmp: Path, trials: int) -> dict:
    from simulators.dmx import DmxReceiver
    from simulators.pwm import PwmReceiver

    image = build_rom(tmp / "lighting-app.romfs")
    work = tmp / "boot"
    work.mkdir()
    pwm, dmx = PwmReceiver(), DmxReceiver(keep=50)
    say(f"boot: lighting app from a {image.stat().st_size / KB:.1f} KB ROMFS image, heap {DATA_HEAP // KB} KB + "
        f"the image, broker down; {trials} trials with scene b on flash, {trials} with an empty flash")
    res = {"scene": [], "empty": []}
    try:
        one_boot(image, work, pwm, dmx, True, -1)  # warm-up (page cache, the image), not counted
        one_boot(image, work, pwm, dmx, False, -1)
        for i in range(trials):
            for scene in (True, False):
                r = one_boot(image, work, pwm, dmx, scene, i)
                res["scene" if scene else "empty"].append(r)
                say(f"boot {i + 1}/{trials} {'scene b' if scene else 'empty flash'}: {r['boot']:.1f} ms to the "
                    f"four PWM records (first {r['first']:.1f} ms; firmware says SCENE {r['fw_scene']} at "
                    f"{r['fw_ms']} ms){'' if r['straight'] else ' NOT STRAIGHT TO THE SCENE: ' + str(r['writes'])}")
    finally:
        pwm.close()
        dmx.close()
    return dict(res, image=image.stat().st_size)


# ---------------------------------------------------------------- 3. override to output

def measure_override(tmp: Path, image: Path, trials: int) -> dict:
    """Overrides set through the fleet's venue API (POST .../overrides, a whole scene, fade 0) until
    the controller's PWM outputs show them: the API compiles the venue, stores the new desired config
    and publishes it retained; the real firmware (unix port) receives, validates and applies it. All on
    this machine: a private Mosquitto, the fleet (store on SQLite, ingest, the app in-process through
    its ASGI test client), the controller and the PWM receiver. Baseline: a scene *command* published
    straight to the controller (no API, no compile, no config), measured the same way."""
    from datetime import timedelta

    from kits.manifest import parse_manifest
    from popkit.broker import MosquittoBroker, mosquitto_binary
    from simulators.dmx import DmxReceiver
    from simulators.pwm import PwmReceiver

    if mosquitto_binary() is None:
        say("override: no mosquitto binary; not measured")
        return {}
    from fleet.api.app import create_app
    from fleet.auth.testing import ops_client
    from fleet.ingest import Ingest
    from fleet.settings import FleetSettings
    from fleet.store import Store

    broker = MosquittoBroker(data_dir=tmp / "broker")
    broker.start()
    pwm, dmx = PwmReceiver(), DmxReceiver(keep=50)
    store = Store.open(f"sqlite:///{tmp / 'fleet.db'}")
    store.registry.register_kit(parse_manifest('id = "bench"\nname = "Bench"\nagent = "bench-agent"\n[[devices]]\n'
                                      'id = "bench-lights-1"\nrole = "lighting"\n'))
    # demo: a bench on this machine, signing its own requests (fleet.auth.testing) with a random key
    ingest = Ingest(FleetSettings(mqtt_url=broker.url, client_id="bench-lighting-fleet", batch_wait_ms=5, demo=True),
                    store).start()
    api = ops_client(create_app(store, ingest))
    flash = tmp / "override-flash"
    flash.mkdir()
    cfg = {"kit": "bench", "device": "bench-lights-1", "broker": ["127.0.0.1", broker.port], "dmx_slots": 24,
           "state_dir": str(flash), "pwm": ["127.0.0.1", pwm.port], "dmx": ["127.0.0.1", dmx.port], "gamma": None,
           "telemetry_s": 30, "keepalive": 5, "response_ms": 1500, "backoff_ms": 200, "backoff_max_ms": 500}
    path = tmp / "override-lighting.json"
    path.write_text(json.dumps(cfg))
    app = None
    via_api, via_cmd = [], []
    try:
        ingest.connected.wait(10)
        v = "/api/v1/venues/bench"

        def put(url: str, body: dict) -> None:
            r = api.put(url, json=body)
            if r.status_code != 200:
                raise fail(f"override: PUT {url}: {r.status_code} {r.text[:300]}")

        put(v, {"id": "bench", "name": "Bench", "tz": "Europe/London", "latitude": 51.5, "longitude": -0.12})
        put(f"{v}/zones/stage", {"id": "stage", "name": "Stage", "outputs": [
            {"controller": "bench-lights-1", "kind": "pwm", "channel": c} for c in "rgbw"]})
        for sid, level in (("show", 60), ("a", 200), ("b", 120)):
            put(f"{v}/scenes/{sid}", {"id": sid, "levels": {"stage": {"level": level}}})
        now = datetime.now(timezone.utc).astimezone(ZoneInfo("Europe/London")).replace(tzinfo=None, microsecond=0)
        put(f"{v}/schedules/all-day", {"id": "all-day", "kind": "once", "scene": "show", "start_at":
            (now - timedelta(hours=1)).isoformat(), "end_at": (now + timedelta(hours=6)).isoformat()})
        app = spawn(image, path, tmp)
        deadline = time.monotonic() + 15
        while pwm.duties() != [60 * L] * 4:
            if time.monotonic() > deadline or app.proc.poll() is not None:
                raise fail(f"override: the controller never showed the schedule (PWM {pwm.duties()})\n"
                           + "\n".join(app.lines[-15:]))
            time.sleep(0.005)
        say(f"override: controller on the venue's schedule; {trials} overrides through the API, {trials} scene "
            "commands straight to it (baseline)")

        def until(want: list[int], t0: float, what: str) -> float:
            while pwm.duties() != want:
                if time.monotonic() - t0 > 5:
                    raise fail(f"override: {what} not on the outputs within 5 s (PWM {pwm.duties()})\n"
                               + "\n".join(app.lines[-12:]))
                time.sleep(0.0005)
            return (time.monotonic() - t0) * 1000

        for i in range(trials):
            scene, level = (("a", 200), ("b", 120))[i % 2]
            t0 = time.monotonic()
            r = api.post(f"{v}/overrides", json={"scene": scene, "minutes": 30, "by": "bench"})
            if r.status_code != 201:
                raise fail(f"override: POST: {r.status_code} {r.text[:300]}")
            via_api.append(until([level * L] * 4, t0, f"override {i}"))
            level = 30 + i % 2 * 40
            t0 = time.monotonic()
            stamp = int(time.time() * 1000)
            cmd = {"id": f"bench-{i}", "ts": stamp, "expires": stamp + 60_000, "action": "scene",
                   "args": {"levels": {"r": level, "g": level, "b": level, "w": level}, "fade_ms": 0}}
            ingest.client.publish("popkit/v1/bench/bench-lights-1/cmd", json.dumps(cmd), qos=1)
            via_cmd.append(until([level * L] * 4, t0, f"command {i}"))
        say(f"override: API -> outputs p50 {pct(via_api, 50):.1f} ms, p99 {pct(via_api, 99):.1f} ms, max "
            f"{max(via_api):.1f}; scene command -> outputs (baseline) p50 {pct(via_cmd, 50):.1f} ms")
        return dict(p50_ms=round(pct(via_api, 50), 1), p99_ms=round(pct(via_api, 99), 1),
                    max_ms=round(max(via_api), 1), cmd_p50_ms=round(pct(via_cmd, 50), 1),
                    cmd_p99_ms=round(pct(via_cmd, 99), 1), trials=len(via_api))
    finally:
        if app is not None:
            app.stop()
        ingest.stop()
        store.close()
        pwm.close()
        dmx.close()
        broker.stop()


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lighting", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"{QUICK['venues']} venues and {QUICK['trials']} boot trials instead of "
                        f"{FULL['venues']} and {FULL['trials']}")
    p.add_argument("--venues", type=int, help="venues to compile")
    p.add_argument("--trials", type=int, help="boot trials of each kind")
    p.add_argument("--seed", type=int, default=6, help="the generated venues' seed (default 6)")
    args = p.parse_args(argv)
    size = QUICK if args.quick else FULL
    n_venues = args.venues or size["venues"]
    trials = args.trials or size["trials"]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="popkit-bench-lighting-"))
    try:
        comp = run_compile(n_venues, args.seed)
        boot = run_boot(tmp, trials)
        ovr = measure_override(tmp, build_rom(tmp / "override-app.romfs"), trials * 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    sb = [r["boot"] for r in boot["scene"]]
    eb = [r["boot"] for r in boot["empty"]]
    fw = [r["fw_ms"] for r in boot["scene"]]
    say(f"boot: to scene b p50 {pct(sb, 50):.1f} ms, p99 {pct(sb, 99):.1f} ms, max {max(sb):.1f} ms; empty flash "
        f"(baseline) p50 {pct(eb, 50):.1f} ms, max {max(eb):.1f} ms; inside the firmware p50 {pct(fw, 50)} ms")
    notes = list(comp["errors"][:5])
    if len(comp["errors"]) > 5:
        notes.append(f"... {len(comp['errors'])} compile errors in all")
    for r in boot["scene"]:
        if not r["straight"] or r["fw_scene"] != "b" or r["version"] != "5":
            notes.append(f"a boot did not go straight to scene b: SCENE {r['fw_scene']} v{r['version']}, "
                         f"first PWM {r['writes']}")
            break
    if not all(r["dmx"] for r in boot["scene"]):
        notes.append("DMX did not show scene b after a boot")
    for r in boot["scene"] + boot["empty"]:
        if r["errors"]:
            notes.append(f"the app printed an error: {r['errors'][0]}")
            break
    for r in boot["empty"]:
        if not r["straight"] or r["fw_scene"] != "None":
            notes.append(f"an empty-flash boot showed SCENE {r['fw_scene']}, first PWM {r['writes']}")
            break

    sizes, ratios = comp["sizes"], comp["ratios"]
    result = {
        "bench": "lighting",
        "compile_ms_per_venue": round(pct(comp["per_venue"], 50), 3),
        "venues": comp["venues"],
        "override_to_output_p99_ms": ovr.get("p99_ms"),
        "override_to_output_p50_ms": ovr.get("p50_ms"),
        "override_to_output_max_ms": ovr.get("max_ms"),
        "override_trials": ovr.get("trials"),
        "scene_cmd_to_output_p50_ms": ovr.get("cmd_p50_ms"),
        "override_vs_cmd_p50": round(ovr["p50_ms"] / ovr["cmd_p50_ms"], 2) if ovr.get("cmd_p50_ms") else None,
        "boot_to_scene_ms": round(pct(sb, 50), 1),
        "compile_ms_per_venue_p99": round(pct(comp["per_venue"], 99), 3),
        "compile_ms_per_venue_max": round(max(comp["per_venue"]), 3),
        "compile_ms_per_controller_p50": round(pct(comp["per_ctrl"], 50), 3),
        "controllers": comp["controllers"],
        "horizon_h": HORIZON_H,
        "dumps_ms_per_venue": round(pct(comp["enc"], 50), 4),
        "compile_vs_dumps_p50": round(pct(ratios, 50), 1),
        "payload_bytes_p50": pct(sizes, 50),
        "payload_bytes_p99": pct(sizes, 99),
        "payload_bytes_max": max(sizes),
        "timeline_bytes_p50": pct(comp["tl_sizes"], 50),
        "max_config_bytes": MAX_CONFIG,
        "over_4096_at_48h": comp["over"],
        "over_4096_share": round(comp["over"] / len(sizes), 3),
        "windows_per_timeline_p50": pct(comp["windows"], 50),
        "windows_per_timeline_max": max(comp["windows"]),
        "scenes_per_timeline_p50": pct(comp["scenes"], 50),
        "compile_errors": len(comp["errors"]),
        "priorities_per_venue_p50": pct(comp["prios"], 50),
        "priorities_per_venue_max": max(comp["prios"]),
        "time_zones": comp["tzs"],
        "boot_to_scene_p50_ms": round(pct(sb, 50), 1),
        "boot_to_scene_p99_ms": round(pct(sb, 99), 1),
        "boot_to_scene_max_ms": round(max(sb), 1),
        "boot_empty_p50_ms": round(pct(eb, 50), 1),
        "boot_empty_p99_ms": round(pct(eb, 99), 1),
        "boot_empty_max_ms": round(max(eb), 1),
        "boot_vs_empty_p50": round(pct(sb, 50) / pct(eb, 50), 2),
        "boot_in_firmware_p50_ms": pct(fw, 50),
        "boot_trials": len(sb),
        "image_kb": round(boot["image"] / KB, 1),
        "note": "compile_ms_per_venue: median over venues of compiling all of a venue's controllers (1..3) for "
                "horizon_h with fleet.venues.compile_timeline, time.perf_counter around each call, one untimed "
                "warm-up compile first; dumps_ms_per_venue: compact json.dumps of the same config payloads "
                "(baseline), compile_vs_dumps_p50 the median per-venue ratio. payload_bytes: the config payload "
                "{version, ts, data} as compact JSON, what the controller checks against max_config_bytes; "
                "over_4096_at_48h counts the controllers whose 48 h payload it would refuse. boot_to_scene_ms "
                "(= its p50): process spawn to the last of the boot's first four PWM records arriving at "
                "simulators/pwm.py, all of them scene b's levels, timeline.json pre-written on the flash dir, "
                "broker port closed; boot_empty_*: the same firmware with an empty flash (first four records, "
                "dark). boot_in_firmware: the app's own SCENE line (ms from main.py's first line). Unix port "
                "on this machine, not an ESP32. override_to_output: POST /api/v1/venues/{v}/overrides (a whole scene, "
                "fade 0) to the PWM outputs showing it: compile, store, publish retained, the firmware applies; "
                "baseline scene_cmd_to_output: a scene command published straight to the controller.",
        "notes": notes,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(result), flush=True)
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
