"""Named leases in the database: which one of several fleet workers runs a singleton job (the gap
detector) now. A lease not renewed in time (its worker is gone) is taken over."""

from __future__ import annotations

from sqlalchemy import Engine, or_

from fleet import db


class Leases:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    def hold(self, name: str, holder: int, now: int, ttl_ms: int) -> bool:
        """Take the named lease for ``holder``, or renew it: True while ``holder`` has it. A lease not
        renewed for ``ttl_ms`` (its worker is gone) is taken over. Kept as a maintenance_state row:
        value = the holder, updated_ms = its last renewal (each worker's own clock)."""
        m = db.maintenance_state.c
        stmt = self._insert(db.maintenance_state).values(name=name, value=holder, updated_ms=now)
        ex = stmt.excluded
        stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={"value": ex.value, "updated_ms": ex.updated_ms},
                                          where=or_(m.value == ex.value, m.updated_ms < ex.updated_ms - ttl_ms))
        with self.engine.begin() as conn:  # RETURNING: psycopg reports no rowcount for an upsert
            return conn.execute(stmt.returning(m.value)).first() is not None
