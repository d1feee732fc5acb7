"""``popkit release keygen|build|verify``: the release key, and signed bundles (kits/release.py's
format) of a role's firmware or of the agent. docs/updates.md says where each key lives.

- ESP32 roles: the files ``popkit device flash`` puts in a device tree's app slot
  (popkit/flashtree.py): ``app_main.mpy`` and the role's modules; never the boot stage at the root
  (main.py and what it imports, which no update replaces), the device's ``<role>.json`` or ``data/``.
- The agent: the popkit wheel with its ``agent`` extra's dependency wheels, and a requirements.txt
  pinning each by version and hash, so the kit installs exactly these, offline
  (``pip install --no-index --find-links files/ --require-hashes -r files/requirements.txt``).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kits.release import (ESP32_ROLES, BundleError, key_id, new_private_key, parse_public_key, parse_version,
                          public_key_of, verify_bundle, write_bundle)
from plumbing.files import write_atomic
from popkit.firmware import FirmwareError

PRIVATE = "release.key"
PUBLIC = "release.pub"
REPO = Path(__file__).resolve().parent.parent
# MicroPython's native-architecture number for the ESP32's Xtensa LX6 with windowed registers
# (py/persistentcode.h MP_NATIVE_ARCH_XTENSAWIN), what `mpy-cross -march=xtensawin` targets.
ARCH_XTENSAWIN = 10


class ReleaseError(RuntimeError):
    """A release that cannot be made; the message says why and what to do."""


# ------------------------------------------------------------------ keygen

def keygen(out: Path) -> tuple[Path, Path]:
    """A new release key in ``out``: release.key (private, 0600) and release.pub (hex, beside it).
    Never over an existing key (every agent trusts the old one) and never inside a git work tree."""
    out = out.absolute()
    repo = _git_work_tree(out)
    if repo is not None:
        raise ReleaseError(f"{out} is inside the git work tree {repo}: a release key never goes in a repository "
                           "(keep it on the release machine, e.g. ~/.popkit/release)")
    private, public = out / PRIVATE, out / PUBLIC
    if private.exists() or public.exists():
        raise ReleaseError(f"{out} already holds a release key ({PRIVATE}); the kits trust it, so it is never "
                           "overwritten: choose another folder to make a new one")
    pem = new_private_key()
    write_atomic(private, pem, private=True)
    write_atomic(public, public_key_of(pem).hex() + "\n", private=False)
    return private, public


def _git_work_tree(folder: Path) -> Path | None:
    for p in (folder, *folder.parents):
        if (p / ".git").exists():
            return p
    return None


def read_private_key(path: Path) -> bytes:
    pem = Path(path).read_bytes()
    try:
        public_key_of(pem)
    except (ValueError, TypeError) as e:
        raise ReleaseError(f"{path}: not an Ed25519 release key from `popkit release keygen` ({e})") from None
    return pem


def read_public_key(path: Path) -> bytes:
    try:
        return parse_public_key(Path(path).read_bytes())
    except ValueError as e:
        raise ReleaseError(f"{path}: {e}") from None


# ------------------------------------------------------------------ build

def build(role: str, version: str, key: Path, out: Path, port: str = "esp32", wheels: Path | None = None,
          pip_args: tuple[str, ...] = ()) -> Path:
    """Build and sign the bundle ``out/<role>-<version>/``; returns its folder."""
    parse_version(version)
    pem = read_private_key(key)
    if role in ESP32_ROLES:
        files, abi = esp32_files(role, version, port)
    elif role == "agent":
        files, abi = agent_files(version, wheels, pip_args), None
    else:
        raise ReleaseError(f"unknown role {role!r} (scanner, lighting or agent)")
    folder = write_bundle(out, role, version, abi, files, pem, created_ms=int(time.time() * 1000))
    verify_bundle(folder, public_key_of(pem))  # what we wrote is what a kit will check
    return folder


def esp32_files(role: str, version: str, port: str) -> tuple[dict[str, bytes], int]:
    """(path -> content, mpy_abi) of a role's release: the app slot of the tree a flash writes."""
    from popkit.firmware import read_manifest
    from popkit.flashtree import SLOT, stage, tree_files

    reports = read_manifest(role, port).version
    if reports != f"{role}-{version}":
        # The device reports what its code says; a bundle named otherwise would never be seen to commit.
        raise ReleaseError(f"the {role} code reports {reports} (VERSION in device/manifest_{role}.py, FW in its "
                           f"app), not {role}-{version}: bump both, then build")
    with tempfile.TemporaryDirectory(prefix="popkit-release-") as tmp:
        tree = stage(role, port, {}, Path(tmp) / "tree")
        # The app slot a flash fills is exactly what an update replaces; the boot stage and its
        # state at the root, the device's config and data/ are never part of a release.
        files = {rel[len(SLOT) + 1:]: (tree / rel).read_bytes() for rel in tree_files(tree)
                 if rel.startswith(SLOT + "/")}
    return files, mpy_abi(port, files)


def mpy_abi(port: str, files: dict[str, bytes]) -> int:
    """The ``sys.implementation._mpy`` of the MicroPython that runs these files: the .mpy version in
    the low byte, then the sub-version and the native architecture (MPY_FILE_HEADER_INT). The device
    compares it with its own and refuses a bundle its loader could not import."""
    if port == "unix":
        from popkit.firmware import tool

        r = subprocess.run([tool("micropython"), "-c", "import sys; print(sys.implementation._mpy)"],
                           capture_output=True, text=True, timeout=30)
        abi = int(r.stdout.strip())
    else:
        from popkit.firmware import tool

        out = subprocess.run([tool("mpy-cross"), "--version"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"mpy v(\d+)\.(\d+)", out)
        if not m:
            raise ReleaseError(f"cannot read the .mpy version from `mpy-cross --version`: {out.strip()!r}")
        abi = int(m[1]) | ((int(m[2]) | ARCH_XTENSAWIN << 2) << 8)
    for path, data in files.items():
        # Header: b"M", the .mpy version, then flags (sub-version | arch << 2) that are 0 for
        # bytecode-only files, which any architecture of the same version loads.
        if data[:1] != b"M" or data[1] != abi & 0xFF or data[2] not in (0, abi >> 8):
            raise ReleaseError(f"{path} was compiled for another MicroPython (.mpy header {data[:3].hex()}, "
                               f"the target's is {abi:#x}): rebuild with the mpy-cross that matches")
    return abi


def agent_files(version: str, wheels: Path | None, pip_args: tuple[str, ...]) -> dict[str, bytes]:
    """The agent's wheels (built now with ``pip wheel .[agent]``, or taken from ``wheels``) and a
    requirements.txt pinning every one of them by version and SHA-256."""
    with tempfile.TemporaryDirectory(prefix="popkit-wheels-") as tmp:
        if wheels is None:
            wheels = Path(tmp) / "wheels"
            src = _clean_source(Path(tmp) / "src")
            r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(wheels),
                                *pip_args, f"{src}[agent]"], capture_output=True, text=True)
            if r.returncode != 0:
                raise ReleaseError(f"pip wheel failed: {(r.stderr or r.stdout).strip()[-800:]}")
        files = {p.name: p.read_bytes() for p in sorted(Path(wheels).glob("*.whl"))}
    pins = []
    for name, data in files.items():
        dist, wversion = name.split("-")[:2]
        dist = re.sub(r"[-_.]+", "-", dist).lower()
        if dist == "popkit" and wversion != version:
            raise ReleaseError(f"the popkit wheel is {wversion} (pyproject.toml), not {version}: bump it, then build")
        pins.append(f"{dist}=={wversion} --hash=sha256:{hashlib.sha256(data).hexdigest()}\n")
    if not any(p.startswith("popkit==") for p in pins):
        raise ReleaseError("no popkit wheel among the agent's wheels")
    files["requirements.txt"] = "".join(sorted(pins)).encode()
    return files


def _clean_source(into: Path) -> Path:
    """The files git tracks, as they are in the work tree, copied to ``into``: setuptools builds in
    its source folder, and the checkout's own build/ (whose build/lib keeps modules since deleted)
    and untracked files must not end up in a release; nor may the build touch the checkout."""
    r = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise ReleaseError(f"the agent's release is built from a git checkout of PopKit; {REPO} is not one")
    for rel in filter(None, r.stdout.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the work tree is not in the release
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, into / rel)
    return into


# ------------------------------------------------------------------ the commands

def main(args) -> int:
    """The ``popkit release`` subcommands (popkit/cli.py builds the parser)."""
    try:
        if args.release_command == "keygen":
            private, public = keygen(Path(args.out))
            pub = read_public_key(public)
            print(f"release key {key_id(pub)}: {private} (private, 0600: keep it off the kits and out of the "
                  f"fleet), {public} (public: give it to the agents)")
        elif args.release_command == "build":
            folder = build(args.role, args.version, Path(args.key), Path(args.out), port=args.port,
                           wheels=Path(args.wheels) if args.wheels else None,
                           pip_args=tuple(("--no-index",) if args.no_index else ())
                           + tuple(a for d in args.find_links for a in ("--find-links", d)))
            _print_bundle("built", folder, read_public_key_of(Path(args.key)))
        else:
            try:
                m = verify_bundle(Path(args.bundle), read_public_key(Path(args.pub)))
            except BundleError as e:
                print(f"popkit release verify: {args.bundle}: refused: {e.reason}", file=sys.stderr)
                return 1
            print(f"{Path(args.bundle)}: good: {m.fw}, {len(m.files)} files, {m.total_size} bytes, key {m.key_id}"
                  + (f", mpy abi {m.mpy_abi:#x}" if m.mpy_abi is not None else ""))
    except (ReleaseError, FirmwareError, FileExistsError) as e:
        print(f"popkit release {args.release_command}: {e}", file=sys.stderr)
        return 3
    return 0


def read_public_key_of(private: Path) -> bytes:
    return public_key_of(read_private_key(private))


def _print_bundle(what: str, folder: Path, pub: bytes) -> None:
    m = verify_bundle(folder, pub)
    print(f"{what} {folder}: {m.fw}, {len(m.files)} files, {m.total_size} bytes, key {m.key_id}"
          + (f", mpy abi {m.mpy_abi:#x}" if m.mpy_abi is not None else ""))


def add_parser(sub):
    """``popkit release``: keygen, build, verify. Returns its subcommands, for the fleet's (upload)."""
    rel = sub.add_parser("release", help="signed update bundles: the release key, build, verify").add_subparsers(
        dest="release_command", required=True)
    kg = rel.add_parser("keygen", help="a new Ed25519 release key: release.key (0600) and release.pub in --out")
    kg.add_argument("--out", required=True, metavar="DIR", help="a folder outside any repository")
    kg.set_defaults(func=main)
    b = rel.add_parser("build", help="build and sign <role>-<version>/ (manifest.json, manifest.sig, files/)")
    b.add_argument("--role", required=True, choices=("scanner", "lighting", "agent"))
    b.add_argument("--version", required=True, help="MAJOR.MINOR.PATCH: what the code reports (its FW / pyproject)")
    b.add_argument("--key", required=True, metavar="PRIVATE", help="release.key from `popkit release keygen`")
    b.add_argument("--out", required=True, metavar="DIR", help="the bundle goes in DIR/<role>-<version>/")
    b.add_argument("--port", choices=("esp32", "unix"), default="esp32",
                   help="ESP32 roles: the board layer and ABI to build for (unix: the unix-port tests and bench)")
    b.add_argument("--wheels", metavar="DIR", help="agent: take the wheels from DIR instead of running pip wheel")
    b.add_argument("--no-index", action="store_true", help="agent: pip wheel from --find-links only (offline)")
    b.add_argument("--find-links", action="append", default=[], metavar="DIR", help="agent: a local wheel folder")
    b.set_defaults(func=main)
    v = rel.add_parser("verify", help="check a bundle's signature and every file's size and hash")
    v.add_argument("bundle", metavar="DIR")
    v.add_argument("--pub", required=True, metavar="KEY", help="release.pub (64 hex characters, or PEM)")
    v.set_defaults(func=main)
    return rel
