"""Commands (channel ``cmd``) and desired config (channel ``config``) as the fleet records them.

The database is the record, the broker only carries (fleet/commands/delivery.py): a command is
stored as ``pending`` before it is published, so its ``ack`` always finds it (the ledger settles
it in the batch that stores the ack), and a desired config is committed, with its new version,
before it is published retained.
"""

from __future__ import annotations

from typing import Callable

from sqlalchemy import Engine, bindparam, select, update

from fleet import db
from fleet.changes import Changes
from fleet.db import now_ms
from kits.contract import MAX_CONFIG_PAYLOAD, Command, Config, encode


class PayloadTooLarge(ValueError):
    """What the fleet would publish is over the contract's size limit for its channel."""


class CommandStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, device_id: str, cmd: Command, requested_by: str | None = None) -> None:
        """Record a command as pending; call before publishing it, so its ack always finds it."""
        with self.engine.begin() as conn:
            conn.execute(db.commands.insert().values(
                id=cmd.id, device_id=device_id, action=cmd.action, args=cmd.args, ts_ms=cmd.ts,
                expires_ms=cmd.expires, status="pending", requested_by=requested_by))

    def pending(self, device_ids: list[str], since_ms: int) -> list[tuple[str, Command]]:
        """(device, command) for each command these devices have not answered, asked since
        ``since_ms``, oldest first: one query for a whole batch of births (a reconnect storm)."""
        c = db.commands.c
        q = (select(c.device_id, c.id, c.ts_ms, c.expires_ms, c.action, c.args)
             .where(c.device_id.in_(device_ids), c.status == "pending", c.ts_ms >= since_ms)
             .order_by(c.ts_ms, c.id))
        with self.engine.connect() as conn:
            return [(r.device_id, Command(id=r.id, ts=r.ts_ms, expires=r.expires_ms, action=r.action,
                                          args=r.args or {})) for r in conn.execute(q)]

    def for_device(self, device_id: str, limit: int = 50, now: int | None = None) -> list[dict]:
        """A device's commands, newest first."""
        c = db.commands.c
        q = select(db.commands).where(c.device_id == device_id).order_by(c.ts_ms.desc(), c.id).limit(limit)
        with self.engine.connect() as conn:
            return [command_view(r, now or now_ms()) for r in conn.execute(q).mappings()]

    def get(self, command_id: str, now: int | None = None) -> dict | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(db.commands).where(db.commands.c.id == command_id)).mappings().first()
        return command_view(r, now or now_ms()) if r else None

    def settle_acks(self, conn, new: list) -> None:
        """A device's answer settles its own pending command (the first answer wins; a device
        cannot settle another device's command)."""
        rows = [dict(b_id=m.msg.cmd_id, b_dev=m.device_id, b_status=m.msg.status, b_detail=m.msg.detail, b_ms=m.msg.ts)
                for m in new if m.channel == "ack"]
        if not rows:
            return
        c = db.commands.c
        conn.execute(
            update(db.commands)
            .where(c.id == bindparam("b_id"), c.device_id == bindparam("b_dev"), c.status == "pending")
            .values(status=bindparam("b_status"), detail=bindparam("b_detail"), acked_ms=bindparam("b_ms")),
            rows,
        )


class ConfigStore:
    def __init__(self, engine: Engine, changes: Changes):
        self.engine = engine
        self.changes = changes
        self._insert = db.upsert_for(engine)

    def desired(self, device_id: str) -> dict | None:
        """The desired config next to the version the device reports applied; None for no such device."""
        d, dc = db.devices.c, db.desired_config.c
        q = (select(d.config_version, dc.version, dc.ts_ms, dc.data)
             .select_from(db.devices.outerjoin(db.desired_config, dc.device_id == d.id))
             .where(d.id == device_id))
        with self.engine.connect() as conn:
            r = conn.execute(q).first()
        if r is None:
            return None
        return dict(device_id=device_id, version=r.version, ts=r.ts_ms, data=r.data, applied_version=r.config_version,
                    in_sync=r.version is None or r.config_version == r.version)

    def update(self, device_ids: list[str], change: Callable[[dict | None], dict],
                       ts: int | None = None) -> list[tuple[str, Config]]:
        """Set each device's desired config to ``change(current data or None)``, in one transaction.

        The new version is one more than both the last desired version and the version the device
        reports applied, so a version is never reused (not even after the fleet's database was
        rebuilt, which a device would otherwise take for "already applied"). Rows are locked
        (PostgreSQL: FOR UPDATE), so concurrent merges serialise instead of losing each other's
        changes. Raises PayloadTooLarge, writing nothing, if any result is over the contract's
        64 KiB. Returns (device_id, Config) in device id order, to publish after the commit.
        """
        ts = ts or now_ms()
        ids = sorted(set(device_ids))
        if not ids:
            return []
        d, dc = db.devices.c, db.desired_config.c
        out: list[tuple[str, Config]] = []
        kits: set[str] = set()
        with self.engine.begin() as conn:
            # A row to lock even for a device's first config; version 0 never outlives this transaction.
            conn.execute(self._insert(db.desired_config)
                         .values([dict(device_id=i, version=0, ts_ms=ts, data={}) for i in ids])
                         .on_conflict_do_nothing(index_elements=["device_id"]))
            rows = conn.execute(
                select(dc.device_id, dc.version, dc.data, d.config_version, d.kit_id)
                .select_from(db.desired_config.join(db.devices, d.id == dc.device_id))
                .where(dc.device_id.in_(ids)).order_by(dc.device_id)
                .with_for_update(of=db.desired_config)
            ).all()
            for r in rows:
                data = change(r.data if r.version else None)
                version = max(r.version, r.config_version or 0) + 1
                cfg = Config(version=version, ts=ts, data=data)
                size = len(encode(cfg))
                if size > MAX_CONFIG_PAYLOAD:
                    raise PayloadTooLarge(f"config for {r.device_id} would be {size} bytes; "
                                          f"the contract allows {MAX_CONFIG_PAYLOAD}")
                conn.execute(update(db.desired_config).where(dc.device_id == r.device_id)
                             .values(version=version, ts_ms=ts, data=data))
                out.append((r.device_id, cfg))
                kits.add(r.kit_id)
        self.changes.tell(kits, set(ids))
        return out

    def all_desired(self) -> list[tuple[str, str, Config]]:
        """Every desired config as (kit_id, device_id, Config): to publish again after the broker
        lost its retained messages."""
        d, dc = db.devices.c, db.desired_config.c
        q = (select(d.kit_id, dc.device_id, dc.version, dc.ts_ms, dc.data)
             .select_from(db.desired_config.join(db.devices, d.id == dc.device_id)).where(dc.version > 0)
             .order_by(dc.device_id))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [(r.kit_id, r.device_id, Config(version=r.version, ts=r.ts_ms, data=r.data)) for r in rows]


def command_view(r, now: int) -> dict:
    status, detail = r["status"], r["detail"]
    if status == "pending" and now > r["expires_ms"]:
        # The device will refuse it now (it never runs a command past its expiry).
        status, detail = "expired", "no answer before it expired"
    return dict(id=r["id"], device_id=r["device_id"], action=r["action"], args=r["args"], ts=r["ts_ms"],
                expires=r["expires_ms"], status=status, detail=detail, acked_ms=r["acked_ms"],
                requested_by=r["requested_by"])
