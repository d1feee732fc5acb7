"""Micro-retail's orders (fleet/retail/order_tables.py): the tills' orders and refunds with their lines,
bodies that conflicted with a stored one, and each kit's latest report of orders not yet uploaded.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _sale_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("kit_id", sa.String(63), nullable=False),
        sa.Column("event_id", sa.String(16), nullable=False),
        sa.Column("till", sa.String(63), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("gross", sa.BigInteger(), nullable=False),
        sa.Column("taken_by", sa.String(63), nullable=False),
        sa.Column("clock_unset", sa.Boolean(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("conflicts", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table("retail_orders", *_sale_columns(),
                    sa.Column("payment", sa.String(16), nullable=False),
                    sa.Column("oversold", sa.JSON(), nullable=False))
    op.create_index("ix_retail_orders_kit", "retail_orders", ["kit_id", "event_id", "ts_ms"])
    op.create_table(
        "retail_order_lines",
        sa.Column("order_id", sa.String(36), primary_key=True),
        sa.Column("line", sa.Integer(), primary_key=True),
        sa.Column("kit_id", sa.String(63), nullable=False),
        sa.Column("event_id", sa.String(16), nullable=False),
        sa.Column("sku", sa.String(13), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("unit", sa.BigInteger(), nullable=False),
        sa.Column("price_version", sa.Integer(), nullable=False),
        sa.Column("tax_bp", sa.Integer(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("gross", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_retail_order_lines_kit", "retail_order_lines", ["kit_id", "event_id", "sku"])
    op.create_table("retail_refunds", *_sale_columns(),
                    sa.Column("order_id", sa.String(36), nullable=False),
                    sa.Column("kind", sa.String(8), nullable=False),
                    sa.Column("restock", sa.Boolean(), nullable=False),
                    sa.Column("reason", sa.String(120), nullable=False))
    op.create_index("ix_retail_refunds_kit", "retail_refunds", ["kit_id", "event_id"])
    op.create_index("ix_retail_refunds_order", "retail_refunds", ["order_id"])
    op.create_table(
        "retail_refund_lines",
        sa.Column("refund_id", sa.String(36), primary_key=True),
        sa.Column("line", sa.Integer(), primary_key=True),
        sa.Column("kit_id", sa.String(63), nullable=False),
        sa.Column("event_id", sa.String(16), nullable=False),
        sa.Column("sku", sa.String(13), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("net", sa.BigInteger(), nullable=False),
        sa.Column("tax", sa.BigInteger(), nullable=False),
        sa.Column("gross", sa.BigInteger(), nullable=False),
        sa.Column("restock", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_retail_refund_lines_kit", "retail_refund_lines", ["kit_id", "event_id", "sku"])
    op.create_table(
        "retail_sale_conflicts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("sale_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("kit_id", sa.String(63), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_retail_sale_conflicts_sale", "retail_sale_conflicts", ["sale_id"])
    op.create_table(
        "retail_pending",
        sa.Column("kit_id", sa.String(63), primary_key=True),
        sa.Column("device_id", sa.String(63), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("oldest_ms", sa.BigInteger(), nullable=True),
        sa.Column("reported_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("retail_pending")
    op.drop_index("ix_retail_sale_conflicts_sale", table_name="retail_sale_conflicts")
    op.drop_table("retail_sale_conflicts")
    op.drop_index("ix_retail_refund_lines_kit", table_name="retail_refund_lines")
    op.drop_table("retail_refund_lines")
    op.drop_index("ix_retail_refunds_order", table_name="retail_refunds")
    op.drop_index("ix_retail_refunds_kit", table_name="retail_refunds")
    op.drop_table("retail_refunds")
    op.drop_index("ix_retail_order_lines_kit", table_name="retail_order_lines")
    op.drop_table("retail_order_lines")
    op.drop_index("ix_retail_orders_kit", table_name="retail_orders")
    op.drop_table("retail_orders")
