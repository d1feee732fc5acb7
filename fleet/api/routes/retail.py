"""Micro-retail's catalog (fleet/retail/, issue 19): import, read, export and reprice a kit's catalog.

ops for any kit, crew for their own (the guard answers 404 for another kit, as every kit route);
venue users get nothing of retail (403). Every change lands in the audit log through
fleet/auth/audit.py, which records each POST and PUT that was not refused, with the kit.

The import is all or nothing and checked by the same code as ``popkit retail import``
(kits/retail/catalog.py): a bad file is a 422 listing every problem, each with its line and column,
and nothing is stored. A catalog that would not fit in the till's config (64 KB) is refused the
same way. After a change, the kit's till gets the catalog of the event changed (fleet/retail/push.py);
the answer's ``till`` says whether it went out, under which config version.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from fleet import db
from fleet.api.deps import StoreDep
from fleet.api.schemas import BAD_BODY, refusals
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.db import now_ms
from fleet.retail.metrics import count
from fleet.retail.push import CatalogPush, CatalogTooBig
from fleet.retail.store import NoProduct, PriceRefused
from kits.contract import EVENT_ID_RE
from kits.retail import money
from kits.retail.catalog import Product, catalog_from_json, catalog_json, export_catalog_csv, parse_catalog_csv

router = APIRouter(prefix="/api/v1/kits/{kit_id}", tags=["retail"], dependencies=guard("ops", "crew"),
                   responses=AUTH_RESPONSES)

MAX_BODY = 2 * 1024 * 1024  # a catalog of thousands of lines is well under this
EventQ = Annotated[str | None, Query(pattern=f"^{EVENT_ID_RE}$", description="one event's catalog (e.g. FEST25)")]
SkuP = Annotated[str, Path(min_length=1, max_length=13)]
_NO_KIT = {404: "no such kit"}
_AT_ONCE = "another change to this catalog was made at the same moment: read it and try again"
_IMPORT_BODY = {"requestBody": {"required": True, "content": {
    "text/csv": {"schema": {"type": "string"}, "example": "sku,name,price,tax_rate,stock,kit,event\n"
                                                           "0400000000017,Tee,20.00,20,30,alpha,FEST25\n"},
    "application/json": {"schema": {"type": "object", "description": "the JSON form: popkit-catalog/1"}}}}}


class PriceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    price: str = Field(description='as written on a price tag: "12.50" (at most the currency\'s decimals)')
    tax_rate: str | None = Field(None, description='percent, "20" or "5.5"; the current rate when left out')
    event: str | None = Field(None, pattern=f"^{EVENT_ID_RE}$",
                              description="the event whose catalog has the SKU; needed when several do")
    from_ms: int | None = Field(None, ge=0, le=2**53, description="when it applies from (Unix ms); now by default")


def _kit_or_404(store, kit_id: str) -> None:
    with store.engine.connect() as conn:
        if conn.execute(select(db.kits.c.id).where(db.kits.c.id == kit_id)).first() is None:
            raise HTTPException(status_code=404, detail=f"no kit {kit_id!r}")


def _pusher(request: Request) -> CatalogPush:
    """The catalog's way to the kit's till (fleet/retail/push.py): its agent's retained config."""
    return CatalogPush(request.app.state.store, lambda: request.app.state.publisher)


def _invalid(problems: list[tuple[list, str]]) -> HTTPException:
    return HTTPException(status_code=422, detail=[{"loc": ["body", *loc], "msg": msg, "type": "catalog"}
                                                  for loc, msg in problems])


def _why(exc: HTTPException) -> str:
    """The outcome a refused import is counted under (fleet/retail/metrics.py)."""
    if exc.status_code != 422 or not isinstance(exc.detail, list):
        return "body"
    locs = [e["loc"] for e in exc.detail]
    if all(len(loc) > 3 and loc[3] == "kit" for loc in locs):
        return "kit"
    return "lines" if locs and locs[0][1] == "line" else "body"


def _data_lines(text: str) -> list[int]:
    """The line each product of a parsed (good) CSV starts on: parse_catalog_csv skips blank lines."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    next(reader, None)
    out, line = [], reader.line_num + 1
    for cells in reader:
        start, line = line, reader.line_num + 1
        if any(c.strip() for c in cells):
            out.append(start)
    return out


def _products(kit_id: str, body: bytes, content_type: str) -> list[Product]:
    """The products of an import body, or a 400/422 saying every problem."""
    if "json" in content_type:
        try:
            products = catalog_from_json(json.loads(body))
        except UnicodeDecodeError:
            raise HTTPException(status_code=400, detail="the body is not UTF-8") from None
        except ValueError as exc:  # bad JSON, another format, or a product pydantic refuses
            raise _invalid([(["products"], str(exc))]) from None
        wrong = [([("products"), i, "kit"], f"{p.kit!r} is not this kit {kit_id!r}")
                 for i, p in enumerate(products) if p.kit != kit_id]
        seen, dup = set(), []
        for i, p in enumerate(products):
            if (p.event, p.sku) in seen:
                dup.append((["products", i, "sku"], f"{p.sku} twice for event {p.event}"))
            seen.add((p.event, p.sku))
        if wrong or dup:
            raise _invalid(wrong + dup)
        if not products:
            raise _invalid([(["products"], "no products")])
        return products
    if content_type and not content_type.startswith(("text/csv", "text/plain")):
        raise HTTPException(status_code=415, detail="send the catalog as text/csv or as its JSON form "
                                                    "(application/json, popkit-catalog/1)")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(status_code=400, detail="the catalog is not UTF-8: save it from the spreadsheet "
                                                    "as CSV UTF-8") from None
    products, errors = parse_catalog_csv(text, from_ms=now_ms())
    if errors:
        raise _invalid([(["line", e.line] + ([e.field] if e.field else []), e.reason) for e in errors])
    wrong = [(["line", line, "kit"], f"{p.kit!r} is not this kit {kit_id!r}")
             for p, line in zip(products, _data_lines(text)) if p.kit != kit_id]
    if wrong:
        raise _invalid(wrong)
    return products


@router.post("/catalog", responses=refusals({**BAD_BODY, **_NO_KIT, 413: "the body is over 2 MiB",
                                              409: "another change to the catalog at the same moment",
                                              415: "neither CSV nor JSON",
                                              422: "the catalog is refused: every problem, each with its line "
                                                   "and column; nothing is stored"}),
             openapi_extra=_IMPORT_BODY)
async def import_catalog(kit_id: str, request: Request, store: StoreDep, user: UserDep):
    """Import the kit's catalog, all or nothing: it replaces the catalog of each event it names.
    A SKU whose price or tax rate changed gets a new price version (the old ones are kept, so orders
    keep the price they were sold at); a SKU left out is removed from the catalog, its history kept."""
    _kit_or_404(store, kit_id)
    body = await request.body()
    if len(body) > MAX_BODY:
        count("body")
        raise HTTPException(status_code=413, detail=f"the catalog is {len(body)} bytes; at most {MAX_BODY}")
    try:
        products = _products(kit_id, body, request.headers.get("content-type", "").lower())
    except HTTPException as exc:
        count(_why(exc))
        raise
    push = _pusher(request)
    try:
        push.fits(kit_id, products)
    except CatalogTooBig as exc:
        count("too_big")
        raise _invalid([(["products"], str(exc))]) from None
    try:
        r = store.retail.replace(kit_id, products, user.name)
    except IntegrityError:  # two changes to one catalog at once made the same version: the first stands
        count("at_once")
        raise HTTPException(status_code=409, detail=_AT_ONCE) from None
    count("imported")

    def keys(pairs):
        return [dict(event=e, sku=s) for e, s in pairs]

    events = sorted({p.event for p in products})
    return dict(kit=kit_id, products=len(products), events=events,
                added=keys(r.added), updated=keys(r.updated), repriced=keys(r.repriced),
                unchanged=keys(r.unchanged), removed=keys(r.removed), till=push.push(kit_id, events[-1]))


@router.get("/catalog", responses=refusals(_NO_KIT))
def get_catalog(kit_id: str, store: StoreDep, event: EventQ = None):
    """The kit's catalog (of one event, or all), every product with its whole price history: the
    JSON form ``popkit retail export`` reads."""
    _kit_or_404(store, kit_id)
    return dict(catalog_json(store.retail.catalog(kit_id, event)), kit=kit_id)


@router.get("/catalog.csv", response_class=Response, responses={
    **refusals(_NO_KIT), 200: {"content": {"text/csv": {"schema": {"type": "string"}}}}})
def export_catalog(kit_id: str, store: StoreDep, event: EventQ = None):
    """The catalog as CSV, current prices: the import's own format, so it can be edited and sent back."""
    _kit_or_404(store, kit_id)
    text = export_catalog_csv(store.retail.catalog(kit_id, event))
    name = f"catalog-{kit_id}" + (f"-{event}" if event else "") + ".csv"
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.put("/catalog/{sku}/price", responses=refusals({**BAD_BODY, 404: "no such kit, or no such SKU in its "
                                                        "catalog", 409: "the SKU is in several events' catalogs (name "
                                                        "the event), or another change at the same moment", 422: "a bad price, tax rate or instant"}))
def set_price(kit_id: str, sku: SkuP, body: PriceIn, request: Request, store: StoreDep, user: UserDep):
    """A new price version for the SKU, from ``from_ms`` (now by default); the old versions are kept."""
    _kit_or_404(store, kit_id)
    retail = store.retail
    sku = sku.upper()
    event = body.event
    if event is None:
        events = retail.events_with(kit_id, sku)
        if not events:
            raise HTTPException(status_code=404, detail=f"no product {sku} in kit {kit_id}'s catalog")
        if len(events) > 1:
            raise HTTPException(status_code=409, detail=f"{sku} is in the catalogs of events {', '.join(events)}: "
                                                        f"name the event")
        event = events[0]
    current = retail.product(kit_id, event, sku)
    if current is None:
        raise HTTPException(status_code=404, detail=f"no product {sku} in kit {kit_id}'s catalog for event {event}")
    problems = []
    try:
        price = money.parse_price(body.price, current.currency)
    except money.MoneyError as exc:
        problems.append((["price"], str(exc)))
    try:
        tax = None if body.tax_rate is None else money.parse_tax_rate(body.tax_rate)
    except money.MoneyError as exc:
        problems.append((["tax_rate"], str(exc)))
    if problems:
        count("price_refused")
        raise _invalid(problems)
    try:
        product = retail.reprice(kit_id, event, sku, price, tax, user.name, from_ms=body.from_ms)
    except IntegrityError:
        count("at_once")
        raise HTTPException(status_code=409, detail=_AT_ONCE) from None
    except NoProduct as exc:
        raise HTTPException(status_code=404, detail=exc.args[0]) from None
    except PriceRefused as exc:
        count("price_refused")
        raise _invalid([(["from_ms"], str(exc))]) from None
    count("repriced")
    return dict(product.model_dump(mode="json"), till=_pusher(request).push(kit_id, event))
