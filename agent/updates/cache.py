"""The kit's copy of each release bundle: ``<data>/updates/<role>-<version>/``.

A bundle is visible to the kit's ESP32s only once whole and verified (the Ed25519 signature with
the release public key, every file's size and SHA-256: ``kits.release.verify_bundle``): it is
filled in ``<data>/updates/.partial/<name>/`` and renamed into place, so a power cut leaves either
no bundle or a whole one, never half of one that a device would start downloading.

The fill is resumable and strict about order: each file is appended at exactly its current size.
A chunk at any other offset (one repeated after a lost reply, or one after a gap) is refused, not
patched in, so the transport re-asks from :meth:`Fill.missing` and nothing is fetched twice.
The partial folder survives a restart of the agent: ``begin`` with the same signed manifest
continues where the last fill stopped.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from kits.release import BundleError, ReleaseManifest, file_sha256, verify_bundle, verify_signature
from plumbing.files import sync_dir, write_atomic

PARTIAL = ".partial"
NAME = re.compile(r"[a-z]+-\d+\.\d+\.\d+")  # <role>-<version>: the only folder names served or written


class CacheError(ValueError):
    """A bundle or a chunk the cache refuses; the message is the reason reported to the fleet."""


def bundle_name(manifest: ReleaseManifest) -> str:
    name = f"{manifest.role}-{manifest.version}"
    if not NAME.fullmatch(name):
        raise CacheError(f"not a bundle name: {name!r}")
    return name


class UpdateCache:
    def __init__(self, root: Path, public_key: bytes | None = None):
        self.root = Path(root)
        self.public_key = public_key  # None: this agent serves what it has but takes nothing new

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.fullmatch(p.name))

    def folder(self, name: str) -> Path | None:
        """The folder of a whole bundle, or None: ``name`` comes off the network, so it is only
        ever matched against the cache's own names, never joined as it stands."""
        return self.root / name if name in self.names() else None

    def begin(self, manifest_json: bytes, sig: bytes) -> "Fill":
        """Start (or resume) filling the bundle this signed manifest describes. The signature is
        checked before a byte is written: a bundle not from the release key takes no space."""
        if self.public_key is None:
            raise CacheError("no release public key is configured (POPKIT_RELEASE_PUBKEY): bundles are refused")
        try:
            manifest = verify_signature(manifest_json, sig, self.public_key)
        except BundleError as exc:
            raise CacheError(str(exc)) from None
        name = bundle_name(manifest)
        stage = self.root / PARTIAL / name
        if stage.is_dir() and _read(stage / "manifest.json") != manifest_json:
            shutil.rmtree(stage)  # a different build of the same version: its partial files are not ours
        (stage / "files").mkdir(parents=True, exist_ok=True)
        if _read(stage / "manifest.json") != manifest_json:
            write_atomic(stage / "manifest.sig", sig, private=False)
            write_atomic(stage / "manifest.json", manifest_json, private=False)
        fill = Fill(self, manifest, name, stage)
        for entry in manifest.files:  # each file exists from the start: an empty one is then whole already
            f = fill._file(entry.path)
            f.parent.mkdir(parents=True, exist_ok=True)
            f.touch()
        return fill

    def add(self, folder: Path, chunk: int = 256 * 1024) -> Path:
        """A whole bundle folder (a USB stick, a test): through the same checked fill."""
        folder = Path(folder)
        fill = self.begin((folder / "manifest.json").read_bytes(), (folder / "manifest.sig").read_bytes())
        for path, offset in fill.missing().items():
            with open(folder / "files" / path, "rb") as f:
                f.seek(offset)
                while block := f.read(chunk):
                    fill.write(path, offset, block)
                    offset += len(block)
        return fill.finish()

    def remove(self, name: str) -> None:
        folder = self.folder(name)
        if folder is not None:
            shutil.rmtree(folder)


class Fill:
    def __init__(self, cache: UpdateCache, manifest: ReleaseManifest, name: str, stage: Path):
        self.cache, self.manifest, self.name, self.stage = cache, manifest, name, stage
        self._sizes = {f.path: f.size for f in manifest.files}

    def _file(self, path: str) -> Path:
        if path not in self._sizes:
            raise CacheError(f"{path!r} is not in the manifest of {self.name}")
        return self.stage / "files" / path

    def have(self, path: str) -> int:
        f = self._file(path)
        return f.stat().st_size if f.exists() else 0

    def missing(self) -> dict[str, int]:
        """Each file not yet whole -> the offset its next chunk must start at."""
        return {p: self.have(p) for p, size in self._sizes.items() if self.have(p) < size}

    def write(self, path: str, offset: int, data: bytes) -> int:
        """Append one chunk; returns the file's new size."""
        have = self.have(path)
        if offset != have:
            kind = "repeated" if offset < have else "out of order (a chunk is missing)"
            raise CacheError(f"{path}: chunk at offset {offset} is {kind}: the file has {have} bytes")
        if have + len(data) > self._sizes[path]:
            raise CacheError(f"{path}: {have + len(data)} bytes is more than the manifest's {self._sizes[path]}")
        f = self._file(path)
        f.parent.mkdir(parents=True, exist_ok=True)
        with open(f, "ab") as out:
            out.write(data)
        return have + len(data)

    def finish(self) -> Path:
        """Verify the whole bundle and make it visible. A hash mismatch empties that file (the
        fill asks for it again from the start) and is refused."""
        if missing := self.missing():
            raise CacheError(f"{self.name} is not whole yet: {len(missing)} file(s) short")
        assert self.cache.public_key is not None  # begin() refused to start without it
        try:
            verify_bundle(self.stage, self.cache.public_key)
        except BundleError as exc:
            for bad in _mismatched(self.stage, self.manifest):
                os.truncate(bad, 0)
            raise CacheError(str(exc)) from None
        _sync_tree(self.stage)
        final = self.cache.root / self.name
        if final.exists():
            shutil.rmtree(final)  # the same version again (it verified, so it is the same bytes or a re-signed build)
        os.replace(self.stage, final)
        sync_dir(final.parent)
        return final


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _mismatched(stage: Path, manifest: ReleaseManifest) -> list[Path]:
    paths = [stage / "files" / e.path for e in manifest.files]
    return [p for p, e in zip(paths, manifest.files) if file_sha256(p) != e.sha256]


def _sync_tree(folder: Path) -> None:
    """Data on flash before the rename that publishes it (a Pi's power is pulled, not shut down)."""
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_dir(Path(dirpath))
