"""The till's errors: each says what the crew can do about it."""

from __future__ import annotations

from agent.errors import AgentError


class TillError(AgentError, ValueError):
    """Something the till refuses; the message is for the crew."""


class NoCatalog(TillError):
    """No catalog has reached the till yet: nothing can be sold."""


class CatalogRefused(TillError):
    """A catalog that cannot be used; the old one stays."""


class EmptyCart(TillError):
    """Pay on a cart with nothing in it (a second tap on pay after the first went through)."""


class NotInCatalog(TillError):
    """A SKU on the cart that the catalog (now) does not have."""


class UnknownOrder(TillError, LookupError):
    """No order with that id at this till."""


class RefundTooLarge(TillError):
    """More returned than was sold (counting what earlier refunds returned)."""
