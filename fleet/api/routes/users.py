"""The API's users, for ops: list, one, create or change (role, scope, password, disabled), delete,
and a generated password. Password hashes never leave the database; a password set here is never
echoed back, and a generated one is in the one answer that made it and nowhere else."""

from __future__ import annotations

from typing import Annotated, Literal

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from fleet.api.schemas import BAD_BODY, refusals
from fleet.auth import passwords
from fleet.auth.deps import AUTH_RESPONSES, UserDep, get_auth, guard
from fleet.auth.users import NAME_PATTERN, RESERVED_NAMES
from kits.contract import Id

router = APIRouter(prefix="/api/v1/users", tags=["users"], dependencies=guard("ops"), responses=AUTH_RESPONSES)

UserName = Annotated[str, Path(pattern=NAME_PATTERN, description="lower case: letters, digits, . _ @ -")]


class UserOut(BaseModel):
    name: str
    role: Literal["ops", "crew", "venue"]
    kits: list[str]
    venues: list[str]
    disabled: bool
    has_password: bool = Field(description="false: the user cannot sign in with a password yet")
    created_ms: int
    updated_ms: int


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["ops", "crew", "venue"]
    kits: list[Id] = Field(default_factory=list, max_length=1000, description="crew: the kits they see")
    venues: list[Id] = Field(default_factory=list, max_length=1000, description="venue users: the venues they see")
    password: SecretStr | None = Field(default=None, description=f"a new password ({passwords.MIN_LENGTH}+ "
                                       "characters); every token issued before stops working. Omitted: unchanged")
    disabled: bool = Field(default=False, description="true: cannot sign in, and every token stops working")


class NewPasswordOut(BaseModel):
    name: str
    password: str = Field(description="shown once: the fleet keeps only its hash")


def _users(request: Request):
    return get_auth(request).users


@router.get("", response_model=list[UserOut])
def list_users(request: Request):
    """Every user with their role and scope."""
    return [u.public() for u in _users(request).all()]


@router.get("/{name}", response_model=UserOut, responses=refusals({404: "no such user"}))
def get_user(name: UserName, request: Request):
    user = _users(request).get(name)
    if user is None:
        raise HTTPException(status_code=404, detail=f"no user {name!r}")
    return user.public()


@router.put("/{name}", response_model=UserOut, responses=refusals({
    **BAD_BODY, 409: "a change that would lock you out (disabling or demoting yourself)",
    422: "a reserved name, a scope that does not fit the role, or a short password"}))
async def put_user(name: UserName, body: UserIn, request: Request, me: UserDep):
    """Create a user or change one: role and scope (crew: kits; venue: venues), optionally a password,
    disabled. A new password or disabling ends the user's tokens."""
    if name in RESERVED_NAMES:
        raise HTTPException(status_code=422, detail=f"{name!r} is reserved: the records use it for something else")
    if body.role != "crew" and body.kits:
        raise HTTPException(status_code=422, detail="kits: only crew users have kits")
    if body.role != "venue" and body.venues:
        raise HTTPException(status_code=422, detail="venues: only venue users have venues")
    if name == me.name and (body.disabled or body.role != "ops"):
        raise HTTPException(status_code=409, detail="you cannot disable or demote yourself: ask another ops user")
    hashed = None
    if body.password is not None:
        secret = body.password.get_secret_value()
        if len(secret) < passwords.MIN_LENGTH:  # said without echoing it back, as a 422 of pydantic would
            raise HTTPException(status_code=422, detail=f"password: at least {passwords.MIN_LENGTH} characters")
        hashed = await to_thread.run_sync(passwords.hash_password, secret)  # ~50 ms of argon2id
    user = await to_thread.run_sync(lambda: _users(request).put(name, body.role, body.kits, body.venues,
                                                                password_hash=hashed, disabled=body.disabled))
    return user.public()


@router.delete("/{name}", status_code=204, response_class=Response,
               responses=refusals({404: "no such user", 409: "deleting yourself"}))
def delete_user(name: UserName, request: Request, me: UserDep):
    """Delete a user: their tokens stop working at once."""
    if name == me.name:
        raise HTTPException(status_code=409, detail="you cannot delete yourself: ask another ops user")
    if not _users(request).delete(name):
        raise HTTPException(status_code=404, detail=f"no user {name!r}")
    return Response(status_code=204)


@router.post("/{name}/password", response_model=NewPasswordOut, responses=refusals({404: "no such user"}))
async def new_user_password(name: UserName, request: Request, response: Response):
    """Give the user a new generated password, returned in this answer only (no cache keeps it):
    every token they had stops working. How ops hand a new user their first password."""
    users = _users(request)
    user = users.get(name)
    if user is None:
        raise HTTPException(status_code=404, detail=f"no user {name!r}")
    secret = passwords.new_password()
    hashed = await to_thread.run_sync(passwords.hash_password, secret)  # ~50 ms of argon2id
    await to_thread.run_sync(lambda: users.put(name, user.role, user.kits, user.venues, password_hash=hashed))
    response.headers["Cache-Control"] = "no-store"
    return {"name": name, "password": secret}
