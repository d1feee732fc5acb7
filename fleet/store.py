"""The fleet's storage: one SQLAlchemy engine (SQLite or PostgreSQL) and a store per concern over it.

Each concern owns its tables and its transactions, in the package of its feature:

* ``ledger``    every message stored once, receipts' commits, gaps, dead letters (fleet/ledger/)
* ``registry``  kits and devices, with what their manifests say (fleet/registry/)
* ``commands``, ``config``  what the fleet asks of devices (fleet/commands/)
* ``alerts``    the alerts table and its history (fleet/alerts/)
* ``retention`` rollups and deletion of old telemetry (fleet/retention/)
* ``leases``    which worker runs a singleton job (fleet/leases.py)
* ``devices``, ``telemetry``, ``health``, ``activity``  the read models behind the API (fleet/views/)
* ``updates``   releases, rollouts, each device's update and crews' holds (fleet/updates/)

Feature packages with tables of their own (fleet/venues/, fleet/tickets/, fleet/auth/) build
their stores over ``engine`` the same way. Writes tell ``changes`` after their commit.
"""

from __future__ import annotations

from sqlalchemy import Engine

from fleet import db
from fleet.alerts.store import AlertStore
from fleet.changes import Changes
from fleet.commands.store import CommandStore, ConfigStore
from fleet.leases import Leases
from fleet.ledger.model import HISTORICAL_AFTER_MS
from fleet.ledger.store import LedgerStore
from fleet.machines.store import MachineTokenStore
from fleet.notify.store import NotifyStore
from fleet.registry.store import RegistryStore
from fleet.retention.store import RetentionStore
from fleet.retail.store import RetailStore
from fleet.updates.store import UpdateStore
from fleet.views.activity import ActivityViews
from fleet.views.devices import DeviceViews
from fleet.views.health import HealthViews
from fleet.views.telemetry import TelemetryViews


class Store:
    def __init__(self, engine: Engine, dead_letter_cap: int = 10_000, historical_after_ms: int = HISTORICAL_AFTER_MS):
        self.engine = engine
        self.changes = Changes()
        self.registry = RegistryStore(engine, self.changes)
        self.commands = CommandStore(engine)
        self.config = ConfigStore(engine, self.changes)
        self.ledger = LedgerStore(engine, self.registry, self.changes, dead_letter_cap=dead_letter_cap)
        self.ledger.event_hooks.append(self.commands.settle_acks)  # a device's answer settles its command
        self.alerts = AlertStore(engine)
        self.retention = RetentionStore(engine)
        self.leases = Leases(engine)
        self.devices = DeviceViews(engine)
        self.telemetry = TelemetryViews(engine, historical_after_ms)
        self.health = HealthViews(engine, self.devices, self.registry)
        self.activity = ActivityViews(engine, historical_after_ms)
        self.updates = UpdateStore(engine)  # releases, rollouts, device updates, kit holds (fleet/updates/)
        self.retail = RetailStore(engine)  # each kit's catalog, the tills' orders (fleet/retail/)
        self.machines = MachineTokenStore(engine)  # scoped API tokens for machines (fleet/machines/)
        self.notify = NotifyStore(engine)  # notification targets, escalations, sends (fleet/notify/)
        self.ledger.event_hooks.append(self.retail.orders.record)  # orders held before their receipt goes out
        self.ledger.state_hooks.append(self.updates.states_reported)  # a device's A/B news moves its update
        self.ledger.event_hooks.append(self.updates.acks_reported)  # an agent's answer to an update command

    @classmethod
    def open(cls, url: str, **kwargs) -> "Store":
        engine = db.make_engine(url)
        db.migrate(engine)
        return cls(engine, **kwargs)

    def close(self) -> None:
        self.engine.dispose()
