"""``popkit release keygen|build|verify`` (popkit/release.py): the release key's file modes and
where it may not go, a real scanner bundle built from the firmware and verified, the agent's
wheels pinned by hash, and a tampered bundle refused."""

from __future__ import annotations

import hashlib
import json
import stat
import subprocess
from pathlib import Path

import pytest

from kits.release import load_bundle, parse_public_key, public_key_of, verify_bundle
from popkit.cli import main
from popkit.firmware import read_manifest, tool

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    assert main(["release", "keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys"


def scanner_version() -> str:
    return read_manifest("scanner").version.removeprefix("scanner-")


def test_keygen_writes_a_private_key_0600_and_its_public_key(keys: Path, capsys):
    private, public = keys / "release.key", keys / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert parse_public_key(public.read_text()) == public_key_of(private.read_bytes())
    assert len(public.read_text().strip()) == 64


def test_keygen_never_overwrites_a_key(keys: Path, capsys):
    before = (keys / "release.key").read_bytes()
    assert main(["release", "keygen", "--out", str(keys)]) == 3
    assert "never overwritten" in capsys.readouterr().err
    assert (keys / "release.key").read_bytes() == before


def test_keygen_refuses_a_folder_inside_a_git_work_tree(tmp_path: Path, capsys):
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    assert main(["release", "keygen", "--out", str(tmp_path / "repo" / "keys")]) == 3
    assert "git work tree" in capsys.readouterr().err
    assert not (tmp_path / "repo" / "keys").exists()


@pytest.mark.parametrize("port", ["esp32", "unix"])
def test_build_scanner_bundle_and_verify(keys: Path, tmp_path: Path, capsys, port: str):
    version = scanner_version()
    assert main(["release", "build", "--role", "scanner", "--version", version, "--key", str(keys / "release.key"),
                 "--out", str(tmp_path / "out"), "--port", port]) == 0
    folder = tmp_path / "out" / f"scanner-{version}"
    m = verify_bundle(folder, parse_public_key((keys / "release.pub").read_text()))
    names = {f.path for f in m.files}
    # What `popkit device flash` puts in a tree's app slot (the role's modules and app_main), never
    # the boot stage (main.py), the device's config or data/.
    expected = {"app_main.mpy"} | {p.stem + ".mpy" for p in read_manifest("scanner", port).sources
                                   if p.name != "main.py"}
    assert names == expected
    assert not names & {"main.py", "scanner.json"} and not any(n.startswith("data/") for n in names)
    # The ABI is the target interpreter's own sys.implementation._mpy.
    if port == "unix":
        r = subprocess.run([tool("micropython"), "-c", "import sys; print(sys.implementation._mpy)"],
                           capture_output=True, text=True, check=True)
        assert m.mpy_abi == int(r.stdout)
    else:
        assert m.mpy_abi & 0xFF == 6 and m.mpy_abi >> 10 == 10  # .mpy v6, xtensawin
    for f in m.files:
        assert (folder / "files" / f.path).read_bytes()[1] == m.mpy_abi & 0xFF
    assert main(["release", "verify", str(folder), "--pub", str(keys / "release.pub")]) == 0
    assert f"good: scanner-{version}" in capsys.readouterr().out


def test_tampered_bundle_refused_by_verify(keys: Path, tmp_path: Path, capsys):
    version = scanner_version()
    assert main(["release", "build", "--role", "scanner", "--version", version, "--key", str(keys / "release.key"),
                 "--out", str(tmp_path), "--port", "unix"]) == 0
    folder = tmp_path / f"scanner-{version}"
    app = folder / "files" / "app_main.mpy"
    data = bytearray(app.read_bytes())
    data[len(data) // 2] ^= 1
    app.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["release", "verify", str(folder), "--pub", str(keys / "release.pub")]) == 1
    assert "refused: hash mismatch: files/app_main.mpy" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(["release", "keygen", "--out", str(other)]) == 0
    app.write_bytes(bytes(data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1:]))
    assert main(["release", "verify", str(folder), "--pub", str(keys / "release.pub")]) == 0
    assert main(["release", "verify", str(folder), "--pub", str(other / "release.pub")]) == 1
    assert "refused: bad signature" in capsys.readouterr().err


def test_build_refuses_a_version_the_code_does_not_report(keys: Path, tmp_path: Path, capsys):
    major, minor, patch = map(int, scanner_version().split("."))
    assert main(["release", "build", "--role", "scanner", "--version", f"{major}.{minor}.{patch + 1}",
                 "--key", str(keys / "release.key"), "--out", str(tmp_path / "out")]) == 3
    assert "reports scanner-" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _pyproject_version() -> str:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def test_build_agent_bundle_pins_every_wheel(keys: Path, tmp_path: Path, capsys):
    """The real `pip wheel .[agent]` (a few seconds from the local wheel index)."""
    version = _pyproject_version()
    assert main(["release", "build", "--role", "agent", "--version", version, "--key", str(keys / "release.key"),
                 "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    folder = tmp_path / f"agent-{version}"
    m = verify_bundle(folder, parse_public_key((keys / "release.pub").read_text()))
    assert m.mpy_abi is None and m.fw == f"agent-{version}"
    wheels = {f.path for f in m.files if f.path.endswith(".whl")}
    assert f"popkit-{version}-py3-none-any.whl" in wheels
    for dep in ("pyserial", "bleak", "gpiozero", "rich", "pydantic", "paho_mqtt"):
        assert any(w.lower().startswith(dep + "-") for w in wheels), (dep, wheels)
    pins = (folder / "files" / "requirements.txt").read_text().splitlines()
    assert len(pins) == len(wheels)
    for w in wheels:
        digest = hashlib.sha256((folder / "files" / w).read_bytes()).hexdigest()
        assert any(line.endswith(f"--hash=sha256:{digest}") and "==" in line for line in pins), w


def test_build_agent_refuses_a_version_the_wheel_does_not_carry(keys: Path, tmp_path: Path, capsys):
    """A stand-in wheel folder (--wheels): the popkit wheel's version must be the release's."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "popkit-0.1.0-py3-none-any.whl").write_bytes(b"PK stand-in")
    (wheels / "rich-15.0.0-py3-none-any.whl").write_bytes(b"PK stand-in 2")
    args = ["release", "build", "--role", "agent", "--key", str(keys / "release.key"), "--wheels", str(wheels)]
    assert main([*args, "--version", "0.1.1", "--out", str(tmp_path / "a")]) == 3
    assert "popkit wheel is 0.1.0" in capsys.readouterr().err
    assert main([*args, "--version", "0.1.0", "--out", str(tmp_path / "b")]) == 0
    _, data, _ = load_bundle(tmp_path / "b" / "agent-0.1.0")
    assert [f["path"] for f in json.loads(data)["files"]] == [
        "popkit-0.1.0-py3-none-any.whl", "requirements.txt", "rich-15.0.0-py3-none-any.whl"]
