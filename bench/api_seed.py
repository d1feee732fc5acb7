"""Seed a fleet database for bench.api: kits, devices and a day of telemetry, as ingest stores them.

Not through MQTT: straight into the tables (SQLAlchemy Core executemany for the small tables,
sqlite3 executemany / PostgreSQL COPY for the ledger), but row for row what
``RegistryStore.register_kit`` + ``LedgerStore.write_batch`` (``_insert_ledger``, ``_update_streams``,
``_update_latest``, ``_update_devices``, ``_apply_state``) would leave behind:

* ``kits`` / ``devices``: one row per kit and device of its manifest (host_id = the agent for
  hosted devices), with the state a birth leaves (online, boot, fw, state_ms) and the counters
  ingest keeps (received, duplicates = 0, last_seen_ms);
* ``telemetry``: bodies built with the contract's models and ``kits.contract.encode`` (what a
  producer sends, what ingest stores verbatim), seq 1..n per (device, boot), inserted in time
  order with every device interleaved, as a live fleet writes them;
* ``events``: one ``readiness`` event per agent (the kit's last power-up self-test);
* ``streams``: one row per (device, boot): max_seq = received = n (no gaps);
* ``device_latest``: the newest reading per (device, kind).

Each kit: agent, powerbank, printer, 2 scanners, lighting, 3 lights, panel = 10 devices.
Power banks carry ~72 % of the rows, evenly over the last 24 h (1,000 kits / 1,000,000 rows:
720 readings each, one every 120 s), discharging, so the forecast has a slope; every other
device that sends telemetry shares the rest, evenly over the same 24 h.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timezone

DAY_MS = 24 * 3600 * 1000
PB_SHARE = 0.72
BUCKET_MS = 3600 * 1000  # rows are generated and inserted one hour of data at a time
# (suffix, role, bus, kind of telemetry or None) of each kit's devices besides the agent
KIT_DEVICES = (
    ("power", "powerbank", "serial:/dev/ttyUSB0", "battery"),
    ("printer", "printer", "serial:/dev/ttyUSB1", "printer"),
    ("scan-1", "scanner", None, "device"),
    ("scan-2", "scanner", None, "device"),
    ("lighting", "lighting", None, "device"),
    ("light-1", "light", "gpio:17", "light"),
    ("light-2", "light", "gpio:22", "light"),
    ("light-3", "light", "gpio:23", "light"),
    ("panel", "panel", "gpio", None),
)
PANEL_PINS = {"button": 27, "red": 5, "green": 6, "blue": 13}


def kit_id(k: int) -> str:
    return f"k{k:04d}"


def manifests(kits: int, doors_open_ms: int, ends_ms: int, pb_period_s: float) -> list:
    """The kits' manifests: deterministic, so the seed and the bench's checks agree."""
    from kits.manifest import DeviceSpec, Expectations, KitManifest

    doors = datetime.fromtimestamp(doors_open_ms / 1000, timezone.utc)
    ends = datetime.fromtimestamp(ends_ms / 1000, timezone.utc)
    out = []
    for k in range(kits):
        kid = kit_id(k)
        specs = []
        for suffix, role, bus, _kind in KIT_DEVICES:
            extra: dict = {}
            if role == "powerbank":
                extra = dict(model="jbd-bms" if k % 2 else "victron-smartshunt", telemetry_s=pb_period_s,
                             expect=Expectations(min_soc=60))
            elif role == "panel":
                extra = dict(pins=dict(PANEL_PINS))
            specs.append(DeviceSpec(id=f"{kid}-{suffix}", role=role, bus=bus, **extra))
        out.append(KitManifest(id=kid, name=f"Bench kit {k}", agent=f"{kid}-agent",
                               event=dict(doors_open=doors, ends=ends), devices=specs))
    return out


@dataclass
class Dev:
    id: str
    kit: int
    role: str
    kind: str | None  # telemetry kind it sends
    boot: str
    n: int = 0  # telemetry rows
    phase: float = 0.0  # reading j at start + (j + phase) * interval
    interval: float = 0.0
    last: tuple | None = None  # (ts, body) of the newest reading


def plan(kits: int, rows: int, end_ms: int, seed: int = 1) -> tuple[list[Dev], int]:
    """Every device with its share of the rows; returns (devices, power bank rows each)."""
    rnd = random.Random(seed)
    pb_n = max(10, int(rows * PB_SHARE / kits))
    devs: list[Dev] = []
    senders: list[Dev] = []
    for k in range(kits):
        kid = kit_id(k)
        devs.append(Dev(f"{kid}-agent", k, "agent", "device", rnd.randbytes(4).hex()))
        for suffix, role, _bus, kind in KIT_DEVICES:
            devs.append(Dev(f"{kid}-{suffix}", k, role, kind, rnd.randbytes(4).hex()))
    for d in devs:
        if d.role == "powerbank":
            d.n = pb_n
        elif d.kind is not None:
            senders.append(d)
    rest = rows - pb_n * kits
    if rest < 0:
        raise ValueError("too few rows for the power banks")
    for i, d in enumerate(senders):
        d.n = rest // len(senders) + (1 if i < rest % len(senders) else 0)
    for d in devs:
        if d.n:
            d.interval = DAY_MS / d.n
            d.phase = rnd.random()
    return devs, pb_n


def reading(d: Dev, j: int, ts: int, start: int) -> bytes:
    """Reading j (seq j + 1) of device d, encoded as its producer sends it."""
    from kits.contract import BatteryTelemetry, DeviceTelemetry, LightTelemetry, PrinterTelemetry, encode

    seq = j + 1
    env = dict(boot=d.boot, seq=seq, ts=ts)
    frac = (ts - start) / DAY_MS
    if d.kind == "battery":
        # A day's discharge from ~98 % to 25..55 % (by kit), ~2-3 A; every tenth pack below 20 %.
        floor = 25 + (d.kit * 7) % 31 if d.kit % 10 else 12
        soc = round(98 - (98 - floor) * frac, 1)
        i = round(-(2.0 + (d.kit % 5) * 0.2) - 0.15 * math.sin(j / 7), 2)
        v = round(12.0 + soc * 0.012, 2)
        if d.kit % 2:  # JBD BMS: remaining capacity, no power, no time-to-go
            msg = BatteryTelemetry(**env, source="jbd", v=v, i=i, soc=soc, remaining_ah=round(soc, 1),
                                   capacity_ah=100.0, cycles=40 + d.kit % 60, temps_c=[24.5, 25.1])
        else:  # Victron shunt
            msg = BatteryTelemetry(**env, source="vedirect", v=v, i=i, p=round(v * i, 1), soc=soc,
                                   ttg=int(soc / 100 * 100 / -i * 60))
    elif d.kind == "printer":
        msg = PrinterTelemetry(**env, online=True, paper="near_end" if d.kit % 17 == 0 and frac > 0.8 else "ok")
    elif d.kind == "light":
        msg = LightTelemetry(**env, on=bool(j % 2), reachable=True)
    else:
        uptime = int((ts - start) / 1000) + 60
        if d.role == "scanner":
            msg = DeviceTelemetry(**env, uptime_s=uptime, heap_free=150_000 - j, rssi=-60 - d.kit % 20, outbox=0,
                                  scans=j * 3)
        elif d.role == "lighting":
            msg = DeviceTelemetry(**env, uptime_s=uptime, heap_free=120_000, rssi=-55, outbox=0, scene="house")
        else:
            msg = DeviceTelemetry(**env, uptime_s=uptime, outbox=0)
    return encode(msg)


def telemetry_buckets(devs: list[Dev], start: int, end: int):
    """Lists of (device_id, boot, seq, ts_ms, kind, body) one hour at a time, in time order."""
    for a in range(start, end, BUCKET_MS):
        b = min(a + BUCKET_MS, end)
        part = []
        for d in devs:
            if not d.n:
                continue
            lo = max(0, math.ceil((a - start) / d.interval - d.phase))
            hi = min(d.n, math.ceil((b - start) / d.interval - d.phase)) if b < end else d.n
            for j in range(lo, hi):
                ts = start + int((j + d.phase) * d.interval)
                body = reading(d, j, ts, start).decode()
                part.append((d.id, d.boot, j + 1, ts, d.kind, body))
                if j == d.n - 1:
                    d.last = (ts, body)
        part.sort(key=lambda r: r[3])
        yield part


def seed(engine, kits: int, rows: int, end_ms: int, doors_open_ms: int, ends_ms: int, say=print) -> dict:
    """Fill an empty, migrated database. Returns counts and timings."""
    import time

    from sqlalchemy import insert

    from fleet import db
    from kits.contract import Event, encode

    t0 = time.perf_counter()
    start = end_ms - DAY_MS
    devs, pb_n = plan(kits, rows, end_ms)
    pb_period_s = DAY_MS / pb_n / 1000
    mans = manifests(kits, doors_open_ms, ends_ms, pb_period_s)
    pg = engine.dialect.name == "postgresql"
    session_ms = start - 60_000  # every device's MQTT session began a minute before the data

    # The ledger first (bulk), in time order, one transaction per hour of data.
    cols = ("device_id", "boot", "seq", "ts_ms", "kind", "body")
    written = 0
    raw = engine.raw_connection()
    try:
        dbapi = raw.driver_connection
        for part in telemetry_buckets(devs, start, end_ms):
            if pg:
                with dbapi.cursor() as cur, cur.copy(f"COPY telemetry ({', '.join(cols)}) FROM STDIN") as cp:
                    for r in part:
                        cp.write_row(r)
            else:
                dbapi.executemany(f"INSERT INTO telemetry ({', '.join(cols)}) VALUES (?, ?, ?, ?, ?, ?)", part)
            dbapi.commit()
            written += len(part)
            if written == rows or len(part) and (part[0][3] - start) // BUCKET_MS % 6 == 5:
                say(f"seed: telemetry {written:,}/{rows:,} rows, {time.perf_counter() - t0:.1f}s")
    finally:
        raw.close()
    t_ledger = time.perf_counter() - t0

    now = end_ms
    agents = [d for d in devs if d.role == "agent"]
    readiness = []
    for d in agents:
        ts = start + 5 * 60_000  # the self-test at power-up, a few minutes into the day
        seq = d.n + 1  # the agent's ledger: its telemetry, then this event (one outbox sequence)
        body = encode(Event(boot=d.boot, seq=seq, ts=ts, kind="readiness",
                            data=dict(status="ready", problems=[], took_ms=2100 + d.kit % 500))).decode()
        readiness.append(dict(device_id=d.id, boot=d.boot, seq=seq, ts_ms=ts, channel="event", kind="readiness",
                              body=body))
    ledger_n = {d.id: d.n + (1 if d.role == "agent" else 0) for d in devs}
    with engine.begin() as conn:
        # Each kit's agent and event window, as registration stores them (RegistryStore.register_kit).
        conn.execute(insert(db.kits), [dict(id=m.id, name=m.name, created_ms=session_ms - 3600_000, agent_id=m.agent,
                                            doors_open_ms=doors_open_ms, ends_ms=ends_ms, manifest_ms=session_ms)
                                       for m in mans])
        dev_rows = []
        for m in mans:
            for spec in m.all_devices():
                dev_rows.append(dict(id=spec.id, kit_id=m.id, role=spec.role, model=spec.model,
                                     host_id=m.agent if spec.hosted else None, telemetry_s=spec.telemetry_s))
        by_id = {d.id: d for d in devs}
        for r in dev_rows:
            d = by_id[r["id"]]
            n = ledger_n[d.id]
            r.update(online=True, boot=d.boot, fw="2.3.1" if d.role == "agent" else "1.8.0", config_version=None,
                     state_ms=session_ms, last_seen_ms=now if n else None, received=n, duplicates=0)
        conn.execute(insert(db.devices), dev_rows)
        conn.execute(insert(db.events), readiness)
        streams = []
        for d in devs:
            n = ledger_n[d.id]
            if not n:
                continue
            first = start + int(d.phase * d.interval) if d.n else readiness[0]["ts_ms"]
            last = d.last[0] if d.last else first
            if d.role == "agent":
                first, last = min(first, start + 5 * 60_000), max(last, start + 5 * 60_000)
            streams.append(dict(device_id=d.id, boot=d.boot, max_seq=n, received=n, first_ms=first, last_ms=last))
        conn.execute(insert(db.streams), streams)
        conn.execute(insert(db.device_latest),
                     [dict(device_id=d.id, kind=d.kind, ts_ms=d.last[0], body=d.last[1]) for d in devs if d.last])
    if pg:
        # What autovacuum's analyze does after a bulk load; without it PostgreSQL plans on guesses.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
    total = time.perf_counter() - t0
    return dict(kits=kits, devices=len(devs), rows=written, pb_rows_each=pb_n, pb_period_s=round(pb_period_s, 1),
                seed_s=round(total, 1), seed_ledger_s=round(t_ledger, 1), rows_per_s=round(written / t_ledger),
                manifests=mans, devs=devs)


def touch_last_seen(engine, now_ms: int) -> None:
    """What the next batch from every device would do to devices.last_seen_ms (heartbeat): the
    seeded day ends when seeding starts, and a long seed would leave the devices 'silent'."""
    from sqlalchemy import update

    from fleet import db

    with engine.begin() as conn:
        conn.execute(update(db.devices).where(db.devices.c.last_seen_ms.is_not(None)).values(last_seen_ms=now_ms))
