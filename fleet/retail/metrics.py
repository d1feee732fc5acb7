"""Counts of catalog changes through the API, by outcome, for /metrics: a crew sending the same bad
sheet again and again shows here, as do refusals nobody reported.

One per process, as the rest of /metrics; fleet/metrics.py renders it (render_catalog_metrics).
"""

from __future__ import annotations

import threading
from collections import Counter

from fleet.retail.orders import refused

# outcome: imported | lines (a CSV line refused) | body (not UTF-8, not CSV or JSON, too big, a bad
# JSON form) | kit (a line for another kit) | at_once (two changes at one moment) |
# repriced | price_refused | too_big (would not fit in the till's config)
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


def render_order_metrics(counts: dict[str, int]) -> str:
    """Prometheus text for the tills' orders: totals from the tables (OrderStore.counts, right across
    workers and restarts) and this process's refusals at ingest (fleet/retail/orders.py REFUSED)."""
    lines = ["# HELP popkit_retail_sales Orders and refunds the fleet holds (one per id).",
             "# TYPE popkit_retail_sales gauge",
             f'popkit_retail_sales{{kind="order"}} {counts["orders"]}',
             f'popkit_retail_sales{{kind="refund"}} {counts["refunds"]}',
             "# HELP popkit_retail_duplicates The same order or refund uploaded again (same id, same body).",
             "# TYPE popkit_retail_duplicates gauge",
             f'popkit_retail_duplicates{{kind="order"}} {counts["order_duplicates"]}',
             f'popkit_retail_duplicates{{kind="refund"}} {counts["refund_duplicates"]}',
             "# HELP popkit_retail_conflicts Other bodies uploaded under a stored id: kept and flagged, never merged.",
             "# TYPE popkit_retail_conflicts gauge",
             f'popkit_retail_conflicts{{kind="order"}} {counts["order_conflicts"]}',
             f'popkit_retail_conflicts{{kind="refund"}} {counts["refund_conflicts"]}',
             "# HELP popkit_retail_refunds_unmatched Refunds whose order has not arrived (yet).",
             "# TYPE popkit_retail_refunds_unmatched gauge",
             f"popkit_retail_refunds_unmatched {counts['refunds_unmatched']}",
             "# HELP popkit_retail_refused_total Orders and refunds not recorded: not from a kit's agent "
             "(not_agent) or naming another kit (other_kit); they stay in the ledger.",
             "# TYPE popkit_retail_refused_total counter"]
    lines += [f'popkit_retail_refused_total{{reason="{k}"}} {v}' for k, v in sorted(refused().items())]
    return "\n".join(lines) + "\n"
