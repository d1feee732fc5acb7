"""The agent runs the firmware's own timeline code (device/lib/timeline.py, scene.py, jscan.py) under
CPython, through agent/firmware_lib.py: the same inputs must give the same answers and the same
refusals as in the real MicroPython (the unix port), and loading them must leave the rest of the
process as it was. (The firmware's heap is measured elsewhere, from a ROMFS image:
tests/device/test_lighting_app.py; here the unix port compiles the .py files into its heap.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from agent import firmware_lib
from agent.lightshow import TimelineError, look_at, parse_timeline
from tests.device.mpy import run_mpy

REPO = Path(__file__).resolve().parent.parent

SCENES = {"dark": {"levels": {}},
          "red": {"levels": {"r": 255, "dmx": {"1": [255, 0, 0]}}, "fade_ms": 500},
          "warm": {"levels": {"r": 255, "g": 128}},
          "blue": {"levels": {"b": 255}}}
T = 1795279200
PARITY_OK = [
    ({"format": 1, "scenes": SCENES, "default": "dark",
      "windows": [[T, T + 100, "warm", 10], [T + 50, T + 60, "blue", 20]],
      "floor": {"levels": {"w": 90}, "open": [[T + 90, T + 200]]}, "meta": {"venue": "x"}},
     [None, T - 1, T, T + 55, T + 59.5, T + 60, T + 95, T + 150, T + 250]),
    ({"format": 1, "scenes": SCENES, "windows": [[T, T + 10, "red", 5], [T + 10, T + 20, "blue", 5]]},
     [T - 1, T, T + 9, T + 10, T + 20]),
    # a floor whose DMX runs past every scene's, and an open window before the first window
    ({"format": 1, "scenes": {**SCENES, "é-wash": {"levels": {"g": 7, "dmx": {"3": [1, 2]}}, "fade_ms": 3600000}},
      "default": "é-wash", "windows": [[T + 10, T + 20, "red", 0]],
      "floor": {"levels": {"r": 9, "dmx": {"9": [40]}}, "open": [[T - 30, T + 15]]}},
     [None, 100, T - 31, T - 30, T + 10, T + 15, T + 20]),
]
PARITY_BAD = [
    {"format": 2, "scenes": SCENES},
    {"format": 1, "scenes": SCENES, "sceens": {}},
    {"format": 1, "scenes": SCENES, "default": "black"},
    {"format": 1, "scenes": {"x": {"levels": {"r": 256}}}},
    {"format": 1, "scenes": SCENES, "windows": [[T, T + 10, "red", 5], [T + 5, T + 20, "blue", 5]]},
    {"format": 1, "scenes": SCENES, "windows": [[T + 60, T + 70, "red", 5], [T, T + 20, "blue", 6]]},
    {"format": 1, "scenes": SCENES, "floor": {"levels": {}, "open": {}}},
    {"format": 1, "scenes": SCENES, "windows": [[T, T, "red", 5]]},
    {"format": 1, "scenes": SCENES, "windows": [[T, T + 5, "disco", 5]]},
    # the rest of the refusals, each through the shim
    {"format": 1, "scenes": {}},
    {"format": 1, "scenes": {"x" * 41: {"levels": {}}}},
    {"format": 1, "scenes": {"x": {"levels": {"dmx": {"512": [1, 2]}}}}},
    {"format": 1, "scenes": {"x": {"levels": {"dmx": {"1": [1, 2], "2": [3]}}}}},
    {"format": 1, "scenes": {"x": {"levels": {"uv": 3}}}},
    {"format": 1, "scenes": {"x": {"levels": {}, "fade_ms": 3600001}}},
    {"format": 1, "scenes": {"x": {"levels": {}, "colour": 1}}},
    {"format": 1, "scenes": {"x": {"fade_ms": 1}}},
    {"format": 1, "scenes": SCENES, "windows": [[T, T + 5, "red", 256]]},
    {"format": 1, "scenes": SCENES, "windows": [[T, T + 5.5, "red", 1]]},
    {"format": 1, "scenes": SCENES, "windows": [[T, T + 5, "red"]]},
    {"format": 1, "scenes": SCENES, "windows": {"0": [T, T + 5, "red", 1]}},
    {"format": 1, "scenes": SCENES, "windows": [[T, T + 2**31, "red", 1]]},
    {"format": 1, "scenes": SCENES, "floor": {"levels": {"w": 9}, "open": [[T, T + 5, 1]]}},
    {"format": 1, "scenes": SCENES, "floor": {"levels": {"w": 9}, "open": [], "closed": []}},
    [1, 2],
]
# A fade on 6 outputs started at tick 100, stepped at these ticks; and a one-hour fade (its elapsed
# time is shifted to keep the arithmetic in small ints).
FADE = {"target": [255, 0, 10, 0, 0, 200], "ms": 1000, "t0": 100, "steps": [100, 101, 350, 600, 1099, 1100, 1200],
        "long_ms": 3600000, "long_steps": [1, 900000, 1800000, 3599999, 3600000]}

FIRMWARE_SIDE = """
import json, sys
from timeline import Timeline
from scene import Fader
with open(sys.argv[1]) as f:  # a file: JSON with big ints straight from argv crashed the unix port
    cases = json.load(f)
out = []
raw = []
for data, probes in cases["ok"]:
    tl = Timeline(json.dumps(data), 512)
    row = []
    raw_row = []
    for t in probes:
        sc = tl.active(t)
        if sc is None:  # no window, no default: everything off
            row.append([None, [0, 0, 0, 0]])
        else:
            lv = list(sc.levels[:4])
            row.append([sc.id, lv + [0] * (4 - len(lv))])
        raw_row.append([sc.id, list(sc.levels), sc.floored, sc.fade_ms])
    out.append(row)
    raw.append(raw_row)
bad = []
for data in cases["bad"]:
    try:
        Timeline(json.dumps(data), 512)
        bad.append(None)
    except ValueError as e:  # TimelineError, SceneError
        bad.append(str(e))
fade = cases["fade"]
f = Fader(len(fade["target"]))
f.start(bytearray(fade["target"]), fade["ms"], fade["t0"])
steps = [[f.step(t), list(f.levels)] for t in fade["steps"]]
f.start(bytearray(fade["target"][::-1]), fade["long_ms"], 0)
steps += [[f.step(t), list(f.levels)] for t in fade["long_steps"]]
print(json.dumps({"ok": out, "raw": raw, "bad": bad, "fade": steps}))
"""


def shim_fade(t0: int, at=lambda t0, t: t) -> list:
    """The same fades as FIRMWARE_SIDE's, through the shim; ``at`` maps a firmware tick to the one used."""
    f = firmware_lib.scene.Fader(len(FADE["target"]))
    f.start(bytearray(FADE["target"]), FADE["ms"], at(t0, FADE["t0"]))
    steps = [[f.step(at(t0, t)), list(f.levels)] for t in FADE["steps"]]
    f.start(bytearray(FADE["target"][::-1]), FADE["long_ms"], at(t0, 0))
    return steps + [[f.step(at(t0, t)), list(f.levels)] for t in FADE["long_steps"]]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory):
    cases = tmp_path_factory.mktemp("firmware-side") / "cases.json"
    cases.write_text(json.dumps({"ok": PARITY_OK, "bad": PARITY_BAD, "fade": FADE}))
    return json.loads(run_mpy(FIRMWARE_SIDE, heap="1m", args=[str(cases)]).stdout)  # semantics, not memory


def test_the_agents_timeline_says_what_the_firmware_says(firmware):
    for (data, probes), fw_row, fw_raw in zip(PARITY_OK, firmware["ok"], firmware["raw"], strict=True):
        tl = parse_timeline(data)
        # the agent's look (r, g, b, w) ...
        assert [[look_at(tl, t).scene, list(look_at(tl, t).levels)] for t in probes] == fw_row, data
        # ... and the firmware's whole answer through the shim, DMX slots, floor and fade included
        answers = []
        for t in probes:
            sc = tl.active(t)
            answers.append([sc.id, list(sc.levels), sc.floored, sc.fade_ms])
        assert answers == fw_raw, data
    for data, fw_error in zip(PARITY_BAD, firmware["bad"], strict=True):
        assert fw_error is not None, data
        with pytest.raises(TimelineError) as e:
            parse_timeline(data)
        assert str(e.value) == fw_error


def test_the_fader_steps_as_in_micropython_and_across_the_ticks_wrap(firmware):
    assert shim_fade(0) == firmware["fade"]
    # ticks_ms wraps (at 2**30, as on the ESP32): a fade started just before the wrap steps the same
    near_wrap = firmware_lib.TICKS_PERIOD - 150
    assert shim_fade(near_wrap, at=lambda t0, t: firmware_lib.ticks_add(t0, t)) == firmware["fade"]
    top = firmware_lib.TICKS_PERIOD - 1
    assert firmware_lib.ticks_add(top, 1) == 0 and firmware_lib.ticks_add(0, -1) == top
    assert firmware_lib.ticks_diff(firmware_lib.ticks_add(top, 5), top) == 5
    assert firmware_lib.ticks_diff(top, firmware_lib.ticks_add(top, 5)) == -5
    assert 0 <= firmware_lib.ticks_ms() <= top


def test_loading_the_firmware_leaves_the_process_alone():
    """No top-level timeline, scene, jscan or micropython module; CPython's time and json untouched."""
    probe = """
import json, sys, time
import agent.lightshow
from agent import firmware_lib
print(json.dumps({
    "top": sorted(set(sys.modules) & {"timeline", "scene", "jscan", "micropython"}),
    "ticks_in_time": hasattr(time, "ticks_ms"),
    "json_is_cpythons": json.loads is sys.modules["json"].loads and json.loads("NaN") != 0,
    "files": [firmware_lib.jscan.__file__, firmware_lib.scene.__file__, firmware_lib.timeline.__file__],
}))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["top"] == [] and seen["ticks_in_time"] is False and seen["json_is_cpythons"] is True
    assert seen["files"] == [str(REPO / "device" / "lib" / f"{m}.py") for m in ("jscan", "scene", "timeline")]
    # ... and the shim's json, as MicroPython's, refuses what is not JSON
    with pytest.raises(ValueError):
        firmware_lib.jscan.JsonScan(b"[NaN]").value()


def test_an_installed_agent_finds_the_firmware_where_its_wheel_puts_it(tmp_path):
    """The wheel carries the files as data files (pyproject.toml), under <prefix>/share/popkit/device/lib,
    where the shim looks when there is no checkout around it."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["data-files"] == {
        str(firmware_lib.INSTALLED): [f"device/lib/{m}.py" for m in firmware_lib.MODULES]}
    assert Path(sysconfig.get_path("data")) / firmware_lib.INSTALLED in firmware_lib.lib_dirs()
    prefix = tmp_path / "prefix"
    (prefix / firmware_lib.INSTALLED).mkdir(parents=True)
    for m in firmware_lib.MODULES:
        shutil.copy2(REPO / "device" / "lib" / f"{m}.py", prefix / firmware_lib.INSTALLED / f"{m}.py")
    mods = firmware_lib.load(prefix / firmware_lib.INSTALLED)
    tl = mods["timeline"].Timeline(json.dumps(PARITY_OK[1][0]), 512)
    assert tl.active(T).id == "red" and mods["timeline"].__file__.startswith(str(prefix))
    assert mods["timeline"] is not firmware_lib.timeline  # a load of its own, beside the agent's
