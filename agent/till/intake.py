"""The catalog from the fleet: the retained ``config`` of the kit's agent, ``data == {"catalog": ...}``.

The fleet publishes ``kits.retail.catalog.catalog_json(products)`` of the kit's current event as the
agent's own desired config, its ``version`` growing with every catalog change; the link hands it
over at every (re)connect (agent/link.py ``own_config``). A config that is not a catalog this till
can sell from is counted (``Till.counts["catalog_refused"]``), logged, and the catalog in use stays.
Applied, its version goes into the agent's retained state (``config_version``), as a light's does.
"""

from __future__ import annotations

import logging

from agent.till.errors import CatalogRefused
from agent.till.service import Till
from kits.contract import Config
from kits.retail.catalog import catalog_from_json

log = logging.getLogger("popkit.agent.till.intake")


def products_of(cfg: Config):
    """The products of a catalog config; CatalogRefused says what is wrong with it."""
    doc = cfg.data.get("catalog")
    if doc is None:
        raise CatalogRefused(f"config version {cfg.version} has no catalog (data keys: "
                             f"{', '.join(sorted(cfg.data)) or 'none'})")
    try:
        return catalog_from_json(doc)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise CatalogRefused(f"config version {cfg.version}: not a catalog: {str(exc)[:300]}") from None


class CatalogIntake:
    """For the agent's config handler: ``on_config(cfg)`` from the link's network thread."""

    def __init__(self, till: Till, link=None, device: str | None = None):
        self.till, self.link, self.device = till, link, device

    def on_config(self, cfg: Config) -> bool:
        try:
            applied = self.till.load_catalog(products_of(cfg), "fleet", cfg.version)
        except CatalogRefused as exc:
            self.till.counts["catalog_refused"] += 1
            log.warning("till: catalog refused, the one in use stays: %s", exc)
            return False
        # Said again for a version applied before a restart: the agent's state starts without it.
        if self.till.catalog_info()["fleet_version"] == cfg.version and self.link is not None \
                and self.device is not None:
            self.link.set_config_version(self.device, cfg.version)
        return applied
