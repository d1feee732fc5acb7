"""plumbing/files.py: what the tools and the agent keep on disk is whole or not there, and private."""

from __future__ import annotations

import stat

import pytest

from plumbing.files import write_atomic


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_private_file_is_0600_in_a_new_0700_folder_and_replaces_the_old_one_whole(tmp_path):
    target = tmp_path / "keys" / "event.key"
    write_atomic(target, "first")
    assert target.read_text() == "first" and mode(target) == 0o600 and mode(target.parent) == 0o700
    write_atomic(target, b"second, longer than the first")
    assert target.read_bytes() == b"second, longer than the first"
    assert [p.name for p in target.parent.iterdir()] == ["event.key"]  # no temporary left beside it


def test_a_public_file_is_0644_and_a_stale_temporary_does_not_keep_its_mode(tmp_path):
    target = tmp_path / "kit.toml"
    stale = tmp_path / "kit.toml.tmp"
    stale.write_text("half of an interrupted write")
    stale.chmod(0o666)
    write_atomic(target, "id = 'demo'\n", private=False)
    assert mode(target) == 0o644 and target.read_text() == "id = 'demo'\n" and not stale.exists()


class _Unwritable(str):
    def encode(self, *args, **kwargs):  # fails after the temporary is open: mid-write
        raise OSError(28, "No space left on device")


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "timeline.json"
    write_atomic(target, '{"format": 1}')
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, _Unwritable("x"))
    assert target.read_text() == '{"format": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.json"]
