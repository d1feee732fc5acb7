"""Kits registered straight in a fleet's database, for the tools that make kits up by the hundred
(``popkit sim fleet --register DB_URL``, the scale benchmark, the fault tests).

It lives with the command line, not in simulators/: a simulator only speaks the wire contract, and
the fleet's store is the fleet's own (kits registered over the API go through popkit/provision.py).
"""

from __future__ import annotations

from kits.manifest import KitManifest


def register_kits(db_url: str, kit_manifests: list[KitManifest]) -> None:
    """Register the kits in a fleet store (the database a `popkit fleet serve` uses)."""
    from fleet.store import Store  # the fleet's extra: only registering needs it

    store = Store.open(db_url)
    try:
        for m in kit_manifests:
            store.registry.register_kit(m)
    finally:
        store.close()
