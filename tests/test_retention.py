"""Telemetry retention (fleet/retention/): 1-minute rollup, raw and aggregate retention, the
history API's resolutions; on SQLite, and on PostgreSQL where workers race."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fleet.auth.testing import ops_client
from sqlalchemy import func, select

from fleet import db
from fleet.api.app import create_app
from fleet.retention import (DAY_MS, MINUTE_MS, Maintenance, RetentionConfig, aggregate_minutes, bucket_items,
                             pick_bucket_ms, run_once)
from fleet.settings import FleetSettings
from fleet.ledger import Batch, LedgerMessage
from fleet.store import Store
from kits.contract import BatteryTelemetry, Event, PrinterTelemetry, encode
from kits.manifest import load_manifest
from tests.conftest import DEMO_KIT

BASE = 28_333_333 * MINUTE_MS  # a minute's start, Nov 2023
POWER = "demo-power"


def battery(seq: int, ts: int, v: float = 12.5, i: float = -2.0, soc: float | None = 80.0, p: float | None = None,
            boot: str = "beef01", device: str = POWER) -> LedgerMessage:
    msg = BatteryTelemetry(boot=boot, seq=seq, ts=ts, source="vedirect", v=v, i=i, soc=soc, p=p)
    return LedgerMessage(device, "telemetry", msg, encode(msg).decode())


def printer(seq: int, ts: int, paper: str = "ok") -> LedgerMessage:
    msg = PrinterTelemetry(boot="cafe01", seq=seq, ts=ts, online=True, paper=paper)
    return LedgerMessage("demo-printer", "telemetry", msg, encode(msg).decode())


def checkin(seq: int, ts: int) -> LedgerMessage:
    msg = Event(boot="dead01", seq=seq, ts=ts, kind="checkin",
                data={"event": "EV1", "ticket": f"T{seq}", "verdict": "admitted"})
    return LedgerMessage("demo-scanner-1", "event", msg, encode(msg).decode())


def open_store(url: str) -> Store:
    store = Store.open(url)
    store.registry.register_kit(load_manifest(DEMO_KIT))
    return store


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'fleet.db'}")
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'fleet.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


def rollups(store: Store) -> dict[tuple, dict]:
    c = db.telemetry_1m.c
    with store.engine.connect() as conn:
        rows = conn.execute(select(db.telemetry_1m).order_by(c.device_id, c.kind, c.minute_ms)).mappings()
        return {(r["device_id"], r["kind"], r["minute_ms"]): dict(r) for r in rows}


def count(store: Store, table) -> int:
    with store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar()


def latest(store: Store) -> dict:
    with store.engine.connect() as conn:
        return {(r.device_id, r.kind): (r.ts_ms, r.body) for r in conn.execute(select(db.device_latest))}


# ------------------------------------------------------------ rollup


def test_rollup_gives_n_min_avg_max_per_minute(any_store):
    store = any_store
    store.ledger.write_batch(Batch(ledger=[
        battery(1, BASE + 1_000, v=12.0, i=-1.0, soc=80),
        battery(2, BASE + 20_000, v=12.2, i=-2.0, soc=79),
        battery(3, BASE + 59_999, v=12.4, i=-3.0, soc=78),
        battery(4, BASE + MINUTE_MS, v=13.0, i=1.0, soc=None, p=10.0),
        battery(5, BASE + MINUTE_MS + 30_000, v=13.2, i=2.0, soc=None, p=30.0),
        printer(1, BASE + 5_000, paper="ok"), printer(2, BASE + 50_000, paper="near_end"),
    ]))
    written, mark = store.retention.rollup(now=BASE + 10 * MINUTE_MS)
    assert written == 3 and mark == count(store, db.telemetry)
    agg = rollups(store)
    m0 = agg[(POWER, "battery", BASE)]
    assert m0["n"] == 3 and m0["last_ts_ms"] == BASE + 59_999 and json.loads(m0["last"])["seq"] == 3
    assert (m0["v_min"], m0["v_max"], m0["i_min"], m0["i_max"]) == (12.0, 12.4, -3.0, -1.0)
    assert m0["v_avg"] == pytest.approx(12.2) and m0["i_avg"] == pytest.approx(-2.0)
    assert (m0["soc_min"], m0["soc_avg"], m0["soc_max"]) == (78, pytest.approx(79), 80)
    assert m0["p_avg"] == pytest.approx((12.0 * -1 + 12.2 * -2 + 12.4 * -3) / 3)  # no p sent: v*i
    m1 = agg[(POWER, "battery", BASE + MINUTE_MS)]
    assert m1["n"] == 2 and m1["p_avg"] == pytest.approx(20.0) and m1["soc_avg"] is None and m1["soc_min"] is None
    pr = agg[("demo-printer", "printer", BASE)]
    assert pr["n"] == 2 and json.loads(pr["last"])["paper"] == "near_end" and pr["v_avg"] is None


def test_rollup_twice_is_the_same_and_a_late_reading_recomputes_its_minute(store):
    store.ledger.write_batch(Batch(ledger=[battery(s, BASE + s * 10_000, soc=90 - s) for s in range(1, 13)]))
    store.retention.rollup(now=BASE + 10 * MINUTE_MS)
    first = rollups(store)
    assert store.retention.rollup(now=BASE + 10 * MINUTE_MS) == (0, count(store, db.telemetry))
    assert rollups(store) == first
    # A reading delivered late (a device's outbox flushed) lands in its minute: n and min follow.
    store.ledger.write_batch(Batch(ledger=[battery(100, BASE + 1, soc=50)]))
    written, _ = store.retention.rollup(now=BASE + 20 * MINUTE_MS)
    assert written == 1
    again = rollups(store)
    assert again[(POWER, "battery", BASE)]["n"] == first[(POWER, "battery", BASE)]["n"] + 1
    assert again[(POWER, "battery", BASE)]["soc_min"] == 50
    assert again[(POWER, "battery", BASE + MINUTE_MS)] == first[(POWER, "battery", BASE + MINUTE_MS)]


def test_the_current_minute_waits_for_a_later_pass(store):
    now = BASE + 5 * MINUTE_MS + 30_000
    store.ledger.write_batch(Batch(ledger=[battery(1, BASE + 4 * MINUTE_MS + 10), battery(2, BASE + 5 * MINUTE_MS + 10)]))
    written, mark = store.retention.rollup(now=now)
    assert written == 1 and set(rollups(store)) == {(POWER, "battery", BASE + 4 * MINUTE_MS)}
    assert mark == 1  # the second reading's id is not covered yet
    store.retention.rollup(now=now + MINUTE_MS)
    assert (POWER, "battery", BASE + 5 * MINUTE_MS) in rollups(store)
    assert store.retention.watermark() == 2


def test_aggregate_and_bucket_helpers():
    rows = [("d", "battery", BASE + k * 1000, k, json.dumps({"v": 12 + k, "i": -1, "soc": 50 + k}))
            for k in range(3)]
    rows.append(("d", "battery", BASE + MINUTE_MS, 9, json.dumps({"v": 20, "i": -1, "soc": 10})))
    minutes = aggregate_minutes(rows)
    assert minutes[("d", "battery", BASE)]["n"] == 3
    items = bucket_items(minutes.values(), 5 * MINUTE_MS)
    assert len(items) == 1
    b = items[0]
    assert b["ts"] == BASE - BASE % (5 * MINUTE_MS) and b["n"] == 4 and b["bucket_ms"] == 5 * MINUTE_MS
    assert b["v_min"] == 12 and b["v_max"] == 20 and b["v"] == pytest.approx((12 + 13 + 14 + 20) / 4)
    assert b["soc_min"] == 10 and b["last"]["soc"] == 10
    assert pick_bucket_ms(DAY_MS, 300) == 5 * MINUTE_MS
    assert pick_bucket_ms(60 * MINUTE_MS, 300) == MINUTE_MS
    assert pick_bucket_ms(90 * DAY_MS, 300) == 720 * MINUTE_MS


# ------------------------------------------------------------ retention


def test_raw_deleted_only_once_rolled_up_and_older_than_the_retention(store):
    now = BASE + 100 * DAY_MS
    old = [battery(s, now - 10 * DAY_MS + s * 1000) for s in range(1, 51)]
    recent = [battery(100 + s, now - DAY_MS + s * 1000) for s in range(1, 51)]
    store.ledger.write_batch(Batch(ledger=old + recent))
    # Nothing is rolled up yet: nothing may go.
    assert store.retention.delete_rolled_up(now - 7 * DAY_MS) == 0
    res = run_once(store, RetentionConfig(raw_days=7, rollup_days=90), now_ms=now)
    assert res.raw_deleted == 50 and res.rollups_deleted == 0
    with store.engine.connect() as conn:
        left = [r[0] for r in conn.execute(select(db.telemetry.c.seq).order_by(db.telemetry.c.seq))]
    assert left == [100 + s for s in range(1, 51)]
    # The old readings live on as aggregates.
    old_minutes = [k for k in rollups(store) if k[2] < now - 7 * DAY_MS]
    assert sum(rollups(store)[k]["n"] for k in old_minutes) == 50
    # An old reading arriving after the pass is not deleted before a pass has rolled it up.
    store.ledger.write_batch(Batch(ledger=[battery(1000, now - 9 * DAY_MS, boot="beef02")]))
    store.ledger.write_batch(Batch(ledger=[battery(200, now - 1000)]))  # (the newest row always stays)
    assert store.retention.delete_rolled_up(now - 7 * DAY_MS) == 0
    res = run_once(store, RetentionConfig(raw_days=7, rollup_days=90), now_ms=now)
    assert res.raw_deleted == 1 and (POWER, "battery", now - 9 * DAY_MS - (now - 9 * DAY_MS) % MINUTE_MS) in rollups(store)


def test_deletes_go_in_chunks(store):
    now = BASE + 30 * DAY_MS
    store.ledger.write_batch(Batch(ledger=[battery(s, BASE + s * 1000) for s in range(1, 1202)]
                      + [battery(5000, now - 1000)]))
    res = run_once(store, RetentionConfig(raw_days=7, rollup_days=90, chunk=100), now_ms=now)
    assert res.raw_deleted == 1201 and count(store, db.telemetry) == 1
    minutes = len(rollups(store))
    assert minutes == 22 and store.retention.delete_old_rollups(BASE + DAY_MS, chunk=7) == 21  # all but the last minute
    assert list(rollups(store)) == [(POWER, "battery", now - MINUTE_MS)]


def test_aggregates_kept_for_their_retention_then_deleted(store):
    now = BASE + 200 * DAY_MS
    store.ledger.write_batch(Batch(ledger=[printer(1, now - 100 * DAY_MS), battery(1, now - 120 * DAY_MS),
                                    battery(2, now - 80 * DAY_MS), battery(3, now - 1000)]))
    res = run_once(store, RetentionConfig(raw_days=7, rollup_days=90), now_ms=now)
    assert res.raw_deleted == 3 and res.rollups_deleted == 2
    assert sorted(k[2] for k in rollups(store)) == sorted(
        t - t % MINUTE_MS for t in (now - 80 * DAY_MS, now - 1000))


def test_events_checkins_streams_and_latest_are_never_touched(any_store):
    store = any_store
    now = BASE + 400 * DAY_MS
    store.ledger.write_batch(Batch(ledger=[checkin(s, BASE + s) for s in range(1, 21)]
                      + [battery(s, BASE + s * 1000, soc=50 + s) for s in range(1, 31)]
                      + [printer(1, BASE + 1000)]))
    before_latest, before_device = latest(store), store.devices.get_device(POWER)
    before_events, before_checkins = count(store, db.events), count(store, db.checkins)
    res = run_once(store, RetentionConfig(raw_days=7, rollup_days=90), now_ms=now)
    # Everything is old: raw goes (but the newest row, which keeps ids going up), then the aggregates.
    assert res.raw_deleted == 30 and count(store, db.telemetry) == 1 and rollups(store) == {}
    assert count(store, db.events) == before_events == 20 and count(store, db.checkins) == before_checkins == 20
    assert latest(store) == before_latest
    after = store.devices.get_device(POWER)
    assert after["latest"] == before_device["latest"] and after["latest"]["battery"]["soc"] == 80
    assert after["streams"] == before_device["streams"] and after["missing"] == 0
    assert store.activity.attendance("EV1")["admitted"] == 20


def test_a_resend_after_its_raw_row_went_is_stored_again_but_not_counted_twice(store):
    """The documented limitation: dedup is the raw row's unique key, so a resend older than the
    raw retention is stored again. Its aggregate keeps the right count; the next pass deletes it."""
    now = BASE + 30 * DAY_MS
    readings = [battery(s, BASE + s * 1000) for s in range(1, 11)]
    store.ledger.write_batch(Batch(ledger=readings + [battery(99, now - 1000)]))
    run_once(store, RetentionConfig(), now_ms=now)
    agg = rollups(store)[(POWER, "battery", BASE)]
    assert agg["n"] == 10
    assert store.ledger.write_batch(Batch(ledger=[readings[3]])).inserted == 1  # not recognised as a duplicate
    store.ledger.write_batch(Batch(ledger=[battery(100, now - 500)]))  # (the newest row always stays)
    res = run_once(store, RetentionConfig(), now_ms=now)
    assert res.raw_deleted == 1 and rollups(store)[(POWER, "battery", BASE)] == agg


def test_ids_keep_going_up_after_everything_old_went(store):
    """SQLite gives a new row max(id) + 1: the newest row is kept so no id is handed out twice."""
    now = BASE + 30 * DAY_MS
    store.ledger.write_batch(Batch(ledger=[battery(s, BASE + s * 1000) for s in range(1, 6)]))
    run_once(store, RetentionConfig(), now_ms=now)
    assert count(store, db.telemetry) == 1
    store.ledger.write_batch(Batch(ledger=[battery(10, now - 5 * MINUTE_MS)]))
    run_once(store, RetentionConfig(), now_ms=now)
    assert (POWER, "battery", now - 5 * MINUTE_MS - (now - 5 * MINUTE_MS) % MINUTE_MS) in rollups(store)


def test_two_rollups_at_once_on_postgresql(pg_url):
    """Two workers' passes at the same time, while ingest goes on: the aggregates are exactly
    those of the raw readings (upsert, never lowering n), and the watermark only goes up."""
    stores = [open_store(pg_url), Store.open(pg_url)]
    try:
        now = BASE + 10 * DAY_MS
        devices = [POWER, "demo-printer"]
        seq = 0
        for batch in range(20):
            ledger = []
            for k in range(200):
                seq += 1
                ts = BASE + 9 * DAY_MS + seq * 700
                ledger.append(battery(seq, ts, v=12 + (seq % 7) / 10, soc=float(seq % 100)) if k % 2
                              else printer(seq, ts, paper="ok" if seq % 3 else "near_end"))
            stores[0].ledger.write_batch(Batch(ledger=ledger))
        start = threading.Barrier(3)
        errors: list[BaseException] = []

        def pass_(s: Store) -> None:
            try:
                start.wait()
                for _ in range(3):
                    run_once(s, RetentionConfig(chunk=500), now_ms=now)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        def ingest_more() -> None:
            start.wait()
            for s2 in range(30):
                stores[1].ledger.write_batch(Batch(ledger=[battery(100_000 + s2, BASE + 9 * DAY_MS + s2 * 5000)]))

        threads = [threading.Thread(target=pass_, args=(s,)) for s in stores] + [threading.Thread(target=ingest_more)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors
        run_once(stores[0], RetentionConfig(chunk=500), now_ms=now)  # picks up what ingest added meanwhile
        t = db.telemetry.c
        with stores[0].engine.connect() as conn:
            raw = conn.execute(select(t.device_id, t.kind, t.ts_ms, t.id, t.body)).all()
        expected = aggregate_minutes(raw)
        got = rollups(stores[0])
        assert set(got) == set(expected) and len(got) > 50
        for key, row in expected.items():
            assert got[key]["n"] == row["n"] and got[key]["last"] == row["last"], key
            for f in ("v_avg", "soc_min", "soc_max", "p_avg"):
                assert got[key][f] == pytest.approx(row[f]), (key, f)
        assert stores[0].retention.watermark() == max(r.id for r in raw)
        assert {k[0] for k in got} == set(devices)
    finally:
        for s in stores:
            s.close()


def test_maintenance_thread_runs_passes_and_stops(store):
    now = int(time.time() * 1000)
    store.ledger.write_batch(Batch(ledger=[battery(1, now - 10 * MINUTE_MS), battery(2, now - 9 * MINUTE_MS)]))
    settings = FleetSettings(retention_interval_s=0.05)
    m = Maintenance.from_settings(store, settings, first_delay_s=0.0).start()
    deadline = time.monotonic() + 10
    while m.passes < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    m.stop()
    assert m.passes >= 2 and len(rollups(store)) == 2 and not m._thread.is_alive()


def test_settings_defaults_and_environment(monkeypatch):
    s = FleetSettings()
    assert (s.retention_interval_s, s.telemetry_raw_days, s.telemetry_rollup_days, s.retention_chunk) == (300, 7, 90, 5000)
    monkeypatch.setenv("POPKIT_TELEMETRY_RAW_DAYS", "3")
    monkeypatch.setenv("POPKIT_TELEMETRY_ROLLUP_DAYS", "30")
    cfg = RetentionConfig.from_settings(FleetSettings())
    assert cfg.raw_ms == 3 * DAY_MS and cfg.rollup_ms == 30 * DAY_MS


# ------------------------------------------------------------ history API


@pytest.fixture
def api(store):
    return ops_client(create_app(store))


URL = f"/api/v1/devices/{POWER}/telemetry"


def test_default_resolution_is_raw_as_before(store, api):
    store.ledger.write_batch(Batch(ledger=[battery(s, BASE + s * 1000) for s in range(1, 26)]))
    r = api.get(URL, params={"limit": 10}).json()
    assert [i["seq"] for i in r["items"]] == list(range(1, 11)) and r["next_since"] == BASE + 10_000
    assert r["resolution"] == "raw" and r["bucket_ms"] is None
    assert api.get(URL, params={"resolution": "raw", "limit": 10}).json() == r
    r = api.get(URL, params={"since": BASE + 5000, "until": BASE + 8000}).json()
    assert [i["seq"] for i in r["items"]] == [5, 6, 7]
    assert api.get(URL, params={"resolution": "5m"}).status_code == 422
    assert api.get(URL, params={"resolution": "auto", "points": 1}).status_code == 422


def test_1m_resolution_gives_aggregates_and_the_tail_not_rolled_up_yet(store, api):
    # 30 minutes, one reading every 10 s; the first 20 minutes are rolled up, the rest only raw.
    store.ledger.write_batch(Batch(ledger=[battery(s, BASE + s * 10_000, v=12 + (s % 6) / 10, soc=100 - s / 10)
                                    for s in range(0, 180)] + [printer(1, BASE + 1000)]))
    store.retention._upsert_rollups([r for k, r in aggregate_minutes(_raw(store)).items() if k[2] < BASE + 20 * MINUTE_MS])
    r = api.get(URL, params={"resolution": "1m", "kind": "battery"}).json()
    assert r["resolution"] == "1m" and r["bucket_ms"] == MINUTE_MS and r["next_since"] is None
    items = r["items"]
    assert [i["ts"] for i in items] == [BASE + m * MINUTE_MS for m in range(30)]
    assert all(i["n"] == 6 and i["kind"] == "battery" for i in items)
    first = items[0]
    assert first["v_min"] == 12.0 and first["v_max"] == 12.5 and first["v"] == pytest.approx(12.25)
    assert first["soc_max"] == 100 and first["soc_min"] == pytest.approx(99.5) and first["last"]["seq"] == 5
    assert items[25]["soc_min"] == pytest.approx(100 - 155 / 10)  # from raw: minute 25 is not rolled up
    # Pages of whole minutes: next_since is the next minute's start, none repeated, none skipped.
    page = api.get(URL, params={"resolution": "1m", "kind": "battery", "limit": 12}).json()
    assert len(page["items"]) == 12 and page["next_since"] == BASE + 12 * MINUTE_MS
    nxt = api.get(URL, params={"resolution": "1m", "kind": "battery", "limit": 12,
                               "since": page["next_since"]}).json()
    assert nxt["items"][0]["ts"] == BASE + 12 * MINUTE_MS and len(nxt["items"]) == 12
    last = api.get(URL, params={"resolution": "1m", "kind": "battery", "limit": 12, "since": nxt["next_since"]}).json()
    assert [i["ts"] for i in page["items"] + nxt["items"] + last["items"]] == [i["ts"] for i in items]
    assert last["next_since"] is None
    # Without kind: every kind the device sent; a printer's minute is its count and last reading.
    r = api.get("/api/v1/devices/demo-printer/telemetry", params={"resolution": "1m"}).json()
    assert r["items"] == [dict(ts=BASE, kind="printer", n=1, bucket_ms=MINUTE_MS, last_ts=BASE + 1000,
                               last=json.loads(encode(printer(1, BASE + 1000).msg)))]


def _raw(store: Store):
    t = db.telemetry.c
    with store.engine.connect() as conn:
        return conn.execute(select(t.device_id, t.kind, t.ts_ms, t.id, t.body)).all()


def test_auto_resolution_picks_raw_or_buckets(store, api):
    now = int(time.time() * 1000)
    day_ago = now - DAY_MS
    # A day of readings every 30 s (2,880): too many points, so 5-minute buckets of the aggregates.
    store.ledger.write_batch(Batch(ledger=[battery(s, day_ago + s * 30_000, soc=100 - s / 40) for s in range(2880)]))
    store.retention.rollup(now=now)
    r = api.get(URL, params={"resolution": "auto", "kind": "battery"}).json()
    assert r["resolution"] == "1m" and r["bucket_ms"] == 5 * MINUTE_MS
    assert 280 <= len(r["items"]) <= 300 and r["next_since"] is None
    assert sum(i["n"] for i in r["items"]) == 2880 and all(i["soc"] is not None for i in r["items"])
    assert r["items"] == sorted(r["items"], key=lambda i: i["ts"])
    # The last 30 minutes hold 60 readings: few enough to send raw.
    r = api.get(URL, params={"resolution": "auto", "kind": "battery", "since": now - 30 * MINUTE_MS}).json()
    assert r["resolution"] == "raw" and len(r["items"]) == 60 and "seq" in r["items"][0]
    # A range older than the raw retention is always aggregates, even if small.
    r = api.get(URL, params={"resolution": "auto", "since": now - 20 * DAY_MS, "until": now - 19 * DAY_MS}).json()
    assert r["resolution"] == "1m" and r["items"] == []


def test_1m_pages_keep_a_minute_of_every_kind_together(store, api):
    from kits.contract import DeviceTelemetry

    def device_tel(seq: int, ts: int) -> LedgerMessage:
        msg = DeviceTelemetry(boot="abcd01", seq=seq, ts=ts, uptime_s=seq)
        return LedgerMessage("demo-agent", "telemetry", msg, encode(msg).decode())

    ledger = []
    for m in range(5):
        ledger += [battery(100 + m, BASE + m * MINUTE_MS + 1, device="demo-agent", boot="abcd02"),
                   device_tel(m, BASE + m * MINUTE_MS + 2)]
    store.ledger.write_batch(Batch(ledger=ledger))
    store.retention.rollup(now=BASE + 3 * MINUTE_MS)  # minutes 0-2 rolled up, 3-4 from raw
    url = "/api/v1/devices/demo-agent/telemetry"
    seen, since = [], None
    for _ in range(10):
        params = {"resolution": "1m", "limit": 3} | ({"since": since} if since is not None else {})
        page = api.get(url, params=params).json()
        assert 0 < len(page["items"]) <= 3
        seen += [(i["ts"], i["kind"]) for i in page["items"]]
        since = page["next_since"]
        if since is None:
            break
    assert seen == [(BASE + m * MINUTE_MS, k) for m in range(5) for k in ("battery", "device")]
