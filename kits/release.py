"""Release bundles: the one format every part of a field update speaks (docs/updates.md).

A bundle is a folder ``<role>-<version>/``::

    manifest.json   canonical JSON (see ``canonical``): what the release is and every file's hash
    manifest.sig    64 raw bytes: the release key's Ed25519 signature over manifest.json's exact bytes
    files/<path>    the payload, one file per manifest entry

The signature covers only the manifest; the manifest covers every file by size and SHA-256, so one
signature check plus one hash per file proves the whole bundle. The agent checks the signature (it
holds the release public key); an ESP32 checks ``device_tag`` (an HMAC under its own update key,
which the agent adds) because Ed25519 in pure MicroPython is too slow there (docs/updates.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Literal, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

FORMAT = 1
ROLES = ("scanner", "lighting", "agent")
ESP32_ROLES = ("scanner", "lighting")
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
FILES = "files"

_VERSION = re.compile(r"^(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})\.(0|[1-9][0-9]{0,5})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
# A path an ESP32's littlefs and a Pi's ext4 both take, that cannot leave the slot it is written to.
_SEGMENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$")


class BundleError(Exception):
    """A bundle that must not be installed; ``reason`` says why in words a crew can act on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse_version(version: str) -> tuple[int, int, int]:
    """``"0.3.1"`` -> ``(0, 3, 1)``: versions compare as numbers ("0.10.0" is newer than "0.9.9")."""
    m = _VERSION.match(version)
    if not m:
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH (numbers, no leading zeros)")
    return int(m[1]), int(m[2]), int(m[3])


def check_path(path: str) -> str:
    """A manifest file path, or ValueError: relative, '/'-separated, no '..', '.', empty or hidden
    segment, so that joining it under a slot or a cache folder can never land outside it."""
    segments = path.split("/")
    if not path or len(path) > 255 or any(not _SEGMENT.match(s) or s in (".", "..") for s in segments):
        raise ValueError(f"file path {path!r} is not a plain relative path (segments of letters, digits, "
                         f"'_.+-', no '..', not starting with '.' or '/')")
    return path


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    size: int = Field(ge=0)
    sha256: str

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_path(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _HEX64.match(v):
            raise ValueError("sha256 must be 64 lower-case hex characters")
        return v


class ReleaseManifest(BaseModel):
    """What manifest.json says. ``fw`` is the string the device reports once it runs the release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1]
    role: Literal["scanner", "lighting", "agent"]
    version: str
    fw: str
    mpy_abi: int | None
    files: list[FileEntry]
    total_size: int = Field(ge=0)
    created_ms: int = Field(ge=0)
    key_id: str

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        parse_version(v)
        return v

    @field_validator("key_id")
    @classmethod
    def _key_id(cls, v: str) -> str:
        if not _HEX16.match(v):
            raise ValueError("key_id must be 16 lower-case hex characters")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "ReleaseManifest":
        if self.fw != f"{self.role}-{self.version}":
            raise ValueError(f"fw {self.fw!r} must be {self.role}-{self.version!s}")
        if (self.role in ESP32_ROLES) != (self.mpy_abi is not None):
            raise ValueError("mpy_abi is required for ESP32 roles and must be null for the agent")
        if not self.files:
            raise ValueError("a release has at least one file")
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("a file path is listed twice")
        # "a" and "a/b" cannot both be files.
        dirs = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
        if dirs & set(paths):
            raise ValueError(f"{sorted(dirs & set(paths))[0]!r} is listed as a file and as a folder")
        if self.total_size != sum(f.size for f in self.files):
            raise ValueError("total_size is not the sum of the files' sizes")
        return self

    @property
    def name(self) -> str:
        """The bundle's folder name, and its name in the kit's cache and the download URLs."""
        return f"{self.role}-{self.version}"

    @property
    def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(self.version)


def canonical(manifest: ReleaseManifest) -> bytes:
    """The exact bytes that are signed, served and HMAC'ed: one spelling per manifest, so a
    re-serialised manifest still matches its signature."""
    return json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()


def parse_manifest(manifest_json: bytes) -> ReleaseManifest:
    """manifest.json's bytes -> the manifest, or BundleError (bad JSON, a bad field, not canonical)."""
    try:
        manifest = ReleaseManifest.model_validate(json.loads(manifest_json))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and ValidationError are ValueErrors
        raise BundleError(f"manifest.json is not a release manifest: {_first_error(e)}") from None
    if canonical(manifest) != manifest_json:
        # Two spellings of one manifest would let a consumer check one and act on the other.
        raise BundleError("manifest.json is not in canonical form (sorted keys, no spaces)")
    return manifest


def _first_error(e: Exception) -> str:
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "manifest"
        return f"{where}: {err['msg']}"
    return str(e)


def key_id(public_key_bytes: bytes) -> str:
    """The release key's short name: first 16 hex characters of SHA-256 of the raw 32-byte key."""
    return hashlib.sha256(public_key_bytes).hexdigest()[:16]


def device_tag(device_key: bytes, manifest_json: bytes) -> bytes:
    """What the agent adds for one ESP32: HMAC-SHA256 under that device's update key over the exact
    manifest bytes (32 bytes). The device recomputes it with device/lib/hmac256.py."""
    return hmac.new(device_key, manifest_json, hashlib.sha256).digest()


def load_bundle(folder: Path) -> tuple[ReleaseManifest, bytes, bytes]:
    """(manifest, manifest.json's bytes, the 64-byte signature) of a bundle folder; nothing verified
    beyond the manifest's own shape. BundleError when a part is missing or malformed."""
    folder = Path(folder)
    try:
        manifest_json = (folder / MANIFEST).read_bytes()
        sig = (folder / SIGNATURE).read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{Path(e.filename).name} is missing from {folder}") from None
    except OSError as e:
        raise BundleError(f"cannot read the bundle at {folder}: {e.strerror}") from None
    if len(sig) != 64:
        raise BundleError(f"manifest.sig is {len(sig)} bytes, not a 64-byte Ed25519 signature")
    return parse_manifest(manifest_json), manifest_json, sig


def verify_signature(manifest_json: bytes, sig: bytes, public_key_bytes: bytes) -> ReleaseManifest:
    """The manifest, once the release key's signature over its exact bytes holds; BundleError if not.
    For a manifest that arrives on its own (the fleet's upload, the kit's cache) before its files."""
    manifest = parse_manifest(manifest_json)
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes).verify(sig, manifest_json)
    except (InvalidSignature, ValueError):
        if manifest.key_id != key_id(public_key_bytes):
            raise BundleError(f"bad signature: the bundle names release key {manifest.key_id}, this "
                              f"release key is {key_id(public_key_bytes)}") from None
        raise BundleError("bad signature: manifest.json was not signed by this release key "
                          "(or was changed after signing)") from None
    if manifest.key_id != key_id(public_key_bytes):
        raise BundleError(f"the manifest names key {manifest.key_id}, signed by {key_id(public_key_bytes)}")
    return manifest


def verify_files(folder: Path, manifest: ReleaseManifest) -> None:
    """Every file of the manifest present under ``folder/files`` with its size and SHA-256, and no
    other file there; BundleError naming the first that is not."""
    root = Path(folder) / FILES
    if root.is_symlink():
        raise BundleError(f"the bundle's {FILES}/ is a symbolic link")
    if not root.is_dir():
        raise BundleError(f"the bundle has no {FILES}/ folder")
    present = set()
    for p in root.rglob("*"):
        if p.is_symlink():
            # A link could point anywhere on the machine that installs the bundle.
            raise BundleError(f"files/{p.relative_to(root).as_posix()} is a symbolic link")
        if p.is_file():
            present.add(p.relative_to(root).as_posix())
        elif not p.is_dir():
            raise BundleError(f"files/{p.relative_to(root).as_posix()} is not a regular file")
    listed = {f.path for f in manifest.files}
    if listed - present:
        raise BundleError(f"missing file: files/{sorted(listed - present)[0]}")
    if present - listed:
        raise BundleError(f"extra file not in the manifest: files/{sorted(present - listed)[0]}")
    for entry in manifest.files:
        path = root / entry.path
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"size mismatch: files/{entry.path} is {size} bytes, the manifest says {entry.size}")
        if file_sha256(path) != entry.sha256:
            raise BundleError(f"hash mismatch: files/{entry.path} is not the file that was signed")


def verify_bundle(folder: Path, public_key_bytes: bytes) -> ReleaseManifest:
    """The bundle's manifest once everything holds: the release key's signature, then every file's
    size and hash, and no file the manifest does not list. BundleError with the reason otherwise."""
    _, manifest_json, sig = load_bundle(folder)
    manifest = verify_signature(manifest_json, sig, public_key_bytes)
    verify_files(folder, manifest)
    return manifest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


# Keys. The private key is PKCS#8 PEM (what openssl and cryptography read); the public key is the
# raw 32 bytes as 64 hex characters, short enough to paste into an agent's config.

def new_private_key() -> bytes:
    """A fresh release key, as unencrypted PKCS#8 PEM bytes (the caller writes it 0600)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_key_of(private_pem: bytes) -> bytes:
    """The raw 32-byte public key of a PEM private key."""
    return _private(private_pem).public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def parse_public_key(text: bytes | str) -> bytes:
    """A public key file's content (64 hex characters, or a PEM public key) -> the raw 32 bytes."""
    raw = text.encode() if isinstance(text, str) else text
    if raw.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(raw)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("the public key is not an Ed25519 key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    s = raw.decode("ascii", "replace").strip()
    if not re.fullmatch(r"[0-9a-fA-F]{64}", s):
        raise ValueError("a release public key is 64 hex characters (or a PEM public key)")
    return bytes.fromhex(s)


def _private(private_pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("the release key is not an Ed25519 private key")
    return key


def sign(manifest: ReleaseManifest, private_pem: bytes) -> tuple[bytes, bytes]:
    """(manifest.json bytes, 64-byte signature) for a manifest, with the release key."""
    data = canonical(manifest)
    return data, _private(private_pem).sign(data)


def make_manifest(role: str, version: str, mpy_abi: int | None, files: Mapping[str, bytes],
                  public_key_bytes: bytes, created_ms: int) -> ReleaseManifest:
    """The manifest of a release made of ``files`` (path -> content)."""
    entries = [FileEntry(path=p, size=len(b), sha256=hashlib.sha256(b).hexdigest()) for p, b in sorted(files.items())]
    return ReleaseManifest(format=FORMAT, role=role, version=version, fw=f"{role}-{version}", mpy_abi=mpy_abi,
                           files=entries, total_size=sum(e.size for e in entries), created_ms=created_ms,
                           key_id=key_id(public_key_bytes))


def write_bundle(out: Path, role: str, version: str, mpy_abi: int | None, files: Mapping[str, bytes],
                 private_pem: bytes, created_ms: int) -> Path:
    """Write the signed bundle ``out/<role>-<version>/`` and return its folder. The manifest and the
    signature go last, so a half-written bundle fails verification rather than passing it."""
    from plumbing.files import write_atomic

    manifest = make_manifest(role, version, mpy_abi, files, public_key_of(private_pem), created_ms)
    folder = Path(out) / manifest.name
    if folder.exists():
        raise FileExistsError(f"{folder} exists: a release version is built once (bump the version)")
    for path, content in files.items():
        # Created here so they are 0755 (write_atomic makes missing folders 0700, for secrets).
        (folder / FILES / path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / FILES / path, content, private=False)
    manifest_json, sig = sign(manifest, private_pem)
    write_atomic(folder / SIGNATURE, sig, private=False)
    write_atomic(folder / MANIFEST, manifest_json, private=False)
    return folder
