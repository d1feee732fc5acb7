"""The kits' orders and refunds in the database (fleet/retail/order_tables.py): recorded inside
ingest's transaction, read back for the API.

``record`` is a ledger event hook (fleet/ledger/store.py): it runs in the batch's transaction,
before the commit the fleet's receipts wait for, so a till forgets an order only once the fleet
holds it. Ids are the till's UUIDs: the first body under an id stands; the same body again is a
duplicate (counted on the row, no error); another body is a conflict, kept whole in
``retail_sale_conflicts`` and flagged on the row, never merged. Only a kit's agent runs a till,
and only for its own kit: an order from another device or naming another kit is refused, logged
and counted (REFUSED), and stays in the ledger as received.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter

from sqlalchemy import Engine, and_, func, select, update

from fleet import db
from fleet.retail import order_tables as t
from fleet.retail.pending import PendingReports

log = logging.getLogger("popkit.fleet.retail")

O, OL, R, RL, C = (t.retail_orders.c, t.retail_order_lines.c, t.retail_refunds.c, t.retail_refund_lines.c,
                   t.retail_sale_conflicts.c)
KINDS = ("order", "refund")

_lock = threading.Lock()
REFUSED: Counter = Counter()  # reason (not_agent | other_kit) -> orders/refunds refused at ingest, this process


def refused() -> dict[str, int]:
    with _lock:
        return {"not_agent": 0, "other_kit": 0, **REFUSED}


def canonical(data: dict) -> str:
    """The body as compared: two uploads of one order are the same when these are equal."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sale_row(d: dict, device_id: str, received_ms: int) -> dict:
    return dict(id=d["id"], kit_id=d["kit"], event_id=d["event"], till=d["till"], n=d["n"], ts_ms=d["ts"],
                currency=d["currency"], net=d["net"], tax=d["tax"], gross=d["gross"], taken_by=d["by"],
                clock_unset=d.get("clock") == "unset", body=d, device_id=device_id, received_ms=received_ms,
                duplicates=0, conflicts=0)


def _order_row(d: dict, device_id: str, received_ms: int) -> dict:
    return dict(_sale_row(d, device_id, received_ms), payment=d["payment"], oversold=list(d.get("oversold") or []))


def _order_lines(d: dict) -> list[dict]:
    return [dict(order_id=d["id"], line=i, kit_id=d["kit"], event_id=d["event"], sku=x["sku"], qty=x["qty"],
                 unit=x["unit"], price_version=x["price_version"], tax_bp=x["tax_bp"], net=x["net"], tax=x["tax"],
                 gross=x["gross"]) for i, x in enumerate(d["lines"])]


def _refund_row(d: dict, device_id: str, received_ms: int) -> dict:
    return dict(_sale_row(d, device_id, received_ms), order_id=d["order"], kind=d["kind"],
                restock=d.get("restock", True), reason=d.get("reason", ""))


def _refund_lines(d: dict) -> list[dict]:
    return [dict(refund_id=d["id"], line=i, kit_id=d["kit"], event_id=d["event"], sku=x["sku"], qty=x["qty"],
                 net=x["net"], tax=x["tax"], gross=x["gross"], restock=d.get("restock", True))
            for i, x in enumerate(d["lines"])]


# kind -> (its table, its lines' table, its row, its lines' rows)
_SHAPES = {"order": (t.retail_orders, t.retail_order_lines, _order_row, _order_lines),
           "refund": (t.retail_refunds, t.retail_refund_lines, _refund_row, _refund_lines)}
INSERT_CHUNK = 200  # sales per INSERT: ~20 parameters each, well inside SQLite's and PostgreSQL's limits


class OrderStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)
        self.pending = PendingReports(engine)

    # ------------------------------------------------------------ ingest (inside the batch's transaction)

    def record(self, conn, new: list) -> None:
        """Every new ``order`` and ``refund`` event of the batch, and the latest pending report per kit."""
        sales = [m for m in new if m.channel == "event" and m.msg.kind in KINDS]
        self.pending.record(conn, new)
        if not sales:
            return
        kits = self._agents(conn, {m.device_id for m in sales})
        accepted: dict[str, list[tuple[str, dict]]] = {kind: [] for kind in KINDS}
        for m in sales:
            d = m.msg.data  # validated against kits.contract.Order / Refund at decode
            kit = kits.get(m.device_id)
            if kit is None or d.get("kit") != kit:
                reason = "not_agent" if kit is None else "other_kit"
                with _lock:
                    REFUSED[reason] += 1
                log.warning("%s %s from %s refused (%s): only a kit's agent records its own kit's sales",
                            m.msg.kind, d.get("id"), m.device_id, reason)
                continue
            accepted[m.msg.kind].append((m.device_id, d))
        received = db.now_ms()
        for kind, items in accepted.items():
            if items:
                self._write(conn, kind, items, received)

    @staticmethod
    def _agents(conn, device_ids: set[str]) -> dict[str, str]:
        d = db.devices.c
        rows = conn.execute(select(d.id, d.kit_id).where(and_(d.id.in_(sorted(device_ids)), d.role == "agent")))
        return {r.id: r.kit_id for r in rows}

    def _write(self, conn, kind: str, items: list[tuple[str, dict]], received_ms: int) -> None:
        """A batch's orders (or refunds) in a few statements: the first of each id is inserted unless
        the id is stored already; the rest are duplicates or conflicts of what is stored."""
        table, lines, row_of, lines_of = _SHAPES[kind]
        first: dict[str, tuple[str, dict]] = {}
        again: list[tuple[str, dict]] = []
        for device_id, d in items:
            if d["id"] in first:
                again.append((device_id, d))
            else:
                first[d["id"]] = (device_id, d)
        inserted: set[str] = set()
        rows = [row_of(d, device_id, received_ms) for device_id, d in first.values()]
        for i in range(0, len(rows), INSERT_CHUNK):
            # Another worker's insert of the same id waits for its commit, then this skips it. RETURNING,
            # not rowcount: psycopg's pipeline mode reports no rowcount for a skipped row.
            stmt = self._insert(table).values(rows[i:i + INSERT_CHUNK]).on_conflict_do_nothing(index_elements=["id"])
            inserted.update(conn.execute(stmt.returning(table.c.id)).scalars())
        line_rows = [x for sale_id in inserted for x in lines_of(first[sale_id][1])]
        if line_rows:
            conn.execute(lines.insert(), line_rows)
        again = [first[i] for i in first if i not in inserted] + again
        if again:
            self._again(conn, table, kind, again, received_ms)

    @staticmethod
    def _again(conn, table, kind: str, items: list[tuple[str, dict]], received_ms: int) -> None:
        """Ids already stored: a duplicate when the body is one already held under the id (the stored
        one or a conflicting one), else a conflict, kept beside it and flagged."""
        c = table.c
        ids = sorted({d["id"] for _, d in items})
        held: dict[str, set[str]] = {}
        for sale_id, body in conn.execute(select(c.id, c.body).where(c.id.in_(ids))):
            held.setdefault(sale_id, set()).add(canonical(body))
        for sale_id, body in conn.execute(select(C.sale_id, C.body).where(and_(C.kind == kind, C.sale_id.in_(ids)))):
            held.setdefault(sale_id, set()).add(canonical(body))
        dups: Counter = Counter()
        conflicts: list[dict] = []
        for device_id, d in items:
            body = canonical(d)
            if body in held[d["id"]]:
                dups[d["id"]] += 1
                continue
            held[d["id"]].add(body)
            conflicts.append(dict(sale_id=d["id"], kind=kind, kit_id=d["kit"], body=d, device_id=device_id,
                                  received_ms=received_ms))
            log.warning("%s %s: another body under the same id from %s (kit %s), kept and flagged",
                        kind, d["id"], device_id, d["kit"])
        if conflicts:
            conn.execute(t.retail_sale_conflicts.insert(), conflicts)
        more = Counter(x["sale_id"] for x in conflicts)
        for sale_id in sorted(set(dups) | set(more)):
            conn.execute(update(table).where(c.id == sale_id).values(
                duplicates=c.duplicates + dups[sale_id], conflicts=c.conflicts + more[sale_id]))

    # ------------------------------------------------------------ reads

    def orders(self, kit: str, event: str | None = None, limit: int = 50, offset: int = 0) -> tuple[int, list[dict]]:
        """(how many in all, one page of them), newest first, each with its refunds and conflicts."""
        where = [O.kit_id == kit] + ([O.event_id == event] if event else [])
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(t.retail_orders).where(and_(*where))).scalar_one()
            rows = conn.execute(select(t.retail_orders).where(and_(*where))
                                .order_by(O.ts_ms.desc(), O.till, O.n.desc(), O.id).limit(limit).offset(offset)).all()
            return total, self._with_refunds(conn, rows)

    def all_orders(self, kit: str, event: str | None = None) -> list[dict]:
        """Every order of the kit (of ``event``), oldest first: for the CSV export."""
        where = [O.kit_id == kit] + ([O.event_id == event] if event else [])
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.retail_orders).where(and_(*where)).order_by(O.ts_ms, O.till, O.n, O.id)).all()
            return self._with_refunds(conn, rows)

    def order(self, kit: str, order_id: str) -> dict | None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.retail_orders).where(and_(O.kit_id == kit, O.id == order_id))).all()
            found = self._with_refunds(conn, rows)
        return found[0] if found else None

    def unmatched_refunds(self, kit: str, event: str | None = None) -> list[dict]:
        """Refunds whose order has not arrived (yet): kept, matched by id when it does."""
        where = [R.kit_id == kit] + ([R.event_id == event] if event else [])
        q = (select(t.retail_refunds).select_from(t.retail_refunds.outerjoin(t.retail_orders, O.id == R.order_id))
             .where(and_(*where, O.id.is_(None))).order_by(R.ts_ms, R.id))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            conflicts = self._conflicts(conn, "refund", [r.id for r in rows])
        return [_refund_view(r, conflicts) for r in rows]

    def _with_refunds(self, conn, rows) -> list[dict]:
        ids = [r.id for r in rows]
        if not ids:
            return []
        refunds = conn.execute(select(t.retail_refunds).where(R.order_id.in_(ids)).order_by(R.ts_ms, R.n, R.id)).all()
        conflicts = self._conflicts(conn, "order", ids)
        refund_conflicts = self._conflicts(conn, "refund", [r.id for r in refunds])
        by_order: dict[str, list[dict]] = {}
        for r in refunds:
            by_order.setdefault(r.order_id, []).append(_refund_view(r, refund_conflicts))
        out = []
        for r in rows:
            view = dict(r.body, received_ms=r.received_ms, device=r.device_id, duplicates=r.duplicates,
                        conflict=r.conflicts > 0, conflicting=conflicts.get(r.id, []),
                        refunds=by_order.get(r.id, []))
            out.append(view)
        return out

    @staticmethod
    def _conflicts(conn, kind: str, ids: list[str]) -> dict[str, list[dict]]:
        if not ids:
            return {}
        out: dict[str, list[dict]] = {}
        for r in conn.execute(select(t.retail_sale_conflicts).where(and_(C.kind == kind, C.sale_id.in_(ids)))
                              .order_by(C.id)):
            out.setdefault(r.sale_id, []).append(dict(body=r.body, device=r.device_id, received_ms=r.received_ms))
        return out

    def counts(self) -> dict[str, int]:
        """Fleet-wide totals for /metrics, from the tables (right across workers and restarts)."""
        with self.engine.connect() as conn:
            out = {}
            for kind, table in (("order", t.retail_orders), ("refund", t.retail_refunds)):
                c = table.c
                n, dups, conflicted = conn.execute(select(
                    func.count(), func.coalesce(func.sum(c.duplicates), 0),
                    func.coalesce(func.sum(c.conflicts), 0))).one()
                out[f"{kind}s"], out[f"{kind}_duplicates"], out[f"{kind}_conflicts"] = n, int(dups), int(conflicted)
            out["refunds_unmatched"] = conn.execute(
                select(func.count()).select_from(t.retail_refunds.outerjoin(t.retail_orders, O.id == R.order_id))
                .where(O.id.is_(None))).scalar_one()
        return out


def _refund_view(r, conflicts: dict[str, list[dict]]) -> dict:
    return dict(r.body, received_ms=r.received_ms, device=r.device_id, duplicates=r.duplicates,
                conflict=r.conflicts > 0, conflicting=conflicts.get(r.id, []))
