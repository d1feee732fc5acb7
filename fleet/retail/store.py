"""Catalogs in the database (fleet/retail/tables.py): read as kits/retail Products, imported all or
nothing, repriced by adding a version.

An import is one transaction per call, whatever it holds: every product of the file lands, or none.
For each (kit, event) the file names, it replaces that catalog: products in the file are written
(name, variants, stock as given), a product whose price or tax rate differs from its current version
gets a new version from the import's instant (the old ones stay), and products the file leaves out
are marked removed, never deleted, so orders already sold at their prices still find them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, and_, select, update

from fleet.db import now_ms
from fleet.retail import tables as t
from fleet.retail.orders import OrderStore
from fleet.retail.sales import SalesViews
from kits.retail.catalog import PriceVersion, Product

P, V = t.retail_products.c, t.retail_prices.c


class NoProduct(KeyError):
    """No such SKU in the kit's catalog (for that event)."""


class PriceRefused(ValueError):
    """The new price cannot apply from the instant given (it starts before the current version)."""


@dataclass
class ImportResult:
    """What an import changed, per SKU: each list names (event, sku)."""

    added: list[tuple[str, str]] = field(default_factory=list)
    updated: list[tuple[str, str]] = field(default_factory=list)  # name, variants or stock changed
    repriced: list[tuple[str, str]] = field(default_factory=list)  # a new price version
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)


class RetailStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.orders = OrderStore(engine)  # the tills' orders and refunds, recorded at ingest
        self.sales = SalesViews(engine)  # sales and stock added up from them

    # ------------------------------------------------------------ reads

    def catalog(self, kit: str, event: str | None = None, removed: bool = False) -> list[Product]:
        """The kit's products (of ``event``, else of every event), by event then SKU, with every
        price version; removed products only when asked."""
        where = [P.kit_id == kit] + ([P.event_id == event] if event else []) + ([] if removed else
                                                                               [P.removed_ms.is_(None)])
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.retail_products).where(and_(*where)).order_by(P.event_id, P.sku)).all()
            prices = conn.execute(select(t.retail_prices).where(and_(
                V.kit_id == kit, *([V.event_id == event] if event else [])))
                .order_by(V.event_id, V.sku, V.version)).all()
        history: dict[tuple[str, str], list[PriceVersion]] = {}
        for v in prices:
            history.setdefault((v.event_id, v.sku), []).append(
                PriceVersion(version=v.version, price=v.price, tax_bp=v.tax_bp, from_ms=v.from_ms))
        return [Product(sku=r.sku, name=r.name, currency=r.currency, variants=r.variants or {}, stock=r.stock,
                        kit=r.kit_id, event=r.event_id, prices=tuple(history[(r.event_id, r.sku)])) for r in rows]

    def product(self, kit: str, event: str, sku: str) -> Product | None:
        found = [p for p in self.catalog(kit, event, removed=True) if p.sku == sku]
        return found[0] if found else None

    def events_with(self, kit: str, sku: str) -> list[str]:
        """The events of the kit whose current catalog has ``sku``."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(P.event_id).where(and_(
                P.kit_id == kit, P.sku == sku, P.removed_ms.is_(None))).order_by(P.event_id)).scalars())

    # ------------------------------------------------------------ changes

    def replace(self, kit: str, products: list[Product], by: str, now: int | None = None) -> ImportResult:
        """Replace the kit's catalog for each event in ``products`` (all of the kit's), in one transaction."""
        now = now or now_ms()
        if any(p.kit != kit for p in products):
            raise ValueError(f"every product must be for kit {kit}")
        result = ImportResult()
        events = sorted({p.event for p in products})
        with self.engine.begin() as conn:
            for event in events:
                rows = {r.sku: r for r in conn.execute(select(t.retail_products).where(and_(
                    P.kit_id == kit, P.event_id == event)))}
                last = {r.sku: r for r in conn.execute(
                    select(t.retail_prices).where(and_(V.kit_id == kit, V.event_id == event))
                    .order_by(V.version))}  # the last row per SKU wins: its current version
                incoming = [p for p in products if p.event == event]
                for p in incoming:
                    key = (event, p.sku)
                    values = dict(name=p.name, currency=p.currency, variants=p.variants, stock=p.stock)
                    old = rows.get(p.sku)
                    if old is None:
                        conn.execute(t.retail_products.insert().values(
                            kit_id=kit, event_id=event, sku=p.sku, updated_ms=now, updated_by=by, **values))
                        self._add_version(conn, kit, event, p.sku, 1, p.price, p.tax_bp, now, now, by)
                        result.added.append(key)
                        continue
                    same = (old.removed_ms is None and all(getattr(old, k) == v for k, v in values.items()))
                    if not same:
                        conn.execute(update(t.retail_products).where(and_(
                            P.kit_id == kit, P.event_id == event, P.sku == p.sku)).values(
                            removed_ms=None, updated_ms=now, updated_by=by, **values))
                    cur = last[p.sku]
                    if (cur.price, cur.tax_bp) != (p.price, p.tax_bp):
                        self._add_version(conn, kit, event, p.sku, cur.version + 1, p.price, p.tax_bp,
                                          max(now, cur.from_ms), now, by)
                        result.repriced.append(key)
                    elif not same:
                        result.updated.append(key)
                    else:
                        result.unchanged.append(key)
                keep = {p.sku for p in incoming}
                gone = [sku for sku, r in rows.items() if sku not in keep and r.removed_ms is None]
                if gone:
                    conn.execute(update(t.retail_products).where(and_(
                        P.kit_id == kit, P.event_id == event, P.sku.in_(gone))).values(
                        removed_ms=now, updated_ms=now, updated_by=by))
                    result.removed.extend((event, sku) for sku in sorted(gone))
        return result

    def reprice(self, kit: str, event: str, sku: str, price: int, tax_bp: int | None, by: str,
                from_ms: int | None = None, now: int | None = None) -> Product:
        """A new price version (the tax rate kept unless given). Raises NoProduct, or PriceRefused for a
        ``from_ms`` before the current version's start (versions follow each other in time)."""
        now = now or now_ms()
        from_ms = now if from_ms is None else from_ms
        with self.engine.begin() as conn:
            exists = conn.execute(select(P.sku).where(and_(
                P.kit_id == kit, P.event_id == event, P.sku == sku, P.removed_ms.is_(None)))).first()
            if exists is None:
                raise NoProduct(f"no product {sku} in kit {kit}'s catalog for event {event}")
            cur = conn.execute(select(t.retail_prices).where(and_(
                V.kit_id == kit, V.event_id == event, V.sku == sku)).order_by(V.version.desc()).limit(1)).first()
            if from_ms < cur.from_ms:
                raise PriceRefused(f"the new price must start at or after version {cur.version}'s start "
                                   f"({cur.from_ms})")
            self._add_version(conn, kit, event, sku, cur.version + 1, price,
                              cur.tax_bp if tax_bp is None else tax_bp, from_ms, now, by)
            conn.execute(update(t.retail_products).where(and_(
                P.kit_id == kit, P.event_id == event, P.sku == sku)).values(updated_ms=now, updated_by=by))
        return self.product(kit, event, sku)

    @staticmethod
    def _add_version(conn, kit, event, sku, version, price, tax_bp, from_ms, now, by) -> None:
        conn.execute(t.retail_prices.insert().values(kit_id=kit, event_id=event, sku=sku, version=version,
                                                     price=price, tax_bp=tax_bp, from_ms=from_ms,
                                                     created_ms=now, created_by=by))
