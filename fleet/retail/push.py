"""A kit's catalog to its till: the retained ``config`` of the kit's agent device, ``data.catalog``
(kits.retail.catalog.catalog_json) beside whatever else that config holds, under the next version.

It goes through the same machinery as lighting timelines and scanner keys (fleet/commands/:
ConfigStore.update and Publisher.update_configs), so the version only grows, the push is retained
at the broker and the agent reports the version it applied in its state.

Which event: a kit carries one event's stock at a time, so the till gets the catalog of the event
changed last (an import naming several events: the last of them by id). A config must fit the
contract's MAX_CONFIG_PAYLOAD (64 KB): ``fits`` says so before an import is stored, so a catalog
too big for its till is refused, not stored and then left unpushed.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from sqlalchemy import select

from fleet import db
from fleet.commands.store import PayloadTooLarge
from kits.contract import MAX_CONFIG_PAYLOAD, Config, encode
from kits.retail.catalog import Product, catalog_json

log = logging.getLogger("popkit.fleet.retail")


class CatalogTooBig(ValueError):
    """The catalog would not fit in the agent's config."""


def agent_of(engine, kit: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(db.kits.c.agent_id).where(db.kits.c.id == kit)).scalar()


def merged(old: dict | None, products: list[Product]) -> dict:
    return {**(old or {}), "catalog": catalog_json(products)}


class CatalogPush:
    def __init__(self, store: Any, publisher: Callable[[], Any]):
        self.store = store
        self.publisher = publisher  # () -> fleet.commands.Publisher, or None (no broker connection)

    def fits(self, kit: str, products: list[Product]) -> None:
        """Raise CatalogTooBig unless each event's catalog in ``products`` fits in the agent's config."""
        agent = agent_of(self.store.engine, kit)
        desired = (self.store.config.desired(agent) or {}) if agent else {}
        for event in sorted({p.event for p in products}):
            mine = [p for p in products if p.event == event]
            size = len(encode(Config(version=2**31, ts=2**41, data=merged(desired.get("data"), mine))))
            if size > MAX_CONFIG_PAYLOAD:
                raise CatalogTooBig(f"event {event}'s catalog ({len(mine)} products) makes the till's config "
                                    f"{size} bytes; a config is at most {MAX_CONFIG_PAYLOAD} bytes (fewer products, "
                                    f"shorter names or fewer variants, or split the catalog by event)")

    def push(self, kit: str, event: str) -> dict:
        """Push the kit's catalog of ``event`` to its agent; what happened, for the API's answer."""
        agent = agent_of(self.store.engine, kit)
        if agent is None:
            return dict(pushed=False, event=event, why="the kit's manifest names no agent")
        publisher = self.publisher()
        if publisher is None:
            return dict(pushed=False, event=event, agent=agent,
                        why="this fleet process has no broker connection: the catalog goes out with the next change")
        products = self.store.retail.catalog(kit, event)
        try:
            done = publisher.update_configs({agent: kit}, lambda old, _kit: merged(old, products))
        except PayloadTooLarge as exc:
            log.error("kit %s: catalog of %s not pushed: %s", kit, event, exc)
            return dict(pushed=False, event=event, agent=agent, why=str(exc))
        if not done:
            return dict(pushed=False, event=event, agent=agent, why=f"the kit's agent {agent} is not a registered device")
        cfg = done[0][1]
        return dict(pushed=True, event=event, agent=agent, version=cfg.version, products=len(products))
