"""device/lib/clock.py and the unix board's clock, in the real MicroPython: which kit time a device
takes, which it refuses, and where a unix board's clock starts. clock.offer() answers 1 (the
clock's state changed), 0 (taken, or left alone) or -1 (refused)."""

from __future__ import annotations

import json
import subprocess
import time

from tests.device.mpy import DEVICE, micropython_binary, mpy_env, run_mpy

UNIX_BOARD = DEVICE / "boards" / "unix"
Y2000_MS = 946684800000
NOW_MS = 1795280000000  # 2026-11-22: a plausible kit time

# A board whose clock the test sets by hand, under the names clock.py uses.
FAKE_BOARD = """
class Board:
    def __init__(self, ms, src):
        self.ms = ms
        self.clock_source = src
    def epoch_ms(self):
        return self.ms
    def set_epoch_ms(self, ms, src):
        self.ms = ms
        self.clock_source = src
"""


def run_clock(steps: str, start_ms: int, src: str | None) -> list:
    """Run ``steps`` (MicroPython lines using ``b`` and ``c``) and return what they printed, one JSON per line."""
    code = (FAKE_BOARD + "import clock, json\n"
            f"b = Board({start_ms}, {src!r})\n"
            "def state():\n    return clock.state(b)\n"
            "def offer(ts, synced):\n    return clock.offer(b, ts, synced)\n"
            "def now_s():\n    return None if state() == 'unset' else b.ms // 1000\n"
            "def show(*x):\n    print(json.dumps(list(x)))\n" + steps)
    out = run_mpy(code).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.startswith("[")]


def test_the_first_kit_time_sets_an_unset_clock_and_says_where_it_came_from():
    got = run_clock(
        "show(state(), now_s())\n"
        f"show(offer({NOW_MS}, False), state(), b.ms, now_s())\n",
        Y2000_MS, "kit")
    assert got == [["unset", None], [1, "kit", NOW_MS, NOW_MS // 1000]]
    got = run_clock(f"show(offer({NOW_MS}, True), state())\n", Y2000_MS, None)
    assert got == [[1, "synced"]]


def test_a_set_clock_takes_drift_but_refuses_a_jump_back_or_a_day_ahead():
    got = run_clock(
        f"show(offer({NOW_MS + 500}, False), b.ms)\n"  # under a second: left alone
        f"show(offer({NOW_MS + 3000}, False), b.ms)\n"  # drift corrected, state unchanged
        f"show(offer({NOW_MS + 3000 - 6000}, False), b.ms)\n"  # 6 s back: refused
        f"show(offer({NOW_MS + 3000 + 86400000 + 1000}, False), b.ms)\n"  # a day ahead: refused
        f"show(offer({NOW_MS + 3000 - 4000}, True), b.ms, state())\n"  # 4 s back, now synced: taken
        f"show(offer({NOW_MS + 60000}, False), b.ms, state())\n"  # the Pi lost its sync: ours is better
        f"show(offer({Y2000_MS}, True), state())\n"  # a time before the build floor
        "show(offer('soon', True))\n",
        NOW_MS, "kit")
    assert got == [
        [0, NOW_MS],
        [0, NOW_MS + 3000],
        [-1, NOW_MS + 3000],
        [-1, NOW_MS + 3000],
        [1, NOW_MS - 1000, "synced"],
        [0, NOW_MS - 1000, "synced"],
        [-1, "synced"],
        [-1],
    ]


def test_a_synced_pi_replaces_a_kit_clock_however_far_it_moves_it():
    # Unpacked offline, the Pi served its last known time (days behind); then the uplink's NTP.
    days = 3 * 86400000
    got = run_clock(
        f"show(offer({NOW_MS + days}, False), b.ms, state())\n"  # the Pi still unsynced: refused
        f"show(offer({NOW_MS + days}, True), b.ms, state())\n"  # synced now: taken, whatever the jump
        f"show(offer({NOW_MS + 2 * days}, True), b.ms, state())\n",  # but a synced clock keeps its guard
        NOW_MS, "kit")
    assert got == [[-1, NOW_MS, "kit"], [1, NOW_MS + days, "synced"], [-1, NOW_MS + days, "synced"]]


def board_clock(env: dict, code: str) -> list:
    proc = subprocess.run([micropython_binary(), "-X", "heapsize=64k", "-c", "import board, clock, json\n"
                           "def state():\n    return clock.state(board)\n" + code], env={**mpy_env(UNIX_BOARD), **env},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_unix_board_starts_its_clock_where_it_is_told_and_runs_on_from_there():
    # From the environment: a device powered up in the year 2000 is unset, and its clock runs.
    state, ms, later = board_clock({"POPKIT_BOARD_EPOCH_MS": str(Y2000_MS)},
                                   "a = board.epoch_ms()\nimport time\ntime.sleep_ms(50)\n"
                                   "print(json.dumps([state(), a, board.epoch_ms()]))")
    assert state == "unset" and Y2000_MS <= ms < Y2000_MS + 5000 and later > ms
    # From the config's hw.epoch_ms, over the environment.
    state, ms = board_clock({"POPKIT_BOARD_EPOCH_MS": str(Y2000_MS)},
                            f"board.configure({{'hw': {{'epoch_ms': {NOW_MS}}}}})\n"
                            "print(json.dumps([state(), board.epoch_ms()]))")
    assert state == "kit" and NOW_MS <= ms < NOW_MS + 5000
    # Neither: the PC's own clock, NTP-kept.
    state, ms = board_clock({}, "print(json.dumps([state(), board.epoch_ms()]))")
    assert state == "synced" and abs(ms - time.time() * 1000) < 60_000
