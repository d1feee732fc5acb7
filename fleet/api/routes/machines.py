"""Machine tokens, for ops (fleet/machines/): list, create (the token is in that answer only), revoke.

Every create and revoke is in the audit log, naming the token's id (fleet/auth/audit.py records the
revokes; a create records itself); the token is in the create's answer only, its hash nowhere.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleet import db
from fleet.api.deps import StoreDep
from fleet.api.schemas import BAD_BODY, refusals
from fleet.auth.audit import ApiAudit
from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.users import NAME_PATTERN
from fleet.db import now_ms
from fleet.machines import model

router = APIRouter(prefix="/api/v1/machine-tokens", tags=["machine tokens"], dependencies=guard("ops"),
                   responses=AUTH_RESPONSES)

SCOPE_PATTERN = r"^(metrics|read|kit:[a-z0-9][a-z0-9_-]{0,62})$"
MAX_DAYS = 3650
DAY_MS = 86_400_000
TokenId = Annotated[int, Path(ge=1, description="the token's id, from the list")]


class MachineTokenOut(BaseModel):
    id: int
    name: str
    scope: str = Field(description="metrics (GET /metrics only), read (every read route), or kit:<kit id>")
    prefix: str = Field(description="the token's first characters, to tell tokens apart; never the rest")
    created_ms: int
    created_by: str
    expires_ms: int | None = Field(description="null: until revoked")
    last_used_ms: int | None = Field(description="to the minute")
    revoked_ms: int | None
    revoked_by: str | None
    active: bool = Field(description="neither revoked nor expired: it is accepted")


class MachineTokenCreated(MachineTokenOut):
    token: str = Field(description="the token, shown in this answer only: send it as Authorization: Bearer")


class MachineTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="what uses it (e.g. prometheus): lower case, "
                                                        "letters, digits, . _ @ -")
    scope: str = Field(pattern=SCOPE_PATTERN, description="metrics, read, or kit:<kit id>")
    expires_in_days: int | None = Field(default=None, ge=1, le=MAX_DAYS, description="omitted: until revoked")


@router.get("", response_model=list[MachineTokenOut])
def list_machine_tokens(store: StoreDep):
    """Every machine token, newest first, revoked ones too: never the token itself."""
    now = now_ms()
    return [m.public(now) for m in store.machines.all()]


@router.post("", status_code=201, response_model=MachineTokenCreated, responses=refusals({
    **BAD_BODY, 409: "an active token has that name already", 422: "a bad name or scope, or a kit the fleet does not know"}))
def create_machine_token(body: MachineTokenIn, store: StoreDep, me: UserDep, response: Response):
    """A new token for a machine. The answer holds the token: it is not stored, and cannot be shown again."""
    kit = model.scope_kit(body.scope)
    if kit is not None:
        with store.engine.connect() as conn:
            if conn.execute(select(db.kits.c.id).where(db.kits.c.id == kit)).first() is None:
                raise HTTPException(status_code=422, detail=f"scope {body.scope!r}: no kit {kit!r} is registered")
    if store.machines.active_named(body.name) is not None:
        raise HTTPException(status_code=409, detail=f"an active machine token is named {body.name!r}: revoke it "
                                                    "first, or pick another name")
    expires = now_ms() + body.expires_in_days * DAY_MS if body.expires_in_days else None
    made, token = store.machines.create(body.name, body.scope, me.name, expires)
    # Recorded here, not by the audit middleware (OWN_RECORDS): the entry names the token made.
    ApiAudit(store.engine).record(me.name, "POST", "/api/v1/machine-tokens", f"/api/v1/machine-tokens/{made.id}", 201)
    response.headers["Cache-Control"] = "no-store"  # the token must not sit in a cache
    return MachineTokenCreated(**made.public(now_ms()), token=token)


@router.post("/{token_id}/revoke", response_model=MachineTokenOut, responses=refusals({404: "no such token"}))
def revoke_machine_token(token_id: TokenId, store: StoreDep, me: UserDep):
    """The token stops working at once; it stays listed, revoked, with who revoked it and when."""
    revoked = store.machines.revoke(token_id, me.name)
    if revoked is None:
        raise HTTPException(status_code=404, detail=f"no machine token {token_id}")
    return revoked.public(now_ms())
