"""A kit's kit-up history: every ``readiness`` event its agent sent (the power-up self-test, a press
of the panel's button, ``popkit kit up``), newest first, each with its problems and their fixes, so
the crew can see what was wrong at each check and what they were told to do."""

from __future__ import annotations

import json

from sqlalchemy import Engine, select

from fleet import db
from fleet.health import readiness_view


def readiness_history(engine: Engine, kit_id: str, limit: int = 20, before_ms: int | None = None) -> list[dict] | None:
    """The kit's readiness reports by their time, newest first (``before_ms``: the page before that);
    None for an unknown kit. Read from the agents' event rows through ix_events_device_ts."""
    d, e = db.devices.c, db.events.c
    with engine.connect() as conn:
        if conn.execute(select(db.kits.c.id).where(db.kits.c.id == kit_id)).first() is None:
            return None
        agents = select(d.id).where(d.kit_id == kit_id, d.role == "agent")
        q = (select(e.device_id, e.body).where(e.device_id.in_(agents), e.channel == "event", e.kind == "readiness")
             .order_by(e.ts_ms.desc(), e.id.desc()).limit(limit))
        if before_ms is not None:
            q = q.where(e.ts_ms < before_ms)
        return [readiness_view(r.device_id, json.loads(r.body)) for r in conn.execute(q)]
