"""API users: a name, a role and, for crew and venue users, what they see.

- ops: the whole fleet, and the users;
- crew: their kits (kit pages, devices, commands, config, alerts, check-ins, their events);
- venue: their venues' lighting (zones, scenes, schedules, overrides, the controllers' sync).

Stored in the ``users`` table (fleet/db.py). ``token_gen`` goes into every token the user gets; it is
raised when the password changes or the user is disabled, which ends every older token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import Engine, delete, select, update

from fleet import db

Role = Literal["ops", "crew", "venue"]
ROLES: tuple[Role, ...] = ("ops", "crew", "venue")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._@-]{0,62}$"
# Names the records already use for something else: alerts resolved by themselves ("auto"), webhook
# notifications, and the default "by" of the days before sign-in ("api").
RESERVED_NAMES = frozenset({"auto", "webhook", "api"})


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    kits: tuple[str, ...] = ()
    venues: tuple[str, ...] = ()
    disabled: bool = False
    token_gen: int = 0
    password_hash: str | None = field(default=None, repr=False)  # never in a repr, a log or a response
    created_ms: int = 0
    updated_ms: int = 0
    # A machine token's scope (fleet/machines/): this "user" is a machine, read-only, no users row.
    machine_scope: str | None = None

    def public(self) -> dict:
        """What the API shows of a user: never the hash."""
        return dict(name=self.name, role=self.role, kits=list(self.kits), venues=list(self.venues),
                    disabled=self.disabled, has_password=self.password_hash is not None,
                    created_ms=self.created_ms, updated_ms=self.updated_ms)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _user(r) -> User:
    return User(name=r.name, role=r.role, kits=tuple(r.kits or ()), venues=tuple(r.venues or ()),
                disabled=bool(r.disabled), token_gen=r.token_gen, password_hash=r.password_hash,
                created_ms=r.created_ms, updated_ms=r.updated_ms)


class UserStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._insert = db.upsert_for(engine)

    def get(self, name: str) -> User | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(db.users).where(db.users.c.name == name)).first()
        return _user(r) if r else None

    def all(self) -> list[User]:
        with self.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(db.users).order_by(db.users.c.name))]

    def put(self, name: str, role: Role, kits: list[str] | tuple = (), venues: list[str] | tuple = (),
            password_hash: str | None = None, disabled: bool | None = None, keep_password: bool = True) -> User:
        """Create or update a user. A new password hash, or disabling, raises token_gen (old tokens end).
        ``keep_password``: without a new hash, keep the one stored (else clear it)."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        now = _now_ms()
        u = db.users.c
        with self.engine.begin() as conn:
            old = conn.execute(select(db.users).where(u.name == name)).first()
            new_hash = password_hash if password_hash is not None else (old.password_hash if old and keep_password
                                                                         else None)
            new_disabled = bool(disabled) if disabled is not None else (bool(old.disabled) if old else False)
            gen = old.token_gen if old else 0
            if old and (new_hash != old.password_hash or (new_disabled and not old.disabled)):
                gen += 1
            row = dict(name=name, role=role, kits=sorted(set(kits)), venues=sorted(set(venues)),
                       password_hash=new_hash, disabled=new_disabled, token_gen=gen, updated_ms=now)
            if old is None:
                conn.execute(db.users.insert().values(**row, created_ms=now))
            else:
                conn.execute(update(db.users).where(u.name == name).values(**row))
        return self.get(name)

    def set_disabled(self, name: str, disabled: bool = True) -> User | None:
        user = self.get(name)
        if user is None:
            return None
        return self.put(name, user.role, user.kits, user.venues, disabled=disabled)

    def end_sessions(self, name: str) -> None:
        """Every token issued to the user so far stops working (signing out everywhere)."""
        u = db.users.c
        with self.engine.begin() as conn:
            conn.execute(update(db.users).where(u.name == name).values(token_gen=u.token_gen + 1,
                                                                      updated_ms=_now_ms()))

    def delete(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(delete(db.users).where(db.users.c.name == name)).rowcount)
