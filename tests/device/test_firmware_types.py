"""mypy over the firmware, against the ESP32 port's MicroPython stubs rather than CPython's typeshed.

The settings are in device/mypy.ini; the two that point into the venv are made here:
- the custom typeshed is the stubs folder (its ``stdlib/`` is MicroPython's reduced stdlib, from
  micropython-stdlib-stubs);
- MYPYPATH is a folder of links to the modules of micropython-esp32-stubs and micropython-stdlib-stubs
  (``machine``, ``micropython``, ``time``, ``_mpy_shed``, ...).

By hand: ``.venv/bin/python -m tests.device.test_firmware_types``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.device.mpy import DEVICE

CONFIG = DEVICE / "mypy.ini"
APPS = ("scanner", "lighting")  # one run each: both apps are a module named `main`
# The stubs are installed apart from the venv's site-packages (./dev: pip install --target): they ship
# top-level packages (requests/, umqtt/, mip/) that would otherwise shadow real ones in CPython.
STUBS_DIR = Path(os.environ.get("POPKIT_MPY_STUBS") or Path(sys.prefix) / "mpy-stubs")
STUBS_SPEC = "micropython-esp32-stubs>=1.29,<1.30"


def stub_dirs(into: Path) -> tuple[Path, Path]:
    """(custom typeshed dir, MYPYPATH folder) from the stubs installed in STUBS_DIR."""
    if not (STUBS_DIR / "stdlib" / "VERSIONS").is_file():
        raise AssertionError(f"MicroPython stubs not installed in {STUBS_DIR}: ./dev test installs them "
                             f"(pip install --target {STUBS_DIR} '{STUBS_SPEC}')")
    stubs = into / "mpy-stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    for entry in STUBS_DIR.iterdir():
        name = entry.name
        if name in ("stdlib", "stubs", "bin") or name.endswith(".dist-info"):
            continue  # stdlib/ is the typeshed itself; stubs/ is typeshed's third-party part
        if entry.is_file() and not name.endswith(".pyi"):
            continue  # README.md, pyproject.toml, ...
        link = stubs / name
        if not link.exists():
            link.symlink_to(entry)
    assert (stubs / "machine.pyi").exists() and (stubs / "micropython.pyi").exists(), sorted(os.listdir(stubs))
    return STUBS_DIR, stubs


def run_mypy(app: str, work: Path) -> subprocess.CompletedProcess:
    """mypy over the shared libs, the ESP32 board layer, the A/B boot stage and one app's main.py
    (the boot stage's main.py is a template: popkit/flashtree.py fills in its safe_boots)."""
    typeshed, stubs = stub_dirs(work)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--custom-typeshed-dir", str(typeshed),
           "--cache-dir", str(work / "mypy-cache"), "--no-error-summary", "--show-error-codes",
           "lib", "boards/esp32", "boot/abboot.py", f"apps/{app}/main.py"]
    env = dict(os.environ, MYPYPATH=str(stubs))
    return subprocess.run(cmd, cwd=DEVICE, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("firmware-types")


@pytest.mark.parametrize("app", APPS)
def test_firmware_type_checks_against_the_esp32_stubs(app, work):
    proc = run_mypy(app, work)
    assert proc.returncode == 0, (
        f"mypy found type errors in the firmware ({app}); config: device/mypy.ini\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        rc = 0
        for a in APPS:
            p = run_mypy(a, Path(tmp))
            print(f"== {a}: mypy exit {p.returncode}\n{p.stdout}{p.stderr}", end="")
            rc = rc or p.returncode
    sys.exit(rc)
