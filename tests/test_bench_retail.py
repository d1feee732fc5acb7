"""`python -m bench.retail --orders 30` runs the issue 19 bench end to end on a small scale and holds
what it must whatever the machine's speed: the one JSON line with the issue's keys, nothing lost,
nothing stored twice, no conflict, every scan answered green and every receipt printed. Timings are
what the bench reports, not asserted here: a run that missed only a p99 limit still passes this test.

The fleet runs on SQLite here (tests/test_retail_e2e.py reconciles 600 orders on PostgreSQL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO

KEYS = {"bench", "orders", "scan_to_line_ms_p99", "order_to_receipt_ms_p99", "upload_orders_s", "lost", "duplicates",
        "mqtt_rtt_ms_p99", "raw_receipt_ms_p99", "scan_vs_mqtt", "receipt_vs_raw", "acceptance"}


def test_the_retail_bench_takes_30_orders_offline_and_the_fleet_gets_each_once():
    proc = subprocess.run([sys.executable, "-m", "bench.retail", "--orders", "30", "--scan-every", "3", "--db", "sqlite"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no JSON line (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    r = json.loads(lines[-1])
    assert KEYS <= set(r), KEYS - set(r)
    assert (r["bench"], r["orders"], r["db"]) == ("retail", 30, "sqlite")
    assert (r["lost"], r["duplicates"], r["conflicts"]) == (0, 0, 0)
    assert (r["scans"], r["scans_not_green"], r["receipts"]) == (10, 0, 30)
    assert r["upload_orders_s"] >= r["first_order_s"] > 0
    missed = [m for m in r["acceptance"].split("; ") if r["acceptance"] != "ok"]
    assert proc.returncode == (1 if missed else 0), proc.stderr[-3000:]
    assert all("_p99" in m for m in missed), missed  # only a timing may miss on a slow machine
    assert "uplink cut" in proc.stderr  # progress on stderr, the JSON alone ends stdout
