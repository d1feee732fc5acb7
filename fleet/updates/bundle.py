"""An uploaded release bundle, checked and kept: the signature first (the release public key from
the fleet's settings), then every file against the manifest, then the bundle is moved into
``release_dir/<role>-<version>/`` in its own layout (kits/release.py), ready for the kits' agents.

Nothing of a refused upload is kept. The fleet holds only the public key: the private key signs
bundles on the release machine and never reaches the fleet's disk or database.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from kits.release import (FILES, MANIFEST, SIGNATURE, BundleError, ReleaseManifest, parse_public_key,
                          verify_files, verify_signature)


class NoReleaseKey(Exception):
    """The fleet has no release public key to check uploads with (POPKIT_RELEASE_PUBKEY)."""


def release_key(path: str | None) -> bytes:
    """The raw release public key from the file the settings name; NoReleaseKey without a usable one."""
    if not path:
        raise NoReleaseKey("this fleet has no release public key: set POPKIT_RELEASE_PUBKEY to the file "
                           "`popkit release keygen` wrote beside the private key")
    try:
        return parse_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise NoReleaseKey(f"the release public key {path} cannot be used: {exc}") from None


def accept(release_dir: Path, manifest_json: bytes, sig: bytes, files: dict[str, bytes],
           public_key: bytes) -> tuple[ReleaseManifest, str]:
    """Check an uploaded bundle and keep it under ``release_dir``: (its manifest, the manifest's
    SHA-256). BundleError (the reason) when it is refused; nothing is kept then."""
    if len(sig) != 64:
        raise BundleError(f"manifest.sig is {len(sig)} bytes, not a 64-byte Ed25519 signature")
    manifest = verify_signature(manifest_json, sig, public_key)
    listed = {f.path for f in manifest.files}
    # Checked before anything is written: a path the manifest does not list never reaches the disk.
    if set(files) - listed:
        raise BundleError(f"extra file not in the manifest: files/{sorted(set(files) - listed)[0]}")
    if listed - set(files):
        raise BundleError(f"missing file: files/{sorted(listed - set(files))[0]}")
    release_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=release_dir))
    try:
        for entry in manifest.files:
            path = tmp / FILES / entry.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(files[entry.path])
        (tmp / SIGNATURE).write_bytes(sig)
        (tmp / MANIFEST).write_bytes(manifest_json)
        verify_files(tmp, manifest)
        final = release_dir / manifest.name
        if final.exists():  # kept by an upload whose database row was never written (the caller checked)
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest, hashlib.sha256(manifest_json).hexdigest()


def discard(release_dir: Path, name: str) -> None:
    """Remove a kept bundle (its database row could not be written)."""
    shutil.rmtree(release_dir / name, ignore_errors=True)
