"""Where the shared real-device captures live (see SOURCES.md in that folder).

Override with POPKIT_TESTDATA; the default is the checkout's sibling
``../shared/testdata``, or, for a clone made elsewhere from a local checkout (a CI
run in a temp folder), the sibling of the checkout it was cloned from. A missing
folder fails loudly instead of skipping, because tests that silently skip their
real data prove nothing.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _origin_checkout() -> Path | None:
    """The local checkout this one was cloned from, if it was."""
    try:
        url = subprocess.run(["git", "-C", str(REPO_ROOT), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    path = Path(url.removeprefix("file://")) if url else None
    return path if path is not None and path.is_dir() else None


@functools.cache
def data_dir() -> Path:
    if os.environ.get("POPKIT_TESTDATA"):
        candidates = [Path(os.environ["POPKIT_TESTDATA"])]
    else:
        candidates = [REPO_ROOT / ".." / "shared" / "testdata"]
        origin = None if candidates[0].is_dir() else _origin_checkout()
        if origin is not None:
            candidates.append(origin / ".." / "shared" / "testdata")
    for folder in candidates:
        if folder.is_dir():
            return folder.resolve()
    raise FileNotFoundError(f"test data folder not found (looked in {', '.join(str(c.resolve()) for c in candidates)}); "
                            "set POPKIT_TESTDATA")


def data_path(relative: str) -> Path:
    path = data_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(f"test data file {path} not found (see SOURCES.md)")
    return path


def read_data(relative: str) -> bytes:
    return data_path(relative).read_bytes()
