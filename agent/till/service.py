"""The till: carts, payment, refunds and stock on the kit's agent, with or without an uplink.

:class:`Till` is the one interface: the till page (agent/till/web.py), the scanners in till mode
(agent/till/scans.py), the agent's control channel and the tests use only it. It is thread-safe:
one lock around the whole till, because a sale is a few quick SQLite writes.

Rules that shape it (issue 19; docs/retail.md "The till"):

* **On disk first.** ``pay()`` commits the order (lines, stock moves, the station's number, the
  cart emptied) in one durable transaction, *then* queues the receipt in the kit's print queue and
  the ``order`` event in the agent's outbox. A sale committed but not queued (the power went in
  between) is queued at the next :meth:`Till.start`; the fleet keeps one order per id, so a
  second copy costs nothing. A SIGKILL at any moment loses no order that ``pay()`` returned.
* **Never edited.** A refund or a void is a new record pointing at its order. A refund cannot
  return more of a SKU than the order sold, counting earlier refunds; the last refund of a line
  returns exactly what is left of its money, so refunds never add up to more than was paid.
* **The price of the moment.** Each line takes the catalog's price version in force at the sale
  (``price_at``) and records it, so the fleet knows which price it was sold at. With the kit's
  clock unset the order says ``clock: "unset"``, takes the catalog's latest price, and keeps its
  place by the station's running number ``n``.
* **Stock is counted, not enforced.** Selling past zero is allowed (stall counts are often wrong)
  and the order names the SKUs it took below zero (``oversold``).
* **The catalog**: the fleet's (the agent's retained config, agent/till/intake.py) or the crew's
  CSV upload on the till page. A fleet version is applied once: the same retained version again
  (every reconnect) changes nothing, so it never undoes a later upload; a newer one wins. An upload
  keeps each product's price history and adds a version where its price changed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from agent.till import receipts
from agent.till.errors import (CatalogRefused, EmptyCart, NoCatalog, NotInCatalog, RefundTooLarge, TillError,
                               UnknownOrder)
from agent.till.store import SaleRow, TillStore
from agent.till.uplink import Uplink
from kits.contract import (MAX_DEVICE_PAYLOAD, MAX_ORDER_LINES, PAYMENTS, Event, Order, OrderLine, Refund, RefundLine,
                           encode, is_valid_id)
from kits.retail import money
from kits.retail.catalog import Product, catalog_from_json, catalog_json, price_at, reprice
from kits.retail.sku import sku_problem

log = logging.getLogger("popkit.agent.till")

SOURCES = ("fleet", "upload")
# The kit's clock: (ms since the epoch, True when it is unset: no trusted time). agent/kitclock.py.
Clock = Callable[[], tuple[int, bool]]


def system_clock() -> tuple[int, bool]:
    return int(time.time() * 1000), False


@dataclass(frozen=True)
class AddResult:
    """A code added to a station's cart, or why not (``reason``: unknown_sku | bad_code | no_till | full).
    ``qty``: that SKU's quantity on the cart now."""

    ok: bool
    sku: str | None = None
    qty: int | None = None
    reason: str | None = None


def normalise_code(code: str) -> str:
    """What a scan module or a keyboard gives, as a SKU is printed: no spaces or line ends, upper case."""
    return code.strip().upper() if isinstance(code, str) else ""


class Till:
    def __init__(self, path: str | Path, kit: str, kit_name: str = "", uplink: Uplink | None = None,
                 clock: Clock | None = None, printer=None):
        """``printer``: the kit's PrintQueue for receipts (agent/printing.py), or None (none yet:
        :meth:`attach_printer`). ``uplink``: where sales go to the fleet (agent/till/uplink.py)."""
        self.kit, self.kit_name = kit, kit_name or kit
        self.uplink, self.clock, self.printer = uplink, clock or system_clock, printer
        self.store = TillStore(path)
        self.counts: Counter[str] = Counter()  # catalog_refused, receipt_failed, send_failed, ...
        self._lock = threading.RLock()
        self._products: dict[str, Product] = {}
        self._event: str | None = None
        self._currency = "EUR"
        self._fleet_version: int | None = None
        self._catalog_source: str | None = None
        self._catalog_version: int | None = None
        saved = self.store.catalog()
        if saved is not None:
            self._use(catalog_from_json(saved.doc), saved.doc.get("fleet_version"), saved.source, saved.version)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Till":
        """Queue what a stop left unqueued: events not in the outbox, receipts not in the print queue."""
        with self._lock:
            for sale in self.store.unqueued():
                self._send(sale.id, sale.kind, sale.body)
            if self.printer is not None:
                self._print_missing()
        return self

    def attach_printer(self, queue) -> None:
        """The kit's print queue is up: receipts go to it, starting with any that waited for it."""
        with self._lock:
            self.printer = queue
            self._print_missing()

    def close(self) -> None:
        with self._lock:
            self.store.close()

    # ------------------------------------------------------------ catalog

    def catalog(self) -> list[Product]:
        with self._lock:
            return list(self._products.values())

    def catalog_info(self) -> dict:
        """Where the catalog came from: {"source", "version", "event", "currency", "products"}, and
        "fleet_version": the last fleet version applied (a crew upload may have replaced it since)."""
        with self._lock:
            return {"source": self._catalog_source, "version": self._catalog_version, "event": self._event,
                    "currency": self._currency if self._products else None, "products": len(self._products),
                    "fleet_version": self._fleet_version}

    def load_catalog(self, products: list[Product], source: str, version: int | None) -> bool:
        """Take a whole catalog (``source``: "fleet" or "upload"). True when it replaced the one in
        use; False for a fleet version already applied (the retained config again). A catalog that
        cannot be sold from raises CatalogRefused and the old one stays."""
        if source not in SOURCES:
            raise CatalogRefused(f"catalog source must be one of {', '.join(SOURCES)}, not {source!r}")
        with self._lock:
            if source == "fleet" and version is not None and self._fleet_version is not None \
                    and version <= self._fleet_version:
                return False
            self._check(products)
            now, _unset = self.clock()
            if source == "upload":
                products = [self._keep_history(p, now) for p in products]
            fleet_version = version if source == "fleet" else self._fleet_version
            doc = {**catalog_json(products), "fleet_version": fleet_version}
            with self.store.tx():
                self.store.save_catalog(source, version, now, doc)
            self._use(products, fleet_version, source, version)
        log.info("till: catalog from %s%s: %d products for %s", source,
                 f" version {version}" if version is not None else "", len(products), self._event)
        return True

    def _check(self, products: list[Product]) -> None:
        if not products:
            raise CatalogRefused("the catalog has no products")
        kits = {p.kit for p in products} - {self.kit}
        if kits:
            raise CatalogRefused(f"the catalog has products of kit {sorted(kits)[0]!r}; this till is kit {self.kit!r}")
        events = sorted({p.event for p in products})
        if len(events) > 1:
            raise CatalogRefused(f"the catalog is for {len(events)} events ({', '.join(events)}); a till sells for one")
        currencies = sorted({p.currency for p in products})
        if len(currencies) > 1:
            raise CatalogRefused(f"the catalog has prices in {', '.join(currencies)}; a till takes one currency")
        skus = [p.sku for p in products]
        if len(set(skus)) != len(skus):
            raise CatalogRefused("the catalog has a SKU twice")

    def _keep_history(self, p: Product, now: int) -> Product:
        """An uploaded product keeps the price versions the till knows, plus one if its price changed,
        so an order's (sku, price_version) means the same price here and at the fleet."""
        old = self._products.get(p.sku)
        if old is None:
            return p
        kept = old.model_copy(update={"name": p.name, "variants": p.variants, "stock": p.stock})
        if (old.price, old.tax_bp) == (p.price, p.tax_bp):
            return kept
        return reprice(kept, p.price, p.tax_bp, max(now, old.prices[-1].from_ms))

    def _use(self, products: list[Product], fleet_version: int | None, source: str, version: int | None) -> None:
        self._products = {p.sku: p for p in products}
        self._event = products[0].event if products else None
        self._currency = products[0].currency if products else "EUR"
        self._fleet_version = fleet_version
        self._catalog_source, self._catalog_version = source, version

    # ------------------------------------------------------------ carts

    def cart(self, station: str = "main") -> dict:
        """The open order of ``station``: lines at today's prices and the totals."""
        _station(station)
        with self._lock:
            now, unset = self.clock()
            lines, totals = [], []
            for sku, qty in self.store.cart(station):
                p = self._products.get(sku)
                if p is None:  # the catalog changed under the cart: shown, refused at pay
                    lines.append({"sku": sku, "name": None, "variant": "", "qty": qty, "unit": None, "gross": None})
                    continue
                pv = _price(p, now, unset)
                lt = money.line_total(pv.price, qty, pv.tax_bp)
                totals.append(lt)
                lines.append({"sku": sku, "name": p.name, "variant": p.variant_text(), "qty": qty, "unit": pv.price,
                              "gross": lt.gross})
            total = money.order_total(totals)
            return {"station": station, "lines": lines, "net": total.net, "tax": total.tax, "gross": total.gross,
                    "currency": self._currency}

    def add(self, station: str, code: str, qty: int = 1) -> AddResult:
        """A scanned or typed code onto the station's cart (``qty`` more of it)."""
        _station(station)
        _qty(qty, low=1)
        sku = normalise_code(code)
        with self._lock:
            if not self._products:
                return AddResult(False, None, None, "no_till")
            if not sku or len(sku) > 13 or sku_problem(sku):
                return AddResult(False, None, None, "bad_code")
            if sku not in self._products:
                return AddResult(False, sku, None, "unknown_sku")
            cart = dict(self.store.cart(station))
            have = cart.get(sku, 0)
            if have + qty > money.MAX_QTY or (not have and len(cart) >= MAX_ORDER_LINES):
                return AddResult(False, sku, have or None, "full")
            with self.store.tx():
                self.store.set_cart_qty(station, sku, have + qty)
            return AddResult(True, sku, have + qty, None)

    def set_qty(self, station: str, sku: str, qty: int) -> None:
        """The SKU's quantity on the cart (0 removes the line)."""
        _station(station)
        _qty(qty, low=0)
        with self._lock:
            cart = dict(self.store.cart(station))
            if qty and sku not in cart:
                if sku not in self._products:
                    raise NotInCatalog(f"{sku} is not in the catalog")
                if len(cart) >= MAX_ORDER_LINES:
                    raise TillError(f"an order takes at most {MAX_ORDER_LINES} lines: pay this one first")
            with self.store.tx():
                self.store.set_cart_qty(station, sku, qty)

    def clear(self, station: str) -> None:
        _station(station)
        with self._lock, self.store.tx():
            self.store.clear_cart(station)

    # ------------------------------------------------------------ selling

    def pay(self, station: str, payment: str, by: str) -> Order:
        """The station's cart paid: the order on disk, stock taken, the receipt and the event queued."""
        _station(station)
        if payment not in PAYMENTS:
            raise TillError(f"payment must be one of {', '.join(PAYMENTS)}, not {payment!r}")
        with self._lock:
            cart = self.store.cart(station)
            if not cart:
                last = self.store.last_order(station)
                raise EmptyCart("the cart is empty" + (
                    f" (the last order, #{last.n} {receipts.short_id(last.id)}, is paid)" if last else ""))
            if self._event is None:
                raise NoCatalog("no catalog at this till yet")
            ts, unset = self.clock()
            lines, oversold = [], []
            for sku, qty in cart:
                p = self._products.get(sku)
                if p is None:
                    raise NotInCatalog(f"{sku} is no longer in the catalog: take it off the order")
                pv = _price(p, ts, unset)
                lt = money.line_total(pv.price, qty, pv.tax_bp)
                lines.append(OrderLine(sku=sku, qty=qty, unit=pv.price, price_version=pv.version, tax_bp=pv.tax_bp,
                                       net=lt.net, tax=lt.tax, gross=lt.gross))
                sold, returned = self.store.stock_of(self._event, sku)
                if p.stock - sold + returned - qty < 0:
                    oversold.append(sku)
            total = money.order_total([money.LineTotal(x.net, x.tax, x.gross) for x in lines])
            try:
                with self.store.tx():
                    order = Order(id=str(uuid.uuid4()), kit=self.kit, event=self._event, till=station,
                                  n=self.store.next_n(station), ts=ts, clock="unset" if unset else None,
                                  currency=self._currency, net=total.net, tax=total.tax, gross=total.gross, by=by,
                                  lines=lines, payment=payment, oversold=oversold)
                    body = order.model_dump(mode="json", exclude_none=True)
                    _fits_one_message("order", body)
                    self.store.add_sale("order", body)
                    for x in lines:
                        self.store.add_move(order.id, self._event, x.sku, sold=x.qty)
                    self.store.clear_cart(station)
            except ValidationError as exc:
                raise TillError(f"the order cannot be made: {_first_error(exc)}") from None
            self._print(order.id, "order", body)
            self._send(order.id, "order", body)
        if oversold:
            log.info("till: order %s sold %s past zero stock", order.id, ", ".join(oversold))
        return order

    def refund(self, order_id: str, lines: list[tuple[str, int]] | None, reason: str, by: str,
               kind: str = "refund", restock: bool = True, station: str | None = None) -> Refund:
        """Money (and, with ``restock``, stock) back for ``lines`` of an order (None: all that is left);
        ``kind`` "void": the whole order cancelled, only while nothing of it was refunded."""
        if kind not in ("refund", "void"):
            raise TillError(f"kind must be refund or void, not {kind!r}")
        with self._lock:
            sale = self.store.sale(order_id)
            if sale is None or sale.kind != "order":
                raise UnknownOrder(f"no order {order_id!r} at this till")
            order = sale.body
            by_sku = {x["sku"]: x for x in order["lines"]}
            done = self._refunded(order_id)
            if kind == "void":
                if done:
                    raise RefundTooLarge("part of this order was refunded already: refund what is left instead of a void")
                if lines is not None and _merged(lines) != {s: x["qty"] for s, x in by_sku.items()}:
                    raise TillError("a void cancels the whole order: give no lines")
            want = self._refund_lines(order, by_sku, done, lines)
            ts, unset = self.clock()
            station = station or sale.station
            _station(station)
            out = [self._refund_line(by_sku[sku], qty, done.get(sku)) for sku, qty in want.items()]
            try:
                with self.store.tx():
                    refund = Refund(id=str(uuid.uuid4()), kit=self.kit, event=order["event"], till=station,
                                    n=self.store.next_n(station), ts=ts, clock="unset" if unset else None,
                                    currency=order["currency"], net=sum(x.net for x in out),
                                    tax=sum(x.tax for x in out), gross=sum(x.gross for x in out), by=by,
                                    order=order_id, kind=kind, lines=out, restock=restock, reason=reason)
                    body = refund.model_dump(mode="json", exclude_none=True)
                    _fits_one_message(kind, body)
                    self.store.add_sale(kind, body, order_id=order_id)
                    for x in out:
                        self.store.add_move(refund.id, order["event"], x.sku,
                                            **({"returned": x.qty} if restock else {"kept": x.qty}))
            except ValidationError as exc:
                raise TillError(f"the refund cannot be made: {_first_error(exc)}") from None
            self._print(refund.id, kind, body)
            self._send(refund.id, kind, body)
        return refund

    def _refunded(self, order_id: str) -> dict[str, tuple[int, int, int, int]]:
        """sku -> (qty, net, tax, gross) already returned by the order's refunds."""
        done: dict[str, tuple[int, int, int, int]] = {}
        for r in self.store.refunds_of(order_id):
            for x in r.body["lines"]:
                q, n, t, g = done.get(x["sku"], (0, 0, 0, 0))
                done[x["sku"]] = (q + x["qty"], n + x["net"], t + x["tax"], g + x["gross"])
        return done

    @staticmethod
    def _refund_lines(order: dict, by_sku: dict, done: dict, lines: list[tuple[str, int]] | None) -> dict[str, int]:
        left = {s: x["qty"] - done.get(s, (0,))[0] for s, x in by_sku.items()}
        if lines is None:
            want = {s: q for s, q in left.items() if q > 0}
            if not want:
                raise RefundTooLarge("everything on this order was refunded already")
            return want
        want = _merged(lines)
        if not want:
            raise TillError("no lines to refund")
        for sku, qty in want.items():
            if sku not in by_sku:
                raise TillError(f"order #{order['n']} has no {sku}")
            if qty > left[sku]:
                raise RefundTooLarge(f"{sku}: {qty} to return, but the order sold {by_sku[sku]['qty']} and "
                                     f"{done.get(sku, (0,))[0]} went back already: at most {left[sku]}")
        return want

    @staticmethod
    def _refund_line(line: dict, qty: int, done: tuple[int, int, int, int] | None) -> RefundLine:
        q0, n0, t0, g0 = done or (0, 0, 0, 0)
        if q0 + qty == line["qty"]:  # the last of the line: exactly what is left of its money
            return RefundLine(sku=line["sku"], qty=qty, net=line["net"] - n0, tax=line["tax"] - t0,
                              gross=line["gross"] - g0)
        lt = money.line_total(line["unit"], qty, line["tax_bp"])
        return RefundLine(sku=line["sku"], qty=qty, net=lt.net, tax=lt.tax, gross=lt.gross)

    # ------------------------------------------------------------ looking back

    def orders(self, limit: int = 50, before_n: int | None = None, station: str | None = None) -> list[dict]:
        """The latest orders first (``before_n``: older than that station number, for paging)."""
        with self._lock:
            return [self._summary(s) for s in self.store.orders(max(1, min(limit, 500)), before_n, station)]

    def order(self, order_id: str) -> dict:
        """One order with its refunds, its receipt's print state and whether the fleet has it."""
        with self._lock:
            sale = self.store.sale(order_id)
            if sale is None or sale.kind != "order":
                raise UnknownOrder(f"no order {order_id!r} at this till")
            return {**self._summary(sale),
                    "refunds": [{**r.body, "uploaded": r.uploaded, "receipt": self._receipt_state(r)}
                                for r in self.store.refunds_of(order_id)]}

    def _summary(self, sale: SaleRow) -> dict:
        refunds = self.store.refunds_of(sale.id)
        return {**sale.body, "uploaded": sale.uploaded, "receipt": self._receipt_state(sale),
                "refunded": sum(r.body["gross"] for r in refunds), "voided": any(r.kind == "void" for r in refunds)}

    def _receipt_state(self, sale: SaleRow) -> dict | None:
        if sale.receipt_job is None:
            return None
        rec = self.printer.job(sale.receipt_job) if self.printer is not None else None
        return {"job": sale.receipt_job, "state": rec.state if rec else "unknown", "error": rec.error if rec else None}

    def stock(self) -> list[dict]:
        """Per SKU of the catalog's event: carried, sold, refunded, left (may be negative), and
        ``oversold``: how many were sold past zero."""
        with self._lock:
            if self._event is None:
                return []
            moves = self.store.stock_moves(self._event)
            out = []
            for sku in [*self._products, *sorted(set(moves) - set(self._products))]:
                p = self._products.get(sku)
                sold, returned, kept = moves.get(sku, (0, 0, 0))
                carried = p.stock if p else 0
                left = carried - sold + returned
                out.append({"sku": sku, "name": p.name if p else None, "carried": carried, "sold": sold,
                            "refunded": returned + kept, "left": left, "oversold": max(0, -left)})
            return out

    def pending(self) -> dict:
        """Orders and refunds the fleet has not receipted yet, and the oldest one's time (ms)."""
        with self._lock:
            rows = self.store.not_uploaded()
            queued = [(b, s) for _i, b, s, _t in rows if b is not None]
            still = self.uplink.waiting(queued) if self.uplink is not None and queued else set(queued)
            done = [i for i, b, s, _t in rows if b is not None and (b, s) not in still]
            if done:
                with self.store.tx():
                    self.store.set_uploaded(done)
            left = [t for i, b, s, t in rows if b is None or (b, s) in still]
            return {"orders": len(left), "oldest_ms": min(left) if left else None}

    # ------------------------------------------------------------ out to the printer and the fleet

    def _names(self) -> dict[str, str]:
        return {s: f"{p.name} {p.variant_text()}".strip() for s, p in self._products.items()}

    def _print(self, sale_id: str, kind: str, body: dict) -> None:
        if self.printer is None:
            return
        try:
            if kind == "order":
                job = receipts.order_receipt(body, self.kit_name, self._names())
            else:
                order = self.store.sale(body["order"])
                job = receipts.refund_receipt(body, order.body if order else {"n": "?", "lines": []},
                                              self.kit_name, self._names())
            job_id = self.printer.enqueue(job)
            with self.store.tx():
                self.store.set_receipt_job(sale_id, job_id)
        except Exception:  # noqa: BLE001 - the sale stands whatever the printer's queue does
            self.counts["receipt_failed"] += 1
            log.exception("till: the receipt of %s could not be queued", sale_id)

    def _print_missing(self) -> None:
        for sale in self.store.without_receipt():
            self._print(sale.id, sale.kind, sale.body)

    def _send(self, sale_id: str, kind: str, body: dict) -> None:
        if self.uplink is None:
            return  # queued by start() once there is one
        try:
            boot, seq = self.uplink.send("order" if kind == "order" else "refund", body, body["ts"])
            with self.store.tx():
                self.store.set_queued(sale_id, boot, seq)
        except Exception:  # noqa: BLE001 - committed already: queued again at the next start
            self.counts["send_failed"] += 1
            log.exception("till: %s could not be queued for the fleet; it will be at the next start", sale_id)


# The longest envelope the link can put around a sale: a 32-hex boot, the largest seq, a 13-digit ts.
_ENVELOPE = len(encode(Event(boot="f" * 32, seq=2**53 - 1, ts=2**53 - 1, kind="x" * len("refund"), data={}))) - 2


def _fits_one_message(kind: str, body: dict) -> None:
    """Refused before it is written: a sale the fleet would refuse as oversize would never upload."""
    size = _ENVELOPE + len(json.dumps(body, separators=(",", ":")))
    if size > MAX_DEVICE_PAYLOAD:
        raise TillError(f"this {kind} is too big to upload as one message ({size} > {MAX_DEVICE_PAYLOAD} bytes): "
                        "take some lines off and sell them as a second order")


def _price(p: Product, ts: int, unset: bool):
    return p.prices[-1] if unset else price_at(p, ts)


def _station(station: object) -> None:
    if not isinstance(station, str) or not is_valid_id(station):
        raise TillError(f"till station {station!r}: lowercase letters, digits, '-' and '_' (e.g. main)")


def _qty(qty: object, low: int) -> None:
    if isinstance(qty, bool) or not isinstance(qty, int) or not low <= qty <= money.MAX_QTY:
        raise TillError(f"quantity must be a whole number {low}..{money.MAX_QTY}, not {qty!r}")


def _merged(lines: list[tuple[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for sku, qty in lines:
        _qty(qty, low=1)
        out[sku] = out.get(sku, 0) + qty
    return out


def _first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False)[0]
    return f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
