"""Who to tell which kits and devices a committed write touched.

Every store that writes (ingest's batches, a registration, a pushed config) calls ``tell`` after
its commit; the API's kit views recompute what changed, then the live stream tells the
dashboards (fleet/api/app.py). Called on the writer's thread: a listener must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("popkit.fleet.store")

Listener = Callable[[set[str], set[str]], None]


class Changes:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []

    def tell(self, kits: set[str], devices: set[str]) -> None:
        for fn in self.listeners:
            try:
                fn(kits, devices)
            except Exception:  # noqa: BLE001 - a listener (the dashboard) must never fail a write
                log.exception("a change listener failed")
