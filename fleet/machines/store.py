"""Machine tokens in the database (fleet/machines/tables.py): made, listed, checked, revoked.

Checking a token is a lookup of its sha256. Its last use is written at most once a minute per token:
Prometheus scraping every 15 s should not make a write of every scrape.
"""

from __future__ import annotations

from sqlalchemy import Engine, select, update

from fleet.db import now_ms
from fleet.machines import model
from fleet.machines.model import MachineToken
from fleet.machines.tables import machine_tokens as t

LAST_USED_EVERY_MS = 60_000


def _token(r) -> MachineToken:
    return MachineToken(r.id, r.name, r.scope, r.prefix, r.created_ms, r.created_by, r.expires_ms, r.last_used_ms,
                        r.revoked_ms, r.revoked_by)


class MachineTokenStore:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create(self, name: str, scope: str, by: str, expires_ms: int | None = None) -> tuple[MachineToken, str]:
        """A new token: its record and the token itself, which is not kept (shown once)."""
        model.check_scope(scope)
        token = model.new_token()
        now = now_ms()
        with self.engine.begin() as conn:
            new_id = conn.execute(t.insert().values(
                name=name, scope=scope, token_sha256=model.digest(token), prefix=token[:model.SHOWN_PREFIX],
                created_ms=now, created_by=by, expires_ms=expires_ms)).inserted_primary_key[0]
        return self.get(new_id), token

    def get(self, token_id: int) -> MachineToken | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(t).where(t.c.id == token_id)).first()
        return _token(r) if r else None

    def all(self) -> list[MachineToken]:
        """Newest first, revoked ones too (the record of what could read the fleet, and until when)."""
        with self.engine.connect() as conn:
            return [_token(r) for r in conn.execute(select(t).order_by(t.c.id.desc()))]

    def active_named(self, name: str) -> MachineToken | None:
        now = now_ms()
        with self.engine.connect() as conn:
            rows = [_token(r) for r in conn.execute(select(t).where(t.c.name == name, t.c.revoked_ms.is_(None)))]
        return next((m for m in rows if m.active(now)), None)

    def check(self, token: str) -> MachineToken | None:
        """The token's record if it is one of ours, not revoked and not expired; None otherwise."""
        with self.engine.connect() as conn:
            r = conn.execute(select(t).where(t.c.token_sha256 == model.digest(token))).first()
        if r is None:
            return None
        found, now = _token(r), now_ms()
        if not found.active(now):
            return None
        if found.last_used_ms is None or now - found.last_used_ms >= LAST_USED_EVERY_MS:
            with self.engine.begin() as conn:
                conn.execute(update(t).where(t.c.id == found.id).values(last_used_ms=now))
        return found

    def revoke(self, token_id: int, by: str) -> MachineToken | None:
        """Revoked from now (a second revoke keeps the first's time and name); None: no such token."""
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.id == token_id, t.c.revoked_ms.is_(None))
                         .values(revoked_ms=now_ms(), revoked_by=by))
        return self.get(token_id)
