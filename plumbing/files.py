"""Files written for others to read: whole or not at all, kept across a power cut, and secrets never
readable by others."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, private: bool = True) -> None:
    """Write ``path`` through a temporary file renamed over it, so a reader never sees half of it.
    ``private``: mode 0600 from the first byte (not chmod'ed after), in a 0700 folder if it is new.

    The data and the rename are synced before returning: a Pi's power is pulled, not shut down, and
    a timeline or key the agent said it kept must still be there (not an empty file) when it boots."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    mode = 0o600 if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # a stale .tmp from an interrupted run keeps its old mode otherwise
        with os.fdopen(fd, "wb") as f:
            fd = -1  # the file object closes it now
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    sync_dir(path.parent)


def sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: the directory entry is the folder's data)."""
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a platform or file system that cannot open a folder: the rename stands as it is
    try:
        os.fsync(dfd)
    except OSError:
        pass  # some file systems (tmpfs on old kernels, FUSE) refuse fsync on a directory
    finally:
        os.close(dfd)
