"""Micro-retail's catalog (fleet/retail/): products per kit, event and SKU, and their price versions.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "retail_products",
        sa.Column("kit_id", sa.String(63), sa.ForeignKey("kits.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("event_id", sa.String(16), primary_key=True),
        sa.Column("sku", sa.String(13), primary_key=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("stock", sa.Integer(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(63), nullable=True),
        sa.Column("removed_ms", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_retail_products_sku", "retail_products", ["sku"])
    op.create_table(
        "retail_prices",
        sa.Column("kit_id", sa.String(63), primary_key=True),
        sa.Column("event_id", sa.String(16), primary_key=True),
        sa.Column("sku", sa.String(13), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("price", sa.BigInteger(), nullable=False),
        sa.Column("tax_bp", sa.Integer(), nullable=False),
        sa.Column("from_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_by", sa.String(63), nullable=True),
        sa.ForeignKeyConstraint(["kit_id", "event_id", "sku"],
                                ["retail_products.kit_id", "retail_products.event_id", "retail_products.sku"],
                                ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("retail_prices")
    op.drop_index("ix_retail_products_sku", table_name="retail_products")
    op.drop_table("retail_products")
