"""The fleet's event keys and revocations (tables ``event_keys`` and ``revocations``, fleet/db.py)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from fleet import db
from fleet.tickets.model import KeySpec, Revocation


class TicketStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    # ------------------------------------------------------------ keys

    def put_key(self, key: KeySpec, now_ms: int, by: str | None) -> None:
        row = dict(event_id=key.event_id, key_hex=key.key_hex, not_before=key.not_before, expires=key.expires,
                   kits=sorted(key.kits) if key.kits is not None else None, updated_ms=now_ms, updated_by=by)
        stmt = self._insert(db.event_keys).values(**row)
        stmt = stmt.on_conflict_do_update(index_elements=["event_id"],
                                          set_={k: v for k, v in row.items() if k != "event_id"})
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def keys(self) -> list[KeySpec]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.event_keys).order_by(db.event_keys.c.event_id)).all()
        return [KeySpec(r.event_id, r.key_hex, r.not_before, r.expires,
                        frozenset(r.kits) if r.kits is not None else None) for r in rows]

    def key(self, event_id: str) -> KeySpec | None:
        return next((k for k in self.keys() if k.event_id == event_id), None)

    # ------------------------------------------------------------ revocations

    def add(self, revs: list[Revocation], conn=None) -> list[Revocation]:
        """Keep each revocation unless its ticket is revoked already (the first one stays). Returns the new ones.
        ``conn``: inside a caller's transaction (ingest's batch), else in one of its own."""
        if conn is None:
            with self.engine.begin() as own:
                return self.add(revs, own)
        r = db.revocations.c
        new = []
        for rev in revs:
            stmt = self._insert(db.revocations).values(
                event_id=rev.event_id, ticket=rev.ticket, revoked_by=rev.revoked_by[:63],
                revoked_at=rev.revoked_at[:140], revoked_ms=rev.revoked_ms, kit_id=rev.kit_id
            ).on_conflict_do_nothing(index_elements=[r.event_id, r.ticket])
            if conn.execute(stmt).rowcount:
                new.append(rev)
        return new

    def revoked(self, event_id: str) -> list[Revocation]:
        r = db.revocations.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.revocations).where(r.event_id == event_id)
                                .order_by(r.revoked_ms, r.ticket)).all()
        return [Revocation(x.event_id, x.ticket, x.revoked_by, x.revoked_at, x.revoked_ms, x.kit_id) for x in rows]

    def revoked_ids(self) -> dict[str, list[str]]:
        """Every event's revoked tickets, in the order they were revoked."""
        r = db.revocations.c
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for event_id, ticket in conn.execute(select(r.event_id, r.ticket).order_by(r.revoked_ms, r.ticket)):
                out.setdefault(event_id, []).append(ticket)
        return out

    def events(self) -> set[str]:
        """Events the fleet knows of here: a key, or a revocation."""
        with self.engine.connect() as conn:
            return ({e for (e,) in conn.execute(select(db.event_keys.c.event_id))}
                    | {e for (e,) in conn.execute(select(db.revocations.c.event_id).distinct())})
