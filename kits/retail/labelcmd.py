"""The fleet's ``labels`` command to a kit's agent: labels printed from the dashboard.

What travels is which labels, never rendered labels: a command is at most 4096 bytes
(kits/contract.py), so it carries SKUs and counts, each with what its label prints (name,
variant, price) so an agent with no catalog of its own still prints the fleet's. The agent
renders them itself (agent/labels_cmd.py) with the same templates and checks as the CLI's batch,
preferring its till's catalog when it has the SKU: a label then shows the price the till sells at.

A request too big for one command (labels for a whole catalog) goes as several commands, each a
``part`` of the request; the fleet checks the whole request against its catalog first, so the
parts are refused together or not at all.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from kits.contract import EVENT_ID_RE
from kits.retail.catalog import MAX_STOCK, NAME_MAX, Sku
from kits.retail.money import MAX_PRICE_MINOR

ACTION = "labels"
DEFAULT_TEMPLATE = "shelf-40x30"


class LabelItem(BaseModel):
    """``n`` labels of one SKU, with what the label prints when the agent has no catalog for it."""

    model_config = ConfigDict(extra="forbid")

    sku: Sku
    n: int = Field(ge=1, le=MAX_STOCK)
    name: str = Field(min_length=1, max_length=NAME_MAX)
    variant: str = Field("", max_length=200)  # every variant, "black / M"
    price: int = Field(ge=0, le=MAX_PRICE_MINOR)  # minor units
    currency: str = Field(min_length=3, max_length=3)

    def fields(self) -> dict[str, object]:
        """As kits.retail.labels.product_fields gives them for a catalog product."""
        return {"sku": self.sku, "name": self.name, "variant": self.variant, "price": self.price,
                "currency": self.currency}


class LabelsArgs(BaseModel):
    """The ``args`` of a ``labels`` command."""

    model_config = ConfigDict(extra="forbid")

    event: str = Field(pattern=f"^{EVENT_ID_RE}$")
    template: str = Field(DEFAULT_TEMPLATE, min_length=1, max_length=40)
    printer: str | None = Field(None, max_length=64, description="the kit's printer; its first one when left out")
    items: list[LabelItem] = Field(min_length=1)
    part: tuple[int, int] = Field((1, 1), description="(this part, of how many) of one request")

    @property
    def labels(self) -> int:
        return sum(i.n for i in self.items)
