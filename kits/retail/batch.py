"""Batch label printing, the pure part: which labels a batch prints, and what it refuses.

A batch is a list of :class:`LabelJob` (one label design, printed ``copies`` times). It is planned
entirely before anything is sent, so a batch that would refuse one label (a SKU the catalog does
not have, a name too long for the template) prints nothing: a half-labelled stall is worse than
an error message that lists every problem at once. The printing is agent/labelprint.py.

Modes (docs/labels.md, ``popkit retail labels``):

- all stock: one label per unit each product carries (``all_stock=True``), for every product or
  for the SKUs named;
- named SKUs ``copies`` times each: one product, or a reprint of the damaged ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kits.retail.catalog import Product
from kits.retail.labels import LabelError, LabelTemplate, escpos_job, product_fields, render_tspl

KINDS = ("tspl", "escpos")
MAX_COPIES = 999  # TSPL's PRINT limit as render_tspl checks it


@dataclass(frozen=True)
class LabelJob:
    sku: str
    copies: int
    fields: dict  # product_fields(product): what the label prints


@dataclass(frozen=True)
class Plan:
    jobs: list[LabelJob]
    refused: list[str]  # one line per refusal, "SKU: reason"
    skipped: list[str]  # SKUs with no stock under all-stock: nothing to label, not an error

    @property
    def labels(self) -> int:
        return sum(j.copies for j in self.jobs)


def select(products: Iterable[Product], kit: str | None = None, event: str | None = None) -> dict[str, Product]:
    """Products by SKU, for one kit and/or event. A SKU on several rows (kits or events) is one
    label design; its stock is the sum of the rows kept, since the catalog says it is one product."""
    out: dict[str, Product] = {}
    for p in products:
        if (kit and p.kit != kit) or (event and p.event != event):
            continue
        if p.sku in out:
            out[p.sku] = out[p.sku].model_copy(update={"stock": out[p.sku].stock + p.stock})
        else:
            out[p.sku] = p
    return out


def plan(products: dict[str, Product], t: LabelTemplate, skus: list[str] | None = None,
         all_stock: bool = False, copies: int = 1, kind: str = "tspl") -> Plan:
    """The batch, every label rendered once to prove it prints; refusals listed, not raised."""
    if kind not in KINDS:
        raise ValueError(f"printer kind {kind!r} is not one of {', '.join(KINDS)}")
    if not skus and not all_stock:
        raise ValueError("name the SKUs to print (--sku) or ask for labels for all stock (--all-stock)")
    if isinstance(copies, bool) or not isinstance(copies, int) or not 1 <= copies <= MAX_COPIES:
        raise ValueError(f"copies must be 1..{MAX_COPIES}, got {copies!r}")
    wanted = list(dict.fromkeys(skus)) if skus else list(products)
    jobs: list[LabelJob] = []
    refused: list[str] = []
    skipped: list[str] = []
    for sku in wanted:
        product = products.get(sku)
        if product is None:
            refused.append(f"{sku}: not in the catalog")
            continue
        n = product.stock if all_stock else copies
        if n < 1:
            skipped.append(sku)
            continue
        fields = product_fields(product)
        try:
            if kind == "tspl":
                render_tspl(t, fields, copies=min(n, MAX_COPIES))
            else:
                escpos_job(t, fields)
        except LabelError as exc:
            refused.append(f"{sku}: {exc}")
            continue
        # Stock above what one PRINT takes becomes several jobs of the same label.
        while n > 0:
            jobs.append(LabelJob(sku, min(n, MAX_COPIES), fields))
            n -= MAX_COPIES
    return Plan(jobs, refused, skipped)


def remaining(jobs: list[LabelJob]) -> dict[int, list[str]]:
    """Unprinted jobs as SKUs grouped by count: each group is one reprint command line."""
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.sku] = counts.get(j.sku, 0) + j.copies
    groups: dict[int, list[str]] = {}
    for sku, n in counts.items():
        groups.setdefault(n, []).append(sku)
    return groups
