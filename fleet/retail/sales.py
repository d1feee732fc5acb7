"""What the kits sold, added up in SQL from the order and refund lines (fleet/retail/order_tables.py).

Money stays integer minor units throughout. Under a conflict the first body received counts (the
conflicting ones are shown, never added). A refund counts against its event whether or not its
order has arrived; per payment method it counts once its order has (it takes the order's method).
Stock per (event, SKU): carried (the catalog's ``stock``), less sold, plus what refunds restocked.
"""

from __future__ import annotations

from sqlalchemy import Engine, and_, func, select

from fleet.retail import order_tables as t
from fleet.retail import tables as ct

O, OL, R, RL, C = (t.retail_orders.c, t.retail_order_lines.c, t.retail_refunds.c, t.retail_refund_lines.c,
                   t.retail_sale_conflicts.c)
MONEY = ("gross", "net", "tax")


def _money(row, prefix: str = "") -> dict:
    return {k: int(getattr(row, prefix + k) or 0) for k in MONEY}


def _zero() -> dict:
    return dict(qty=0, gross=0, net=0, tax=0)


def _minus(a: dict, b: dict) -> dict:
    return {k: a[k] - b[k] for k in MONEY}


class SalesViews:
    def __init__(self, engine: Engine):
        self.engine = engine

    def sales(self, kit: str, event: str | None = None, names: dict[tuple[str, str], str] | None = None) -> dict:
        """Per (event, SKU): sold and refunded (qty, gross, net, tax) and what is left after refunds;
        the totals; per payment method. ``names``: (event, sku) -> product name, from the catalog."""
        names = names or {}
        ow = [OL.kit_id == kit] + ([OL.event_id == event] if event else [])
        rw = [RL.kit_id == kit] + ([RL.event_id == event] if event else [])
        with self.engine.connect() as conn:
            sold = conn.execute(select(OL.event_id, OL.sku, func.sum(OL.qty).label("qty"),
                                       *(func.sum(getattr(OL, k)).label(k) for k in MONEY))
                                .where(and_(*ow)).group_by(OL.event_id, OL.sku)).all()
            back = conn.execute(select(RL.event_id, RL.sku, func.sum(RL.qty).label("qty"),
                                       *(func.sum(getattr(RL, k)).label(k) for k in MONEY))
                                .where(and_(*rw)).group_by(RL.event_id, RL.sku)).all()
            payments = self._payments(conn, kit, event)
            head = self._heads(conn, kit, event)
        products: dict[tuple[str, str], dict] = {}
        for rows, side in ((sold, "sold"), (back, "refunded")):
            for r in rows:
                p = products.setdefault((r.event_id, r.sku), dict(event=r.event_id, sku=r.sku,
                                                                  name=names.get((r.event_id, r.sku)),
                                                                  sold=_zero(), refunded=_zero()))
                p[side] = dict(qty=int(r.qty), **_money(r))
        out = []
        total = dict(sold=_zero(), refunded=_zero())
        for key in sorted(products):
            p = products[key]
            p["qty"] = p["sold"]["qty"] - p["refunded"]["qty"]
            p.update(_minus(p["sold"], p["refunded"]))
            for side in ("sold", "refunded"):
                for k, v in p[side].items():
                    total[side][k] += v
            out.append(p)
        total.update(_minus(total["sold"], total["refunded"]), qty=total["sold"]["qty"] - total["refunded"]["qty"])
        return dict(kit=kit, event=event, currency=head["currency"], orders=head["orders"], refunds=head["refunds"],
                    conflicts=head["conflicts"], unmatched_refunds=head["unmatched"], products=out, totals=total,
                    payments=payments)

    @staticmethod
    def _payments(conn, kit: str, event: str | None) -> list[dict]:
        ow = [O.kit_id == kit] + ([O.event_id == event] if event else [])
        orders = {r.payment: r for r in conn.execute(
            select(O.payment, func.count().label("orders"), *(func.sum(getattr(O, k)).label(k) for k in MONEY))
            .where(and_(*ow)).group_by(O.payment))}
        rw = [R.kit_id == kit] + ([R.event_id == event] if event else [])
        refunds = {r.payment: r for r in conn.execute(
            select(O.payment, func.count().label("refunds"), *(func.sum(getattr(R, k)).label(k) for k in MONEY))
            .select_from(t.retail_refunds.join(t.retail_orders, O.id == R.order_id))
            .where(and_(*rw)).group_by(O.payment))}
        out = []
        for method in sorted(set(orders) | set(refunds)):
            o, r = orders.get(method), refunds.get(method)
            sold = _money(o) if o else {k: 0 for k in MONEY}
            back = _money(r) if r else {k: 0 for k in MONEY}
            out.append(dict(payment=method, orders=o.orders if o else 0, refunds=r.refunds if r else 0,
                            sold=sold, refunded=back, **_minus(sold, back)))
        return out

    @staticmethod
    def _heads(conn, kit: str, event: str | None) -> dict:
        ow = [O.kit_id == kit] + ([O.event_id == event] if event else [])
        rw = [R.kit_id == kit] + ([R.event_id == event] if event else [])
        orders, conflicted, currency = conn.execute(select(
            func.count(), func.coalesce(func.sum(O.conflicts), 0), func.min(O.currency)).where(and_(*ow))).one()
        refunds, rconflicted = conn.execute(select(func.count(), func.coalesce(func.sum(R.conflicts), 0))
                                            .where(and_(*rw))).one()
        unmatched = conn.execute(select(func.count()).select_from(
            t.retail_refunds.outerjoin(t.retail_orders, O.id == R.order_id)).where(and_(*rw, O.id.is_(None)))
        ).scalar_one()
        return dict(orders=orders, refunds=refunds, conflicts=int(conflicted) + int(rconflicted), unmatched=unmatched,
                    currency=currency)

    def stock(self, kit: str, event: str | None = None) -> list[dict]:
        """Per (event, SKU) the catalog has or an order sold: carried, sold, restocked, left; oversold
        when left is below zero or an order said it took the SKU below zero at the till."""
        P = ct.retail_products.c
        pw = [P.kit_id == kit] + ([P.event_id == event] if event else [])
        ow = [OL.kit_id == kit] + ([OL.event_id == event] if event else [])
        rw = [RL.kit_id == kit, RL.restock.is_(True)] + ([RL.event_id == event] if event else [])
        with self.engine.connect() as conn:
            carried = {(r.event_id, r.sku): r for r in conn.execute(
                select(P.event_id, P.sku, P.name, P.stock, P.removed_ms).where(and_(*pw)))}
            sold = {(r.event_id, r.sku): int(r.qty) for r in conn.execute(
                select(OL.event_id, OL.sku, func.sum(OL.qty).label("qty")).where(and_(*ow))
                .group_by(OL.event_id, OL.sku))}
            back = {(r.event_id, r.sku): int(r.qty) for r in conn.execute(
                select(RL.event_id, RL.sku, func.sum(RL.qty).label("qty")).where(and_(*rw))
                .group_by(RL.event_id, RL.sku))}
            flagged: set[tuple[str, str]] = set()
            for ev, skus in conn.execute(select(O.event_id, O.oversold).where(and_(
                    O.kit_id == kit, *([O.event_id == event] if event else [])))):
                flagged.update((ev, s) for s in skus or [])
        out = []
        for key in sorted(set(carried) | set(sold) | set(back)):
            c = carried.get(key)
            have = c.stock if c is not None else 0
            left = have - sold.get(key, 0) + back.get(key, 0)
            out.append(dict(event=key[0], sku=key[1], name=c.name if c is not None else None,
                            in_catalog=c is not None and c.removed_ms is None, carried=have,
                            sold=sold.get(key, 0), restocked=back.get(key, 0), left=left,
                            oversold=left < 0 or key in flagged, oversold_at_till=key in flagged))
        return out

    def fleet(self, kits: set[str] | None) -> list[dict]:
        """Per (kit, event) across the fleet (``kits``: only these; None: all): orders, refunds,
        sold and refunded money, conflicts."""
        ow = [O.kit_id.in_(sorted(kits))] if kits is not None else []
        rw = [R.kit_id.in_(sorted(kits))] if kits is not None else []
        with self.engine.connect() as conn:
            orders = conn.execute(select(O.kit_id, O.event_id, func.min(O.currency).label("currency"),
                                         func.count().label("n"), func.sum(O.conflicts).label("conflicts"),
                                         *(func.sum(getattr(O, k)).label(k) for k in MONEY))
                                  .where(*ow).group_by(O.kit_id, O.event_id)).all()
            refunds = conn.execute(select(R.kit_id, R.event_id, func.count().label("n"),
                                          func.sum(R.conflicts).label("conflicts"),
                                          *(func.sum(getattr(R, k)).label(k) for k in MONEY))
                                   .where(*rw).group_by(R.kit_id, R.event_id)).all()
        rows: dict[tuple[str, str], dict] = {}
        zero = {k: 0 for k in MONEY}
        for r in orders:
            rows[(r.kit_id, r.event_id)] = dict(kit=r.kit_id, event=r.event_id, currency=r.currency, orders=r.n,
                                                refunds=0, conflicts=int(r.conflicts or 0), sold=_money(r),
                                                refunded=dict(zero))
        for r in refunds:
            row = rows.setdefault((r.kit_id, r.event_id), dict(kit=r.kit_id, event=r.event_id, currency=None,
                                                               orders=0, refunds=0, conflicts=0, sold=dict(zero),
                                                               refunded=dict(zero)))
            row["refunds"], row["refunded"] = r.n, _money(r)
            row["conflicts"] += int(r.conflicts or 0)
        out = []
        for key in sorted(rows):
            row = rows[key]
            row.update(_minus(row["sold"], row["refunded"]))
            out.append(row)
        return out
