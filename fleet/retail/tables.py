"""The catalog's tables on the fleet's one schema (fleet.db.metadata; migration 0013).

A product row is one SKU a kit carries to an event. It is never deleted: an import that leaves a
SKU out marks it ``removed_ms``, so an order already sold at one of its prices still finds it
(orders record (sku, price version)). Price versions are only ever added.
"""

from __future__ import annotations

from sqlalchemy import (JSON, BigInteger, Column, ForeignKey, ForeignKeyConstraint, Index, Integer, String,
                        Table)

from fleet.db import metadata

retail_products = Table(
    "retail_products",
    metadata,
    Column("kit_id", String(63), ForeignKey("kits.id", ondelete="CASCADE"), primary_key=True),
    Column("event_id", String(16), primary_key=True),
    Column("sku", String(13), primary_key=True),
    Column("name", String(60), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("variants", JSON, nullable=False),
    Column("stock", Integer, nullable=False),  # carried at the start of the event
    Column("updated_ms", BigInteger, nullable=False),
    Column("updated_by", String(63), nullable=True),
    Column("removed_ms", BigInteger, nullable=True),  # left out of a later import: kept for past orders
)

retail_prices = Table(
    "retail_prices",
    metadata,
    Column("kit_id", String(63), primary_key=True),
    Column("event_id", String(16), primary_key=True),
    Column("sku", String(13), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("price", BigInteger, nullable=False),  # minor units of the product's currency
    Column("tax_bp", Integer, nullable=False),
    Column("from_ms", BigInteger, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("created_by", String(63), nullable=True),
    ForeignKeyConstraint(["kit_id", "event_id", "sku"],
                         ["retail_products.kit_id", "retail_products.event_id", "retail_products.sku"],
                         ondelete="CASCADE"),
)

# The catalog of a kit is read per kit (all events) or per kit and event: the primary key serves both.
ix_retail_products_sku = Index("ix_retail_products_sku", retail_products.c.sku)  # one SKU across kits
