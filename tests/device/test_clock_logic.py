"""device/lib/clock.py and the unix board's clock, in the real MicroPython: which kit time a device
takes, which it refuses, and where a unix board's clock starts."""

from __future__ import annotations

import json
import subprocess
import time

from tests.device.mpy import DEVICE, micropython_binary, mpy_env, run_mpy

UNIX_BOARD = DEVICE / "boards" / "unix"
Y2000_MS = 946684800000
NOW_MS = 1795280000000  # 2026-11-22: a plausible kit time

# A board whose clock the test sets by hand, under the names clock.Clock uses.
FAKE_BOARD = """
class Board:
    def __init__(self, ms, src):
        self.ms = ms
        self.src = src
    def epoch_ms(self):
        return self.ms
    def set_epoch_ms(self, ms, src):
        self.ms = ms
        self.src = src
    def clock_source(self):
        return self.src
"""


def run_clock(steps: str, start_ms: int, src: str | None) -> list:
    """Run ``steps`` (MicroPython lines using ``b`` and ``c``) and return what they printed, one JSON per line."""
    code = (FAKE_BOARD + "import clock, json\n"
            f"b = Board({start_ms}, {src!r})\nc = clock.Clock(b)\n"
            "def show(*x):\n    print(json.dumps(list(x)))\n" + steps)
    out = run_mpy(code).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("[")]


def test_the_first_kit_time_sets_an_unset_clock_and_says_where_it_came_from():
    got = run_clock(
        "show(c.state(), c.now_s())\n"
        f"show(c.offer({NOW_MS}, False), c.state(), b.ms, c.now_s())\n",
        Y2000_MS, "kit")
    assert got == [["unset", None], [True, "kit", NOW_MS, NOW_MS // 1000]]
    got = run_clock(f"show(c.offer({NOW_MS}, True), c.state())\n", Y2000_MS, None)
    assert got == [[True, "synced"]]


def test_a_set_clock_takes_drift_but_refuses_a_jump_back_or_a_day_ahead():
    got = run_clock(
        f"show(c.offer({NOW_MS + 500}, False), b.ms)\n"  # under a second: left alone
        f"show(c.offer({NOW_MS + 3000}, False), b.ms)\n"  # drift corrected, state unchanged
        f"show(c.offer({NOW_MS + 3000 - 6000}, False), b.ms, c.refused)\n"  # 6 s back: refused
        f"show(c.offer({NOW_MS + 3000 + 86400000 + 1000}, False), b.ms, c.refused)\n"  # a day ahead: refused
        f"show(c.offer({NOW_MS + 3000 - 4000}, True), b.ms, c.state())\n"  # 4 s back, now synced: taken
        f"show(c.offer({NOW_MS + 60000}, False), b.ms, c.state())\n"  # the Pi lost its sync: ours is better
        f"show(c.offer({Y2000_MS}, True), c.refused, c.state())\n"  # a time before the build floor
        "show(c.offer('soon', True), c.refused)\n",
        NOW_MS, "kit")
    assert got == [
        [False, NOW_MS],
        [False, NOW_MS + 3000],
        [False, NOW_MS + 3000, 1],
        [False, NOW_MS + 3000, 2],
        [True, NOW_MS - 1000, "synced"],
        [False, NOW_MS - 1000, "synced"],
        [False, 3, "synced"],
        [False, 4],
    ]


def board_clock(env: dict, code: str) -> list:
    proc = subprocess.run([micropython_binary(), "-X", "heapsize=64k", "-c", "import board, clock, json\n"
                           "c = clock.Clock(board)\n" + code], env={**mpy_env(UNIX_BOARD), **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_unix_board_starts_its_clock_where_it_is_told_and_runs_on_from_there():
    # From the environment: a device powered up in the year 2000 is unset, and its clock runs.
    state, ms, later = board_clock({"POPKIT_BOARD_EPOCH_MS": str(Y2000_MS)},
                                   "a = board.epoch_ms()\nimport time\ntime.sleep_ms(50)\n"
                                   "print(json.dumps([c.state(), a, board.epoch_ms()]))")
    assert state == "unset" and Y2000_MS <= ms < Y2000_MS + 5000 and later > ms
    # From the config's hw.epoch_ms, over the environment.
    state, ms = board_clock({"POPKIT_BOARD_EPOCH_MS": str(Y2000_MS)},
                            f"board.configure({{'hw': {{'epoch_ms': {NOW_MS}}}}})\n"
                            "print(json.dumps([c.state(), board.epoch_ms()]))")
    assert state == "kit" and NOW_MS <= ms < NOW_MS + 5000
    # Neither: the PC's own clock, NTP-kept.
    state, ms = board_clock({}, "print(json.dumps([c.state(), board.epoch_ms()]))")
    assert state == "synced" and abs(ms - time.time() * 1000) < 60_000
