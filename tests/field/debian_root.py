"""A fresh Debian root for the install step, made with ``debootstrap`` once and cached.

What the Pi has before the install step, as docs/pi-install.md's ``apt install`` line leaves it:
Debian (this machine's release, from the mirror this machine's apt uses) with systemd, python3 and
python3-venv, Mosquitto, chrony and NetworkManager. It is kept as a tar under ``var/test-cache/`` (outside git) and
unpacked afresh for each run; the wheels of PopKit's dependencies (its ``agent`` extra) are kept
beside it, so the install step makes its virtualenv offline.

Everything that cannot be done here says why (:func:`refusal`, or a :class:`Unavailable` with the
tool's own words), for the test to skip loudly.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

CACHE = REPO / "var" / "test-cache"
PACKAGES = ("systemd", "python3", "python3-venv", "mosquitto", "chrony")
# Installed with apt in the new root afterwards: its postinst fails inside debootstrap's own setup.
LATER = ("network-manager",)


class Unavailable(RuntimeError):
    """A part of the Debian root cannot be made on this machine; the message says which and why."""


def refusal() -> str | None:
    if os.geteuid() != 0:
        return "not root (debootstrap and chroot need root)"
    for tool in ("debootstrap", "chroot", "unshare", "mount", "tar", "ip"):
        if shutil.which(tool) is None and not os.access(f"/usr/sbin/{tool}", os.X_OK):
            return f"{tool} is not installed (./dev test installs debootstrap on Debian)"
    return None


def release() -> str:
    """This machine's Debian release (its codename)."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    m = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, re.M)
    return m.group(1) if m else "bookworm"


def mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 .sources or one-line .list files)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        for url in re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            if "security" not in url and url.startswith(("http://", "https://")):
                return url
    return "http://deb.debian.org/debian"


def _locked(name: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE / f".{name}.lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)  # two runs at once: the second waits for the first's cache
    return fd


def _tar() -> Path:
    key = hashlib.sha256(f"{release()} {','.join(PACKAGES)} {','.join(LATER)}".encode()).hexdigest()[:10]
    return CACHE / f"debian-root-{release()}-{key}.tar"


def _wheels() -> Path:
    return CACHE / f"pi-wheels-{hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()[:10]}"


def cached() -> bool:
    """Both the root and the wheels are in the cache already."""
    return _tar().exists() and (_wheels() / ".complete").exists()


def root_tar() -> Path:
    """The cached Debian root (a tar), made with debootstrap when missing."""
    tar = _tar()
    key = tar.stem.rsplit("-", 1)[1]
    fd = _locked("debian-root")
    try:
        if tar.exists():
            return tar
        build = CACHE / f"debian-root-{key}.build"
        shutil.rmtree(build, ignore_errors=True)
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", release(), str(build), mirror()]
        started = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            shutil.rmtree(build, ignore_errors=True)
            raise Unavailable(f"{' '.join(cmd)} failed: {(done.stderr or done.stdout).strip()[-800:]}")
        shutil.copy2("/etc/resolv.conf", build / "etc" / "resolv.conf")
        apt = in_root(build, f'chroot "$R" sh -c "DEBIAN_FRONTEND=noninteractive apt-get install -y -q '
                             f'--no-install-recommends {" ".join(LATER)} && apt-get clean"', timeout=900, net=True)
        if apt.returncode != 0:
            shutil.rmtree(build, ignore_errors=True)
            raise Unavailable(f"apt-get install {' '.join(LATER)} in the new root failed: "
                              f"{(apt.stderr or apt.stdout).strip()[-800:]}")
        (build / "etc" / "resolv.conf").unlink()
        subprocess.run(["tar", "--numeric-owner", "-cpf", f"{tar}.tmp", "-C", str(build), "."], check=True)
        os.replace(f"{tar}.tmp", tar)
        for old in CACHE.glob("debian-root-*.tar"):  # roots of another release or package list: ~300 MB each
            if old != tar:
                old.unlink()
        shutil.rmtree(build, ignore_errors=True)
        print(f"debian root made with debootstrap in {time.monotonic() - started:.0f}s: {tar}", file=sys.stderr)
        return tar
    finally:
        os.close(fd)


def wheelhouse() -> Path:
    """Wheels of PopKit's dependencies with the agent extra (and setuptools, to build PopKit's own
    wheel offline), for this pyproject.toml."""
    folder = _wheels()
    fd = _locked("pi-wheels")
    try:
        if (folder / ".complete").exists():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        for cmd in ([*pip, "wheel", "--quiet", "--wheel-dir", str(folder), f"{REPO}[agent]"],
                    [*pip, "download", "--quiet", "--dest", str(folder), "setuptools>=68", "wheel"]):
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
            if done.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise Unavailable(f"the agent's wheels: {' '.join(cmd)} failed: {done.stderr.strip()[-800:]}")
        for own in folder.glob("popkit-*.whl"):  # built afresh for each run (popkit_wheel)
            own.unlink()
        (folder / ".complete").touch()
        for old in CACHE.glob("pi-wheels-*"):  # for an older pyproject.toml
            if old != folder:
                shutil.rmtree(old, ignore_errors=True)
        return folder
    finally:
        os.close(fd)


def popkit_wheel(out: Path, wheels: Path) -> Path:
    """This checkout as a wheel, built offline."""
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet", "--no-deps", "--no-index",
           "--find-links", str(wheels), "--wheel-dir", str(out), str(REPO)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    if done.returncode != 0:
        raise AssertionError(f"building PopKit's wheel failed: {done.stderr.strip()[-2000:]}")
    return next(out.glob("popkit-*.whl"))


def unpack(tar: Path, root: Path) -> Path:
    root.mkdir(parents=True)
    subprocess.run(["tar", "--numeric-owner", "-xpf", str(tar), "-C", str(root)], check=True)
    return root


def in_root(root: Path, script: str, timeout: float = 300, net: bool = False) -> subprocess.CompletedProcess:
    """``script`` (sh) in a private mount and network namespace, with ``root``'s /proc, /dev and a
    fresh /run mounted, and ``R`` set to the root: it chroots into it for each step it runs there.
    Nothing it mounts or starts outlives it, and its ports are its own (loopback only). ``net``:
    this machine's network instead (only to make the cached root: apt)."""
    setup = (f'set -e\nR="{root}"\n' + ("" if net else "ip link set lo up\n") + 'mount -t proc proc "$R/proc"\n'
             'mount -t tmpfs tmpfs "$R/run"\nmount --bind /dev "$R/dev"\n')
    return subprocess.run(["unshare", "--mount", *([] if net else ["--net"]), "--fork", "--kill-child", "sh", "-c",
                           setup + script], capture_output=True, text=True, timeout=timeout)
