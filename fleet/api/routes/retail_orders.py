"""Micro-retail's orders in the fleet (fleet/retail/, issue 19): the kits' orders and refunds as the
tills uploaded them, sales and stock added up from them, CSV exports, and each kit's oldest order
not yet uploaded.

Roles as the catalog's routes: ops for any kit, crew for their own (another kit answers 404), venue
users get nothing of retail (403). The fleet-wide view answers crew with their kits only.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response

from fleet.api.deps import StoreDep
from fleet.api.routes.retail import EventQ, _kit_or_404
from fleet.api.schemas import DB_INT_MAX, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import visible_kits
from fleet.db import now_ms
from kits.contract import UUID_RE

router = APIRouter(prefix="/api/v1/kits/{kit_id}", tags=["retail"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)
fleet_router = APIRouter(prefix="/api/v1/retail", tags=["retail"], dependencies=guard("ops", "crew"),
                         responses=AUTH_RESPONSES)

OrderP = Annotated[str, Path(pattern=f"^{UUID_RE}$", description="the order's id (a UUID made on the till)")]
_NO_KIT = {404: "no such kit"}
_CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}


def _threshold_s(request: Request) -> float:
    return request.app.state.settings.retail_pending_alert_s


def pending_view(report: dict | None, threshold_s: float, now: int) -> dict:
    """A kit's latest report of orders not yet uploaded, with the age of the oldest and whether it
    is past the alert threshold (the ``orders_not_uploaded`` alert, fleet/alerts/rules.py)."""
    if report is None:
        return dict(reported=False, orders=None, oldest_ms=None, age_s=None, alert_after_s=threshold_s, late=False)
    age = (now - report["oldest_ms"]) / 1000 if report["orders"] and report["oldest_ms"] is not None else None
    return dict(reported=True, orders=report["orders"], oldest_ms=report["oldest_ms"], age_s=age,
                reported_ms=report["reported_ms"], device=report["device"], alert_after_s=threshold_s,
                late=age is not None and age >= threshold_s)


def _names(store, kit: str, event: str | None) -> dict[tuple[str, str], str]:
    return {(p.event, p.sku): p.name for p in store.retail.catalog(kit, event, removed=True)}


# A text cell a spreadsheet would run as a formula (a product named "=HYPERLINK(...)" by whoever wrote
# the catalog) is written with a leading apostrophe, as OWASP advises for CSV meant for spreadsheets.
# Numbers (refunds are negative) are written as numbers.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value):
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _csv(rows: list[list], header: list[str], name: str) -> Response:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows([_cell(v) for v in row] for row in rows)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/orders", responses=refusals(_NO_KIT))
def list_orders(kit_id: str, store: StoreDep, event: EventQ = None,
                limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0):
    """The kit's orders, newest first, each as its till made it with its refunds, ``duplicates``
    (the same body uploaded again) and ``conflict`` (another body under its id: ``conflicting``
    lists them; the first received stands). ``unmatched_refunds``: refunds whose order has not arrived."""
    _kit_or_404(store, kit_id)
    total, orders = store.retail.orders.orders(kit_id, event, limit, offset)
    return dict(kit=kit_id, event=event, total=total, limit=limit, offset=offset, orders=orders,
                unmatched_refunds=store.retail.orders.unmatched_refunds(kit_id, event))


@router.get("/orders.csv", response_class=Response, responses={**refusals(_NO_KIT), **_CSV})
def export_orders(kit_id: str, store: StoreDep, event: EventQ = None):
    """Every order and refund as CSV, one line per product line, oldest first: a refund's quantity and
    money are negative, so a column's sum is what stayed sold."""
    _kit_or_404(store, kit_id)
    rows = []
    for o in store.retail.orders.all_orders(kit_id, event):
        for x in o["lines"]:
            rows.append(["order", o["id"], "", o["event"], o["till"], o["n"], o["ts"], o.get("clock") or "",
                         o["payment"], o["by"], x["sku"], x["qty"], x["unit"], x["price_version"], x["tax_bp"],
                         x["net"], x["tax"], x["gross"], o["currency"], int(x["sku"] in o.get("oversold", [])),
                         int(o["conflict"])])
        for r in o["refunds"]:
            rows += _refund_rows(r, o["payment"])
    for r in store.retail.orders.unmatched_refunds(kit_id, event):
        rows += _refund_rows(r, "")
    header = ["record", "id", "order", "event", "till", "n", "ts_ms", "clock", "payment", "by", "sku", "qty",
              "unit", "price_version", "tax_bp", "net", "tax", "gross", "currency", "oversold", "conflict"]
    return _csv(rows, header, f"orders-{kit_id}" + (f"-{event}" if event else "") + ".csv")


def _refund_rows(r: dict, payment: str) -> list[list]:
    return [[r["kind"], r["id"], r["order"], r["event"], r["till"], r["n"], r["ts"], r.get("clock") or "", payment,
             r["by"], x["sku"], -x["qty"], "", "", "", -x["net"], -x["tax"], -x["gross"], r["currency"], 0,
             int(r["conflict"])] for x in r["lines"]]


@router.get("/orders/{order_id}", responses=refusals({404: "no such kit, or no such order in it"}))
def get_order(kit_id: str, order_id: OrderP, store: StoreDep):
    """One order with its refunds and any conflicting bodies uploaded under its id."""
    _kit_or_404(store, kit_id)
    found = store.retail.orders.order(kit_id, order_id)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no order {order_id} from kit {kit_id}")
    return found


@router.get("/sales", responses=refusals(_NO_KIT))
def get_sales(kit_id: str, request: Request, store: StoreDep, event: EventQ = None):
    """Per product (and event): sold and refunded quantity and money (gross, net, tax; minor units),
    and what stayed sold (``qty``, ``gross``, ``net``, ``tax``); totals; per payment method; and the
    kit's oldest order not yet uploaded (``pending``)."""
    _kit_or_404(store, kit_id)
    out = store.retail.sales.sales(kit_id, event, _names(store, kit_id, event))
    out["pending"] = pending_view(store.retail.orders.pending.latest([kit_id]).get(kit_id), _threshold_s(request),
                                  now_ms())
    return out


@router.get("/sales.csv", response_class=Response, responses={**refusals(_NO_KIT), **_CSV})
def export_sales(kit_id: str, store: StoreDep, event: EventQ = None):
    """Sales per product as CSV (minor units), the totals on the last line."""
    _kit_or_404(store, kit_id)
    s = store.retail.sales.sales(kit_id, event, _names(store, kit_id, event))
    rows = [[p["event"], p["sku"], p["name"] or "", p["sold"]["qty"], p["refunded"]["qty"], p["qty"], p["sold"]["gross"],
             p["refunded"]["gross"], p["gross"], p["net"], p["tax"], s["currency"] or ""] for p in s["products"]]
    t = s["totals"]
    rows.append(["", "TOTAL", "", t["sold"]["qty"], t["refunded"]["qty"], t["qty"], t["sold"]["gross"],
                 t["refunded"]["gross"], t["gross"], t["net"], t["tax"], s["currency"] or ""])
    header = ["event", "sku", "name", "sold_qty", "refunded_qty", "qty", "sold_gross", "refunded_gross", "gross",
              "net", "tax", "currency"]
    return _csv(rows, header, f"sales-{kit_id}" + (f"-{event}" if event else "") + ".csv")


@router.get("/stock", responses=refusals(_NO_KIT))
def get_stock(kit_id: str, store: StoreDep, event: EventQ = None):
    """Per product (and event): carried (the catalog), sold, restocked by refunds, left; ``oversold``
    when left is below zero or the till flagged a sale below zero."""
    _kit_or_404(store, kit_id)
    return dict(kit=kit_id, event=event, products=store.retail.sales.stock(kit_id, event))


@router.get("/orders-pending", responses=refusals(_NO_KIT))
def get_pending(kit_id: str, request: Request, store: StoreDep):
    """The kit's oldest order not yet uploaded, as its agent last reported it."""
    _kit_or_404(store, kit_id)
    return dict(kit=kit_id, **pending_view(store.retail.orders.pending.latest([kit_id]).get(kit_id),
                                           _threshold_s(request), now_ms()))


@fleet_router.get("/sales")
def fleet_sales(request: Request, store: StoreDep, user: UserDep):
    """Per kit and event across the fleet (crew: their kits): orders, refunds, money sold, refunded
    and kept, conflicts; and per kit its oldest order not yet uploaded."""
    kits = visible_kits(user)
    rows = store.retail.sales.fleet(kits)
    reports = store.retail.orders.pending.latest(sorted(kits) if kits is not None else None)
    now, threshold = now_ms(), _threshold_s(request)
    pending = {k: pending_view(reports.get(k), threshold, now) for k in sorted({r["kit"] for r in rows} | set(reports))}
    return dict(sales=rows, pending=pending)
