"""The till page's JSON API under ``/till/api``, one router per resource.

Every route but signing in needs a crew session (agent/till/web_auth.py). The routes only
translate: the till itself is ``agent.till.service.Till`` (thread-safe), called from FastAPI's
thread pool because its writes wait for the disk (SQLite, FULL sync). Money stays integer minor
units; every amount also comes as text (``gross_text``: "12.50") formatted by kits.retail.money,
so the page does no arithmetic on money.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from agent.till import web_auth
from agent.till.errors import CatalogRefused
from agent.till.logins import LoginError
from kits.contract import ID_PATTERN, TILL_CODE_MAX, Payment
from kits.retail import catalog as catalogs, money

log = logging.getLogger("popkit.agent.till.web")

MONEY_KEYS = ("net", "tax", "gross", "unit", "price", "refunded")
MAX_REFUND_REASON = 120


# ---------------------------------------------------------------- what every route shares

def _state(request: Request):
    return request.app.state


def crew_login(request: Request) -> str:
    """The signed-in crew member's login, or 401."""
    st = _state(request)
    session = st.sessions.get(request.cookies.get(web_auth.COOKIE))
    if session is None or not st.logins.exists(session.login):
        st.counts["unauthenticated"] += 1
        raise HTTPException(401, "sign in first: this page needs a kit login (popkit till login add on the Pi)")
    return session.login


Crew = Annotated[str, Depends(crew_login)]
Station = Annotated[str, Query(pattern=ID_PATTERN, max_length=63, description="the till station (default main)")]


def _till(request: Request):
    return _state(request).till


def with_texts(obj: Any, currency: str | None = None) -> Any:
    """A copy of ``obj`` where each money amount ``k`` also has ``k_text`` (kits.retail.money)."""
    if isinstance(obj, list):
        return [with_texts(x, currency) for x in obj]
    if not isinstance(obj, dict):
        return obj
    cur = obj.get("currency") if isinstance(obj.get("currency"), str) else currency
    out = {}
    for k, v in obj.items():
        out[k] = with_texts(v, cur)
        if k in MONEY_KEYS and isinstance(v, int) and not isinstance(v, bool) and cur:
            try:
                out[f"{k}_text"] = money.format_amount(v, cur)
            except money.MoneyError:
                pass  # a currency the till does not format: the number stands alone
    return out


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is told, not ignored


# ---------------------------------------------------------------- session

session = APIRouter(prefix="/session", tags=["session"])


class SignIn(_Body):
    name: str = Field(min_length=1, max_length=32)
    passphrase: str = Field(min_length=1, max_length=128)


@session.post("")
async def sign_in(body: SignIn, request: Request, response: Response) -> dict:
    """Sign in with a kit login; sets the session cookie."""
    st = _state(request)
    address = request.client.host if request.client else "-"
    wait, whole_phone = st.throttle.wait_s(body.name, address)
    if wait > 0:
        st.counts["signin_throttled"] += 1
        who = "from this phone" if whole_phone else f"for {body.name!r}"
        raise HTTPException(429, f"too many wrong passphrases {who}: try again in {int(wait) + 1} s",
                            headers={"Retry-After": str(int(wait) + 1)})
    try:
        ok = await asyncio.to_thread(st.logins.check, body.name, body.passphrase)
    except LoginError as exc:  # the file was damaged or made unreadable by hand: say so, sign nobody in
        log.error("till page: %s", exc)
        st.counts["logins_unreadable"] += 1
        raise HTTPException(503, f"the kit's till logins cannot be read: {exc}") from None
    if not ok:
        st.throttle.failed(body.name, address)
        st.counts["signin_failed"] += 1
        await asyncio.sleep(st.fail_delay_s)  # slows guessing; other requests go on meanwhile
        raise HTTPException(401, "wrong login name or passphrase")
    st.throttle.succeeded(body.name, address)
    token, s = st.sessions.open(body.name)
    response.set_cookie(web_auth.COOKIE, token, max_age=int(st.sessions.ttl_s), path=web_auth.COOKIE_PATH,
                        httponly=True, samesite="strict", secure=st.secure_cookie)
    return {"name": s.login, "expires_ms": int(s.expires * 1000)}


@session.get("")
def read_session(request: Request, login: Crew) -> dict:
    """Who is signed in on this phone."""
    s = _state(request).sessions.get(request.cookies.get(web_auth.COOKIE))
    return {"name": login, "expires_ms": int(s.expires * 1000) if s else None}


@session.delete("", status_code=204)
def sign_out(request: Request, response: Response) -> None:
    """Sign out (nothing of the till is lost: orders are on disk)."""
    _state(request).sessions.close(request.cookies.get(web_auth.COOKIE))
    response.delete_cookie(web_auth.COOKIE, path=web_auth.COOKIE_PATH, httponly=True, samesite="strict")


# ---------------------------------------------------------------- catalog

catalog = APIRouter(prefix="/catalog", tags=["catalog"])


def _product(p) -> dict:
    return with_texts({"sku": p.sku, "name": p.name, "variant": p.variant_text(), "price": p.price,
                       "tax_bp": p.tax_bp, "stock": p.stock, "currency": p.currency})


@catalog.get("")
def list_catalog(request: Request, _login: Crew) -> dict:
    """The products this till sells, and where its catalog came from (fleet version or upload)."""
    till = _till(request)
    return {"products": [_product(p) for p in till.catalog()], "info": till.catalog_info()}


class CatalogUpload(_Body):
    csv: str = Field(min_length=1, max_length=2_000_000, description="the catalog CSV (docs/retail.md)")


@catalog.put("")
def upload_catalog(body: CatalogUpload, request: Request, login: Crew) -> dict:
    """Load a catalog CSV at the till (no uplink needed); all or nothing, each bad line named."""
    products, errors = catalogs.parse_catalog_csv(body.csv)
    if errors:
        _state(request).counts["catalog_refused"] += 1
        raise HTTPException(422, {"message": f"{len(errors)} problem(s) in the CSV; nothing loaded",
                                  "problems": [str(e) for e in errors]})
    try:
        _till(request).load_catalog(products, source="upload", version=None)
        log.info("till page: catalog of %d products uploaded by %s", len(products), login)
    except CatalogRefused as exc:
        _state(request).counts["catalog_refused"] += 1
        raise HTTPException(422, str(exc)) from None
    return {"products": len(products)}


# ---------------------------------------------------------------- cart

cart = APIRouter(prefix="/cart", tags=["cart"])

_ADD_REFUSED = {
    "unknown_sku": (404, "no product with code {code!r} in this till's catalog"),
    "bad_code": (422, "{code!r} is not a product code (a SKU or the number under its barcode)"),
    "no_till": (409, "no catalog at this till yet: nothing can be sold until one arrives or is uploaded"),
    "full": (409, "the order is full: pay it, or remove a line, before adding another product"),
}


class AddLine(_Body):
    code: str | None = Field(default=None, min_length=1, max_length=TILL_CODE_MAX,
                             description="what was typed or scanned")
    sku: str | None = Field(default=None, min_length=1, max_length=13, description="a product tapped on the page")
    qty: int = Field(default=1, ge=1, le=money.MAX_QTY)

    @model_validator(mode="after")
    def _one_of(self) -> AddLine:
        if (self.code is None) == (self.sku is None):
            raise ValueError("give either code (typed or scanned) or sku (tapped), not both or neither")
        return self


class SetQty(_Body):
    qty: int = Field(ge=0, le=money.MAX_QTY, description="0 removes the line")


def _cart(request: Request, station: str) -> dict:
    return with_texts(_till(request).cart(station))


@cart.get("")
def read_cart(request: Request, _login: Crew, station: Station = "main") -> dict:
    """The station's open order."""
    return _cart(request, station)


@cart.post("/lines")
def add_line(body: AddLine, request: Request, _login: Crew, station: Station = "main") -> dict:
    """Add a product by code or SKU; the line's quantity grows when it is there already."""
    code = (body.code if body.code is not None else body.sku or "").strip()
    result = _till(request).add(station, code, body.qty)
    if not result.ok:
        status, text = _ADD_REFUSED.get(result.reason or "", (409, "{code!r} was not added: {reason}"))
        _state(request).counts[f"add_{result.reason}"] += 1
        raise HTTPException(status, {"message": text.format(code=code, reason=result.reason),
                                     "reason": result.reason})
    return {"added": {"sku": result.sku, "qty": result.qty}, "cart": _cart(request, station)}


@cart.put("/lines/{sku}")
def set_line_qty(sku: str, body: SetQty, request: Request, _login: Crew, station: Station = "main") -> dict:
    """Set a line's quantity (0 removes it)."""
    _till(request).set_qty(station, sku, body.qty)
    return _cart(request, station)


@cart.delete("")
def clear_cart(request: Request, _login: Crew, station: Station = "main") -> dict:
    """Empty the station's open order."""
    _till(request).clear(station)
    return _cart(request, station)


# ---------------------------------------------------------------- pay, orders, refunds

orders = APIRouter(tags=["orders"])


class Pay(_Body):
    payment: Payment = Field(description="cash, card_terminal (an external terminal) or other")


class RefundLineIn(_Body):
    sku: str = Field(min_length=1, max_length=13)
    qty: int = Field(ge=1, le=money.MAX_QTY)


class RefundBody(_Body):
    lines: list[RefundLineIn] | None = Field(default=None, min_length=1, max_length=24,
                                             description="what comes back; none: everything still unrefunded")
    reason: str = Field(default="", max_length=MAX_REFUND_REASON)
    restock: bool = True


class VoidBody(_Body):
    reason: str = Field(default="", max_length=MAX_REFUND_REASON)
    restock: bool = True


def _dump(record: Any) -> dict:
    return record.model_dump(mode="json") if hasattr(record, "model_dump") else dict(record)


@orders.post("/pay")
def pay(body: Pay, request: Request, login: Crew, station: Station = "main") -> dict:
    """Take payment for the open order: it is on disk, its receipt queued and its upload queued."""
    till = _till(request)
    order = _dump(till.pay(station, body.payment, login))
    return {"order": with_texts(_one_order(till, order["id"]) or order), "cart": _cart(request, station)}


def _one_order(till, order_id: str) -> dict | None:
    return _dump(till.order(order_id))


@orders.get("/orders")
def list_orders(request: Request, _login: Crew, limit: Annotated[int, Query(ge=1, le=200)] = 50,
                before_n: Annotated[int | None, Query(ge=1)] = None) -> dict:
    """Recent orders, newest first."""
    return {"orders": with_texts(_till(request).orders(limit=limit, before_n=before_n))}


@orders.get("/orders/{order_id}")
def read_order(order_id: str, request: Request, _login: Crew) -> dict:
    """One order with its refunds and its receipt's print state."""
    return with_texts(_one_order(_till(request), order_id))


@orders.post("/orders/{order_id}/refunds")
def refund_order(order_id: str, body: RefundBody, request: Request, login: Crew) -> dict:
    """Money back for some lines (or all that is left); a new record, the order is never edited."""
    till = _till(request)
    lines = [(x.sku, x.qty) for x in body.lines] if body.lines else None
    refund = till.refund(order_id, lines, body.reason, login, kind="refund", restock=body.restock)
    return {"refund": with_texts(_dump(refund)), "order": with_texts(_one_order(till, order_id))}


@orders.post("/orders/{order_id}/void")
def void_order(order_id: str, body: VoidBody, request: Request, login: Crew) -> dict:
    """Cancel the whole order at the till (every line, in full)."""
    till = _till(request)
    refund = till.refund(order_id, None, body.reason, login, kind="void", restock=body.restock)
    return {"refund": with_texts(_dump(refund)), "order": with_texts(_one_order(till, order_id))}


# ---------------------------------------------------------------- stock and uploads

stock = APIRouter(tags=["stock"])


@stock.get("/stock")
def read_stock(request: Request, _login: Crew) -> dict:
    """Per SKU: carried, sold, refunded, left (below zero: oversold)."""
    return {"stock": _till(request).stock()}


@stock.get("/pending")
def read_pending(request: Request, _login: Crew) -> dict:
    """Orders and refunds the fleet has not confirmed yet (the page's offline banner)."""
    return _till(request).pending()


@stock.get("/counts")
def read_counts(request: Request, _login: Crew) -> dict:
    """What the page refused since the agent started (bad requests, failed sign-ins), by kind."""
    return dict(_state(request).counts)


ROUTERS = (session, catalog, cart, orders, stock)
