"""`python -m bench.updates --quick` runs and holds what issue 18 asks of a rollout: it pauses at its
error threshold (and is resumed), no kit in its show is sent an update, every device ends final with
the fleet's records agreeing with the devices, and the last stdout line is the one JSON object.

The device part (bench.update_device, the real firmware in the unix port) is left out here
(--no-device): tests/device/test_device_update.py covers that download, and it would double this
test's time. No timing is asserted: timings are what the bench reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def test_the_updates_bench_rolls_out_to_a_hundred_kits_pauses_and_leaves_every_show_alone():
    proc = subprocess.run([sys.executable, "-m", "bench.updates", "--quick", "--no-device"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    d = r["detail"]["rollout"]
    assert r["bench"] == "updates" and r["kits"] == 100 and d["scanners"] == 100
    assert r["in_show_touched"] == 0 and d["in_show_kits"] == 5
    assert d["in_show_updated_after"] == 5  # skipped during the show, updated once it ended
    assert r["pauses"] >= 1 and d["first_pause"].startswith("error threshold: group")
    assert r["failed"] > 0 and r["rolled_back"] > 0 and d["committed"] + r["failed"] + r["rolled_back"] == 100
    assert d["disagree"] == 0 and d["fetches"] == 100 and d["update_commands"] == 100
    assert 0 < r["rollout_s"] <= r["rollout_done_s"]
    assert "paused: error threshold" in proc.stderr  # progress goes to stderr, the JSON alone ends stdout
