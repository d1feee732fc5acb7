"""The kit's till: selling from the kit's stock with no uplink (issue 19, docs/retail.md "The till").

``service.Till`` is the one door in (the till page, the scanners in till mode and the tests use only
it); ``store`` keeps carts, orders, refunds and stock on disk; ``receipts`` draws what the printer
prints; ``uplink`` hands orders to the agent's outbox; ``scans`` answers the scanners; ``intake``
takes the catalog from the agent's retained config.
"""
