"""Telemetry retention: raw readings for ``telemetry_raw_days``, one-minute aggregates for
``telemetry_rollup_days`` (the issue: "raw for 7 days, 1-minute aggregates for 90 days, configurable").

A maintenance pass (``run_once``; the ``Maintenance`` thread runs one every ``retention_interval_s``)

1. rolls raw telemetry up into ``telemetry_1m`` (fleet/db.py says what a row holds): it reads the raw
   rows added since the last pass (by id, above the watermark ``maintenance_state.telemetry_rollup_id``)
   and recomputes, from all the raw rows of that minute, every (device, kind, minute) they fall in.
   A recompute is an upsert that never lowers a minute's reading count, so passes are idempotent,
   late readings (a device's outbox flushed hours later) land in their minute, and two workers may
   roll up at once. Readings in the current minute wait for the next pass (complete minutes only);
2. deletes raw telemetry older than ``telemetry_raw_days`` whose id is at or below the watermark
   (rolled up), per device, ``chunk`` rows per transaction;
3. deletes aggregates older than ``telemetry_rollup_days``, the same way.

Never touched: events (check-ins, acks, readiness), checkins, streams (sequence accounting is
counters, not rows) and device_latest (the latest reading per kind is its own row).

Dedup after deletion: ingest's dedup is the unique key (device, boot, seq) of the raw rows, so a
message resent after its raw row was deleted (``telemetry_raw_days`` late) is stored again. Its
ts puts it in an already-aggregated minute whose other raw rows are gone: the recompute counts
fewer readings than the aggregate has, so the aggregate is kept as it is (no double count), and
the row is deleted again by the next pass. What it does change: the device's ``received`` counter
and its stream's ``received`` (gaps) count it twice. streams.max_seq cannot reject it instead (a
seq below the high-water mark may be a gap legitimately filled late), and ingest is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
import logging
import threading
import time
from typing import Any, Iterable

log = logging.getLogger("popkit.fleet.retention")

MINUTE_MS = 60_000
DAY_MS = 86_400_000
# PostgreSQL hands out ids in nextval order, not commit order: a batch still in flight may commit
# rows with ids below ones already rolled up. Each pass rereads this many ids below the watermark
# (its minutes are recomputed: idempotent), and only rows this far below it count as rolled up
# for deletion. Ingest commits at most batch_max (default 1000) rows per transaction and worker.
PG_OVERLAP_IDS = 20_000
# Battery fields aggregated per minute (fleet/db.py telemetry_1m).
BATTERY_FIELDS = ("v", "i", "soc")
# Aggregate item fields of the history API, besides ts/kind/n/last.
AGG_FIELDS = ("v_min", "v_avg", "v_max", "i_min", "i_avg", "i_max", "p_avg", "soc_min", "soc_avg", "soc_max")
# Bucket sizes the history API picks from (auto): 1, 2, 5, 10, 15, 30 min, 1, 2, 3, 6, 12 h, 1 day.
NICE_BUCKETS_MS = [m * MINUTE_MS for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)]


def minute_of(ts_ms: int) -> int:
    """Start of the UTC minute of ``ts_ms``."""
    return ts_ms - ts_ms % MINUTE_MS


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class _Acc:
    """One (device, kind, minute)'s readings, folded."""

    __slots__ = ("n", "last_key", "last", "sums", "counts", "mins", "maxs", "p_sum", "p_n")

    def __init__(self) -> None:
        self.n = 0
        self.last_key: tuple = ()
        self.last = ""
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.mins: dict[str, float] = {}
        self.maxs: dict[str, float] = {}
        self.p_sum = 0.0
        self.p_n = 0

    def add(self, kind: str, ts_ms: int, order: int, body: str) -> None:
        self.n += 1
        key = (ts_ms, order)
        if key >= self.last_key:
            self.last_key, self.last = key, body
        if kind != "battery":
            return
        try:
            r = json.loads(body)
        except ValueError:
            return
        for f in BATTERY_FIELDS:
            x = _num(r.get(f))
            if x is None:
                continue
            self.sums[f] = self.sums.get(f, 0.0) + x
            self.counts[f] = self.counts.get(f, 0) + 1
            self.mins[f] = x if f not in self.mins else min(self.mins[f], x)
            self.maxs[f] = x if f not in self.maxs else max(self.maxs[f], x)
        p = _num(r.get("p"))
        if p is None:
            v, i = _num(r.get("v")), _num(r.get("i"))
            p = v * i if v is not None and i is not None else None
        if p is not None:
            self.p_sum += p
            self.p_n += 1

    def row(self, device_id: str, kind: str, minute_ms: int) -> dict:
        out = dict(device_id=device_id, kind=kind, minute_ms=minute_ms, n=self.n, last_ts_ms=self.last_key[0],
                   last=self.last)
        for f in BATTERY_FIELDS:
            k = self.counts.get(f)
            out[f"{f}_min"] = self.mins.get(f)
            out[f"{f}_avg"] = self.sums[f] / k if k else None
            out[f"{f}_max"] = self.maxs.get(f)
        out["p_avg"] = self.p_sum / self.p_n if self.p_n else None
        return out


def aggregate_minutes(rows: Iterable) -> dict[tuple[str, str, int], dict]:
    """telemetry_1m rows from raw rows (device_id, kind, ts_ms, id, body): {(device, kind, minute): row}.
    The minute's ``last`` is its reading with the greatest (ts, id)."""
    accs: dict[tuple[str, str, int], _Acc] = {}
    for device_id, kind, ts_ms, order, body in rows:
        key = (device_id, kind, minute_of(ts_ms))
        acc = accs.get(key)
        if acc is None:
            acc = accs[key] = _Acc()
        acc.add(kind, ts_ms, order, body)
    return {k: a.row(*k) for k, a in accs.items()}


def bucket_items(minute_rows: Iterable[dict], bucket_ms: int) -> list[dict]:
    """Merge telemetry_1m rows (of one device) into ``bucket_ms`` buckets (a multiple of a minute,
    aligned to the epoch), as the history API's items, oldest first, kinds in name order.

    n is summed, min/max are the extremes, an average is weighted by each minute's n (exact when
    every reading carries the field, as a given device's do)."""
    buckets: dict[tuple[int, str], dict] = {}
    for r in minute_rows:
        start = r["minute_ms"] - r["minute_ms"] % bucket_ms
        b = buckets.get((start, r["kind"]))
        if b is None:
            b = buckets[(start, r["kind"])] = dict(ts=start, kind=r["kind"], n=0, _w={}, _s={}, last_ts=-1, last=None,
                                                   **{f: None for f in AGG_FIELDS})
        n = r["n"]
        b["n"] += n
        if r["last_ts_ms"] >= b["last_ts"]:
            b["last_ts"], b["last"] = r["last_ts_ms"], r["last"]
        for f in AGG_FIELDS:
            x = r.get(f)
            if x is None:
                continue
            if f.endswith("_min"):
                b[f] = x if b[f] is None else min(b[f], x)
            elif f.endswith("_max"):
                b[f] = x if b[f] is None else max(b[f], x)
            else:
                b["_s"][f] = b["_s"].get(f, 0.0) + x * n
                b["_w"][f] = b["_w"].get(f, 0) + n
    out = []
    for (start, kind) in sorted(buckets):
        b = buckets[start, kind]
        for f, w in b.pop("_w").items():
            b[f] = b["_s"][f] / w
        b.pop("_s")
        last = b.pop("last")
        item = dict(ts=b["ts"], kind=kind, n=b["n"], bucket_ms=bucket_ms)
        if kind == "battery":
            # v/i/p/soc: the bucket's averages, so a chart of raw readings draws these the same way.
            item.update(v=b["v_avg"], i=b["i_avg"], p=b["p_avg"], soc=b["soc_avg"],
                        **{f: b[f] for f in AGG_FIELDS})
        item["last_ts"] = b["last_ts"]
        item["last"] = json.loads(last) if last else None
        out.append(item)
    return out


def pick_bucket_ms(span_ms: int, points: int) -> int:
    """The smallest nice bucket (>= 1 minute) that draws ``span_ms`` in at most ``points`` points."""
    want = -(-max(span_ms, 1) // max(points, 1))
    for b in NICE_BUCKETS_MS:
        if b >= want:
            return b
    return -(-want // DAY_MS) * DAY_MS


@dataclass(frozen=True)
class RetentionConfig:
    raw_days: float = 7.0
    rollup_days: float = 90.0
    chunk: int = 5000

    @classmethod
    def from_settings(cls, s: Any) -> "RetentionConfig":
        return cls(raw_days=s.telemetry_raw_days, rollup_days=s.telemetry_rollup_days, chunk=s.retention_chunk)

    @property
    def raw_ms(self) -> int:
        return int(self.raw_days * DAY_MS)

    @property
    def rollup_ms(self) -> int:
        return int(max(self.rollup_days, self.raw_days) * DAY_MS)


@dataclass
class RetentionResult:
    minutes: int = 0  # telemetry_1m rows written (recomputed)
    raw_deleted: int = 0
    rollups_deleted: int = 0
    watermark: int = 0  # raw telemetry ids at or below it are rolled up (PostgreSQL: less PG_OVERLAP_IDS)
    took_ms: int = 0


def run_once(store: Any, cfg: RetentionConfig | None = None, now_ms: int | None = None) -> RetentionResult:
    """One maintenance pass: roll up, then delete old raw telemetry, then old aggregates."""
    cfg = cfg or RetentionConfig()
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    t0 = time.monotonic()
    res = RetentionResult()
    res.minutes, res.watermark = store.retention.rollup(now_ms, chunk=cfg.chunk)
    res.raw_deleted = store.retention.delete_rolled_up(now_ms - cfg.raw_ms, chunk=cfg.chunk)
    res.rollups_deleted = store.retention.delete_old_rollups(now_ms - cfg.rollup_ms, chunk=cfg.chunk)
    res.took_ms = int((time.monotonic() - t0) * 1000)
    return res


class Maintenance:
    """Runs ``run_once`` in a thread every ``interval_s`` (the first pass a few seconds after start)."""

    def __init__(self, store: Any, cfg: RetentionConfig, interval_s: float = 300.0, first_delay_s: float = 5.0):
        self.store = store
        self.cfg = cfg
        self.interval_s = interval_s
        self.first_delay_s = min(first_delay_s, interval_s)
        self.passes = 0
        self.last: RetentionResult | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-retention", daemon=True)

    @classmethod
    def from_settings(cls, store: Any, settings: Any, **kwargs: Any) -> "Maintenance":
        return cls(store, RetentionConfig.from_settings(settings), interval_s=settings.retention_interval_s, **kwargs)

    def start(self) -> "Maintenance":
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.first_delay_s
        while not self._stop.wait(wait):
            wait = self.interval_s
            try:
                self.last = run_once(self.store, self.cfg)
                self.passes += 1
                r = self.last
                if r.minutes or r.raw_deleted or r.rollups_deleted:
                    log.info("retention: %d minutes rolled up, %d raw readings and %d aggregates deleted in %d ms",
                             r.minutes, r.raw_deleted, r.rollups_deleted, r.took_ms)
            except Exception:  # noqa: BLE001 - the next pass tries again; ingest goes on regardless
                log.exception("retention pass failed")
