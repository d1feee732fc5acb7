"""Orders and refunds from the kits' tills, on the fleet's one schema (fleet.db.metadata; migration 0014).

An order or refund row is the first body the fleet received under its id (a UUID made on the till),
never edited. The same id again with the same body is a duplicate upload (counted on the row); with
another body it is a conflict: that body is kept in ``retail_sale_conflicts`` and the row flagged,
never merged. Lines are rows of their own so sales add up in SQL. A refund keeps its order's id
whether or not the order has arrived: it is matched by that id when the order comes.

``retail_pending`` holds each kit's latest report of what its till has not yet had receipted.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Boolean, Column, Index, Integer, String, Table

from fleet.db import metadata

_SALE = (  # what an order and a refund share (kits.contract._Sale), plus where it came from
    ("kit_id", String(63)), ("event_id", String(16)), ("till", String(63)), ("n", Integer), ("ts_ms", BigInteger),
    ("currency", String(3)), ("net", BigInteger), ("tax", BigInteger), ("gross", BigInteger), ("taken_by", String(63)),
)


def _sale_columns() -> list[Column]:
    return [Column(name, kind, nullable=False) for name, kind in _SALE] + [
        Column("clock_unset", Boolean, nullable=False),
        Column("body", JSON, nullable=False),  # the data as first received
        Column("device_id", String(63), nullable=False),
        Column("received_ms", BigInteger, nullable=False),
        Column("duplicates", Integer, nullable=False),  # the same body uploaded again
        Column("conflicts", Integer, nullable=False),  # other bodies under this id (retail_sale_conflicts)
    ]


retail_orders = Table(
    "retail_orders",
    metadata,
    Column("id", String(36), primary_key=True),
    *_sale_columns(),
    Column("payment", String(16), nullable=False),
    Column("oversold", JSON, nullable=False),
)

retail_order_lines = Table(
    "retail_order_lines",
    metadata,
    Column("order_id", String(36), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("kit_id", String(63), nullable=False),
    Column("event_id", String(16), nullable=False),
    Column("sku", String(13), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("unit", BigInteger, nullable=False),
    Column("price_version", Integer, nullable=False),
    Column("tax_bp", Integer, nullable=False),
    Column("net", BigInteger, nullable=False),
    Column("tax", BigInteger, nullable=False),
    Column("gross", BigInteger, nullable=False),
)

retail_refunds = Table(
    "retail_refunds",
    metadata,
    Column("id", String(36), primary_key=True),
    *_sale_columns(),
    Column("order_id", String(36), nullable=False),  # perhaps not arrived yet: matched by id, no foreign key
    Column("kind", String(8), nullable=False),  # refund | void
    Column("restock", Boolean, nullable=False),
    Column("reason", String(120), nullable=False),
)

retail_refund_lines = Table(
    "retail_refund_lines",
    metadata,
    Column("refund_id", String(36), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("kit_id", String(63), nullable=False),
    Column("event_id", String(16), nullable=False),
    Column("sku", String(13), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("net", BigInteger, nullable=False),
    Column("tax", BigInteger, nullable=False),
    Column("gross", BigInteger, nullable=False),
    Column("restock", Boolean, nullable=False),
)

retail_sale_conflicts = Table(
    "retail_sale_conflicts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sale_id", String(36), nullable=False),  # the order's or refund's id
    Column("kind", String(8), nullable=False),  # order | refund
    Column("kit_id", String(63), nullable=False),
    Column("body", JSON, nullable=False),
    Column("device_id", String(63), nullable=False),
    Column("received_ms", BigInteger, nullable=False),
)

retail_pending = Table(
    "retail_pending",
    metadata,
    Column("kit_id", String(63), primary_key=True),
    Column("device_id", String(63), nullable=False),
    Column("orders", Integer, nullable=False),  # orders and refunds the till holds without a receipt
    Column("oldest_ms", BigInteger, nullable=True),  # when the oldest of them was made; None: nothing pending
    Column("reported_ms", BigInteger, nullable=False),  # the report's own ts
    Column("received_ms", BigInteger, nullable=False),
)

ix_retail_orders_kit = Index("ix_retail_orders_kit", retail_orders.c.kit_id, retail_orders.c.event_id,
                             retail_orders.c.ts_ms)
ix_retail_order_lines_kit = Index("ix_retail_order_lines_kit", retail_order_lines.c.kit_id,
                                  retail_order_lines.c.event_id, retail_order_lines.c.sku)
ix_retail_refunds_kit = Index("ix_retail_refunds_kit", retail_refunds.c.kit_id, retail_refunds.c.event_id)
ix_retail_refunds_order = Index("ix_retail_refunds_order", retail_refunds.c.order_id)
ix_retail_refund_lines_kit = Index("ix_retail_refund_lines_kit", retail_refund_lines.c.kit_id,
                                   retail_refund_lines.c.event_id, retail_refund_lines.c.sku)
ix_retail_sale_conflicts_sale = Index("ix_retail_sale_conflicts_sale", retail_sale_conflicts.c.sale_id)
