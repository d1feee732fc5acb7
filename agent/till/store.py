"""The till's SQLite file: the catalog, open carts, orders and refunds, stock moves, station counters.

Rules that shape it:

* **WAL, synchronous=FULL**: a sale is on disk when :meth:`TillStore.tx` returns. ``pay()`` commits
  the order before it queues the receipt or the outbox event, so a power cut after the crew saw
  the order loses nothing (what was not queued yet is queued at the next start).
* **Never edited**: orders and refunds are rows of ``sales`` written once (``body`` is the exact
  contract JSON sent to the fleet, so a re-send is byte for byte the same); what changes later is
  only bookkeeping beside it: the outbox key it went under, whether the fleet has receipted it, its
  print job.
* **Stock** is the catalog's carried count plus the ``moves`` of the catalog's event: one row per
  line sold, returned to stock, or refunded and kept (damaged).
* **Station counters**: ``n`` of the next order or refund per station, taken in the same transaction
  that writes the sale, so numbers never repeat and never skip, clock or no clock.

Every method runs under the caller's lock (agent/till/service.py holds one for the whole till).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS catalog (
    k         INTEGER PRIMARY KEY CHECK (k = 1),
    source    TEXT    NOT NULL,
    version   INTEGER,
    loaded_ms INTEGER NOT NULL,
    doc       TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS carts (
    station TEXT    NOT NULL,
    sku     TEXT    NOT NULL,
    qty     INTEGER NOT NULL,
    pos     INTEGER NOT NULL,
    PRIMARY KEY (station, sku)
);
CREATE TABLE IF NOT EXISTS stations (
    station TEXT    PRIMARY KEY,
    n       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sales (
    row         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT    NOT NULL UNIQUE,
    kind        TEXT    NOT NULL,         -- order | refund | void
    order_id    TEXT,                     -- a refund's order
    station     TEXT    NOT NULL,
    n           INTEGER NOT NULL,
    ts          INTEGER NOT NULL,
    event       TEXT    NOT NULL,
    body        TEXT    NOT NULL,         -- the contract's Order / Refund JSON, as sent
    boot        TEXT,                     -- outbox key once queued (NULL: not queued yet)
    seq         INTEGER,
    uploaded    INTEGER NOT NULL DEFAULT 0,
    receipt_job INTEGER
);
CREATE INDEX IF NOT EXISTS sales_pending ON sales (uploaded, row);
CREATE INDEX IF NOT EXISTS sales_order ON sales (order_id);
CREATE TABLE IF NOT EXISTS moves (
    sale     TEXT    NOT NULL,
    event    TEXT    NOT NULL,
    sku      TEXT    NOT NULL,
    sold     INTEGER NOT NULL DEFAULT 0,
    returned INTEGER NOT NULL DEFAULT 0,  -- refunded back into stock
    kept     INTEGER NOT NULL DEFAULT 0   -- refunded, not back in stock
);
CREATE INDEX IF NOT EXISTS moves_event ON moves (event, sku);
"""


@dataclass(frozen=True)
class CatalogRow:
    source: str  # "fleet" (the agent's config) or "upload" (the crew's CSV on the till page)
    version: int | None
    loaded_ms: int
    doc: dict  # kits.retail.catalog.catalog_json


@dataclass(frozen=True)
class SaleRow:
    row: int
    id: str
    kind: str
    order_id: str | None
    station: str
    n: int
    ts: int
    event: str
    body: dict
    boot: str | None
    seq: int | None
    uploaded: bool
    receipt_job: int | None


_SALE_COLS = "row, id, kind, order_id, station, n, ts, event, body, boot, seq, uploaded, receipt_job"


def _sale(r: tuple) -> SaleRow:
    return SaleRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9], r[10], bool(r[11]), r[12])


class TillStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def tx(self) -> Iterator[None]:
        """One write transaction, durable on return (synchronous=FULL)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ catalog

    def catalog(self) -> CatalogRow | None:
        r = self._db.execute("SELECT source, version, loaded_ms, doc FROM catalog WHERE k = 1").fetchone()
        return CatalogRow(r[0], r[1], r[2], json.loads(r[3])) if r else None

    def save_catalog(self, source: str, version: int | None, loaded_ms: int, doc: dict) -> None:
        self._db.execute("INSERT OR REPLACE INTO catalog (k, source, version, loaded_ms, doc) VALUES (1, ?, ?, ?, ?)",
                         (source, version, loaded_ms, json.dumps(doc, separators=(",", ":"))))

    # ------------------------------------------------------------ carts

    def cart(self, station: str) -> list[tuple[str, int]]:
        return [(s, q) for s, q in self._db.execute(
            "SELECT sku, qty FROM carts WHERE station = ? ORDER BY pos", (station,))]

    def set_cart_qty(self, station: str, sku: str, qty: int) -> None:
        if qty <= 0:
            self._db.execute("DELETE FROM carts WHERE station = ? AND sku = ?", (station, sku))
            return
        self._db.execute(
            "INSERT INTO carts (station, sku, qty, pos) VALUES (?, ?, ?, "
            " (SELECT coalesce(max(pos), 0) + 1 FROM carts WHERE station = ?))"
            " ON CONFLICT (station, sku) DO UPDATE SET qty = excluded.qty", (station, sku, qty, station))

    def clear_cart(self, station: str) -> None:
        self._db.execute("DELETE FROM carts WHERE station = ?", (station,))

    # ------------------------------------------------------------ sales

    def next_n(self, station: str) -> int:
        self._db.execute("INSERT INTO stations (station, n) VALUES (?, 1)"
                         " ON CONFLICT (station) DO UPDATE SET n = n + 1", (station,))
        return self._db.execute("SELECT n FROM stations WHERE station = ?", (station,)).fetchone()[0]

    def add_sale(self, kind: str, body: dict, order_id: str | None = None) -> None:
        self._db.execute(
            "INSERT INTO sales (id, kind, order_id, station, n, ts, event, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (body["id"], kind, order_id, body["till"], body["n"], body["ts"], body["event"],
             json.dumps(body, separators=(",", ":"))))

    def add_move(self, sale: str, event: str, sku: str, sold: int = 0, returned: int = 0, kept: int = 0) -> None:
        self._db.execute("INSERT INTO moves (sale, event, sku, sold, returned, kept) VALUES (?, ?, ?, ?, ?, ?)",
                         (sale, event, sku, sold, returned, kept))

    def sale(self, sale_id: str) -> SaleRow | None:
        r = self._db.execute(f"SELECT {_SALE_COLS} FROM sales WHERE id = ?", (sale_id,)).fetchone()
        return _sale(r) if r else None

    def refunds_of(self, order_id: str) -> list[SaleRow]:
        return [_sale(r) for r in self._db.execute(
            f"SELECT {_SALE_COLS} FROM sales WHERE order_id = ? ORDER BY row", (order_id,))]

    def orders(self, limit: int, before_n: int | None, station: str | None) -> list[SaleRow]:
        where, args = ["kind = 'order'"], []
        if station is not None:
            where.append("station = ?")
            args.append(station)
        if before_n is not None:
            where.append("n < ?")
            args.append(before_n)
        return [_sale(r) for r in self._db.execute(
            f"SELECT {_SALE_COLS} FROM sales WHERE {' AND '.join(where)} ORDER BY row DESC LIMIT ?", (*args, limit))]

    def last_order(self, station: str) -> SaleRow | None:
        r = self._db.execute(f"SELECT {_SALE_COLS} FROM sales WHERE kind = 'order' AND station = ?"
                             " ORDER BY row DESC LIMIT 1", (station,)).fetchone()
        return _sale(r) if r else None

    def unqueued(self) -> list[SaleRow]:
        """Sales committed but not handed to the outbox (the agent stopped in between)."""
        return [_sale(r) for r in self._db.execute(
            f"SELECT {_SALE_COLS} FROM sales WHERE boot IS NULL ORDER BY row")]

    def set_queued(self, sale_id: str, boot: str, seq: int) -> None:
        self._db.execute("UPDATE sales SET boot = ?, seq = ? WHERE id = ?", (boot, seq, sale_id))

    def not_uploaded(self) -> list[tuple[str, str | None, int | None, int]]:
        """(id, boot, seq, ts) of every sale the fleet has not receipted, oldest first."""
        return list(self._db.execute("SELECT id, boot, seq, ts FROM sales WHERE uploaded = 0 ORDER BY row"))

    def set_uploaded(self, sale_ids: list[str]) -> None:
        self._db.executemany("UPDATE sales SET uploaded = 1 WHERE id = ?", [(i,) for i in sale_ids])

    def without_receipt(self) -> list[SaleRow]:
        return [_sale(r) for r in self._db.execute(
            f"SELECT {_SALE_COLS} FROM sales WHERE receipt_job IS NULL ORDER BY row")]

    def set_receipt_job(self, sale_id: str, job: int) -> None:
        self._db.execute("UPDATE sales SET receipt_job = ? WHERE id = ?", (job, sale_id))

    # ------------------------------------------------------------ stock

    def stock_moves(self, event: str) -> dict[str, tuple[int, int, int]]:
        """sku -> (sold, returned, kept) for ``event``."""
        return {sku: (s, r, k) for sku, s, r, k in self._db.execute(
            "SELECT sku, sum(sold), sum(returned), sum(kept) FROM moves WHERE event = ? GROUP BY sku", (event,))}

    def stock_of(self, event: str, sku: str) -> tuple[int, int]:
        """(sold, returned) of one SKU for ``event``."""
        r = self._db.execute("SELECT coalesce(sum(sold), 0), coalesce(sum(returned), 0) FROM moves"
                             " WHERE event = ? AND sku = ?", (event, sku)).fetchone()
        return r[0], r[1]
