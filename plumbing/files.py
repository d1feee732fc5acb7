"""Files the tools write for others to read: whole or not at all, and secrets never readable by others."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, data: bytes | str, private: bool = True) -> None:
    """Write ``path`` through a temporary file renamed over it, so a reader never sees half of it.
    ``private``: mode 0600 from the first byte (not chmod'ed after), in a 0700 folder if it is new."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    mode = 0o600 if private else 0o644
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # a stale .tmp from an interrupted run keeps its old mode otherwise
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
