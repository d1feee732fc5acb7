"""Counts of catalog changes through the API, by outcome, for /metrics: a crew sending the same bad
sheet again and again shows here, as do refusals nobody reported.

One per process, as the rest of /metrics; fleet/metrics.py renders it (render_catalog_metrics).
"""

from __future__ import annotations

import threading
from collections import Counter

# outcome: imported | lines (a CSV line refused) | body (not UTF-8, not CSV or JSON, too big, a bad
# JSON form) | kit (a line for another kit) | at_once (two changes at one moment) |
# repriced | price_refused
_lock = threading.Lock()
CHANGES: Counter = Counter()


def count(outcome: str, n: int = 1) -> None:
    with _lock:
        CHANGES[outcome] += n


def render_catalog_metrics() -> str:
    """Prometheus text: popkit_catalog_changes_total{outcome=...}."""
    with _lock:
        items = sorted(CHANGES.items())
    return "\n".join([
        "# HELP popkit_catalog_changes_total Catalog imports and price changes through the API, by outcome.",
        "# TYPE popkit_catalog_changes_total counter",
        *(f'popkit_catalog_changes_total{{outcome="{k}"}} {v}' for k, v in items),
    ]) + "\n"
