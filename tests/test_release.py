"""The release bundle format (kits/release.py): a good bundle verifies; every way a bundle can be
wrong is refused with its reason; the signed bytes have one spelling."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from kits.release import (BundleError, ReleaseManifest, canonical, device_tag, key_id, load_bundle,
                          new_private_key, parse_public_key, parse_version, public_key_of, sign, verify_bundle,
                          write_bundle)

FILES = {"app_main.mpy": b"M\x06\x00\x1f" + bytes(range(200)), "scanline.mpy": b"M\x06\x00\x1fscan" * 40,
         "lib/verdict.mpy": b"M\x06\x00\x1fverdict"}


@pytest.fixture(scope="module")
def key() -> bytes:
    return new_private_key()


@pytest.fixture
def bundle(tmp_path: Path, key: bytes) -> Path:
    return write_bundle(tmp_path, "scanner", "0.3.1", 6, FILES, key, created_ms=1_765_000_000_000)


def refused(folder: Path, pub: bytes, *words: str) -> str:
    with pytest.raises(BundleError) as e:
        verify_bundle(folder, pub)
    for w in words:
        assert w in e.value.reason, e.value.reason
    return e.value.reason


def test_good_bundle_verifies(bundle: Path, key: bytes):
    pub = public_key_of(key)
    m = verify_bundle(bundle, pub)
    assert bundle.name == "scanner-0.3.1" == m.name
    assert (m.role, m.version, m.fw, m.mpy_abi, m.format) == ("scanner", "0.3.1", "scanner-0.3.1", 6, 1)
    assert m.key_id == key_id(pub) == hashlib.sha256(pub).hexdigest()[:16]
    assert {f.path: (f.size, f.sha256) for f in m.files} == {
        p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in FILES.items()}
    assert m.total_size == sum(len(b) for b in FILES.values())
    raw = json.loads((bundle / "manifest.json").read_bytes())
    assert set(raw) == {"format", "role", "version", "fw", "mpy_abi", "files", "total_size", "created_ms", "key_id"}
    assert len((bundle / "manifest.sig").read_bytes()) == 64
    assert (bundle / "files" / "lib" / "verdict.mpy").read_bytes() == FILES["lib/verdict.mpy"]


def test_canonical_bytes_are_stable(bundle: Path, key: bytes):
    m, data, sig = load_bundle(bundle)
    assert canonical(m) == data
    assert canonical(ReleaseManifest.model_validate(json.loads(data))) == data
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()
    assert sign(m, key) == (data, sig)  # Ed25519 is deterministic: the same key signs the same bytes alike


def test_bad_signature_refused(bundle: Path, key: bytes):
    sig = bytearray((bundle / "manifest.sig").read_bytes())
    sig[10] ^= 1
    (bundle / "manifest.sig").write_bytes(bytes(sig))
    refused(bundle, public_key_of(key), "bad signature")


def test_other_key_refused(bundle: Path):
    other = public_key_of(new_private_key())
    refused(bundle, other, "bad signature", key_id(other))


def test_manifest_changed_after_signing_refused(bundle: Path, key: bytes):
    m, data, _ = load_bundle(bundle)
    raised = m.model_copy(update={"version": "9.9.9", "fw": "scanner-9.9.9"})
    (bundle / "manifest.json").write_bytes(canonical(raised))
    refused(bundle, public_key_of(key), "bad signature")


def test_tampered_file_refused(bundle: Path, key: bytes):
    p = bundle / "files" / "scanline.mpy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x40
    p.write_bytes(bytes(data))
    refused(bundle, public_key_of(key), "hash mismatch", "scanline.mpy")


def test_truncated_file_refused(bundle: Path, key: bytes):
    p = bundle / "files" / "app_main.mpy"
    p.write_bytes(p.read_bytes()[:-7])
    refused(bundle, public_key_of(key), "size mismatch", "app_main.mpy")


def test_missing_file_refused(bundle: Path, key: bytes):
    (bundle / "files" / "lib" / "verdict.mpy").unlink()
    refused(bundle, public_key_of(key), "missing file", "lib/verdict.mpy")


def test_extra_file_refused(bundle: Path, key: bytes):
    (bundle / "files" / "boot.py").write_bytes(b"import evil\n")
    refused(bundle, public_key_of(key), "extra file", "boot.py")


def test_symlink_refused(bundle: Path, key: bytes):
    (bundle / "files" / "scanline.mpy").unlink()
    (bundle / "files" / "scanline.mpy").symlink_to(bundle / "files" / "app_main.mpy")
    refused(bundle, public_key_of(key), "symbolic link")


def test_files_folder_as_a_link_refused(bundle: Path, key: bytes, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    (bundle / "files").rename(elsewhere)
    (bundle / "files").symlink_to(elsewhere)
    refused(bundle, public_key_of(key), "symbolic link")


def test_missing_signature_or_manifest_refused(bundle: Path, key: bytes, tmp_path: Path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy, symlinks=True)
    (bundle / "manifest.sig").unlink()
    refused(bundle, public_key_of(key), "manifest.sig is missing")
    (copy / "manifest.json").unlink()
    refused(copy, public_key_of(key), "manifest.json is missing")


def test_short_signature_refused(bundle: Path, key: bytes):
    (bundle / "manifest.sig").write_bytes((bundle / "manifest.sig").read_bytes()[:63])
    refused(bundle, public_key_of(key), "64-byte")


def _resign(bundle: Path, key: bytes, obj: dict) -> None:
    """A manifest the release key really signed, wrong in its content: the signature is not what
    stops it, the format check is."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sig").write_bytes(load_pem_private_key(key, None).sign(data))


@pytest.mark.parametrize("path", ["../main.py", "lib/../../x.mpy", "/etc/passwd", "./a.mpy", "a//b.mpy",
                                  ".hidden", "a\\b.mpy", ""])
def test_path_that_leaves_the_slot_refused(bundle: Path, key: bytes, path: str):
    obj = json.loads((bundle / "manifest.json").read_bytes())
    obj["files"][0]["path"] = path
    _resign(bundle, key, obj)
    refused(bundle, public_key_of(key), "not a release manifest", "path")


@pytest.mark.parametrize("change, words", [
    ({"format": 2}, "format"),
    ({"role": "printer", "fw": "printer-0.3.1"}, "role"),
    ({"version": "0.3", "fw": "scanner-0.3"}, "MAJOR.MINOR.PATCH"),
    ({"fw": "scanner-0.3.2"}, "fw"),
    ({"mpy_abi": None}, "mpy_abi"),
    ({"total_size": 1}, "total_size"),
    ({"surprise": True}, "surprise"),
])
def test_wrong_format_refused(bundle: Path, key: bytes, change: dict, words: str):
    obj = json.loads((bundle / "manifest.json").read_bytes())
    obj.update(change)
    _resign(bundle, key, obj)
    refused(bundle, public_key_of(key), "not a release manifest", words)


def test_duplicate_path_refused(bundle: Path, key: bytes):
    obj = json.loads((bundle / "manifest.json").read_bytes())
    obj["files"].append(obj["files"][0])
    obj["total_size"] += obj["files"][0]["size"]
    _resign(bundle, key, obj)
    refused(bundle, public_key_of(key), "listed twice")


def test_non_canonical_manifest_refused(bundle: Path, key: bytes):
    obj = json.loads((bundle / "manifest.json").read_bytes())
    data = json.dumps(obj, indent=1).encode()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sig").write_bytes(load_pem_private_key(key, None).sign(data))
    refused(bundle, public_key_of(key), "canonical")


def test_not_json_refused(bundle: Path, key: bytes):
    (bundle / "manifest.json").write_bytes(b"\xff\xfe not json")
    refused(bundle, public_key_of(key), "not a release manifest")


def test_agent_manifest_has_no_abi(tmp_path: Path, key: bytes):
    folder = write_bundle(tmp_path, "agent", "0.2.0", None, {"popkit-0.2.0-py3-none-any.whl": b"PK\x03\x04"},
                          key, created_ms=1)
    assert verify_bundle(folder, public_key_of(key)).mpy_abi is None
    with pytest.raises(ValueError, match="mpy_abi"):
        write_bundle(tmp_path / "x", "agent", "0.2.1", 6, {"a.whl": b"x"}, key, created_ms=1)


def test_a_version_is_built_once(bundle: Path, key: bytes):
    with pytest.raises(FileExistsError):
        write_bundle(bundle.parent, "scanner", "0.3.1", 6, FILES, key, created_ms=2)


def test_device_tag_is_hmac_sha256(bundle: Path):
    _, data, _ = load_bundle(bundle)
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    import hmac
    assert device_tag(k1, data) == hmac.new(k1, data, "sha256").digest()
    assert len(device_tag(k1, data)) == 32 and device_tag(k1, data) != device_tag(k2, data)


def test_parse_version():
    assert parse_version("0.3.1") == (0, 3, 1)
    assert parse_version("0.10.0") > parse_version("0.9.9")
    for bad in ("0.3", "v0.3.1", "01.2.3", "1.2.3-rc1", "1.2.3 "):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_public_key_files(key: bytes):
    pub = public_key_of(key)
    assert parse_public_key(pub.hex() + "\n") == pub
    assert parse_public_key(pub.hex().upper()) == pub
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    pem = Ed25519PublicKey.from_public_bytes(pub).public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    assert parse_public_key(pem) == pub
    with pytest.raises(ValueError):
        parse_public_key("abc")
