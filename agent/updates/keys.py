"""The kit's ESP32 update keys: ``/etc/popkit/update-keys.json``, device id -> 64 hex characters.

``popkit kit provision`` writes one 32-byte key into each ESP32's own config and all of them into
this file on the Pi (0600, owner popkit). With its device's key the agent tags a manifest it has
verified, and the device checks the tag (docs/updates.md). The file is re-read when it changes, so
a device provisioned while the agent runs is served without a restart; a file others can read is
refused, since anyone holding a key can make that device accept a manifest.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

log = logging.getLogger("popkit.agent.updates")

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


class KeysError(ValueError):
    pass


def read_keys(path: Path) -> dict[str, bytes]:
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeysError(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}; the update keys must be 0600 "
                        "(chmod 600, owner popkit)")
    try:
        raw = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise KeysError(f"{path}: not a JSON object of device id -> key ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise KeysError(f"{path}: not a JSON object of device id -> key")
    keys = {}
    for device, key in raw.items():
        if not isinstance(key, str) or not _HEX_KEY.fullmatch(key):
            raise KeysError(f"{path}: the key of {device!r} is not 64 hex characters")  # never echo a key
        keys[str(device)] = bytes.fromhex(key)
    return keys


class DeviceKeys:
    """The keys as of the file's last change; a broken or readable-by-others file serves nobody (logged)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._seen: tuple[int, int] | None = None
        self._keys: dict[str, bytes] = {}

    def get(self, device: str) -> bytes | None:
        self._refresh()
        return self._keys.get(device)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._seen is not None:
                log.warning("%s is gone: no device can be served an update", self.path)
            self._seen, self._keys = None, {}
            return
        seen = (st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._keys = read_keys(self.path)
        except (OSError, KeysError) as exc:
            log.error("%s", exc)
            self._keys = {}
