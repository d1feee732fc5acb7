"""How the till's sales reach the fleet: as the agent's own events, through the link's outbox.

An order or refund leaves the outbox only when the fleet's receipt names it (agent/link.py), so
"still in the outbox" is exactly "not uploaded yet": :meth:`LinkUplink.waiting` asks the outbox.
"""

from __future__ import annotations

from typing import Protocol

from kits.contract import Event


class Uplink(Protocol):
    def send(self, kind: str, data: dict, ts: int) -> tuple[str, int]:
        """Queue one event (durably); its outbox key (boot, seq)."""

    def waiting(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """The keys among ``keys`` the fleet has not receipted yet."""


class LinkUplink:
    """The agent's FleetLink, speaking for ``device`` (the agent)."""

    def __init__(self, link, device: str):
        self.link, self.device = link, device

    def send(self, kind: str, data: dict, ts: int) -> tuple[str, int]:
        seq = self.link.emit(self.device, "event", Event, ts=ts, kind=kind, data=data)
        return self.link.boot, seq

    def waiting(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        return self.link.outbox.waiting(self.device, keys)
