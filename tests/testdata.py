"""Where the shared real-device captures live (see SOURCES.md in that folder).

Override with POPKIT_TESTDATA; the default is the checkout's sibling
``../shared/testdata``. A missing folder fails loudly instead of skipping,
because tests that silently skip their real data prove nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    folder = Path(os.environ.get("POPKIT_TESTDATA") or REPO_ROOT / ".." / "shared" / "testdata").resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"test data folder {folder} not found; set POPKIT_TESTDATA")
    return folder


def data_path(relative: str) -> Path:
    path = data_dir() / relative
    if not path.is_file():
        raise FileNotFoundError(f"test data file {path} not found (see SOURCES.md)")
    return path


def read_data(relative: str) -> bytes:
    return data_path(relative).read_bytes()
