"""Signing in and out: ``POST /api/v1/auth/token`` (the OAuth2 password flow), logout, and who am I.

The token comes back in the body (for scripts: ``Authorization: Bearer ...``) and as an HttpOnly,
SameSite=Strict cookie for the dashboard, whose fetches and EventSource (which cannot send headers)
carry it without any script ever holding it.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel, Field

from fleet.api.schemas import refusals
from fleet.auth.deps import AUTH_RESPONSES, COOKIE, UserDep, same_origin, get_auth, guard
from fleet.auth.login import LoginFailed, TooManyAttempts

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="seconds until the token expires")


class MeOut(BaseModel):
    name: str
    role: Literal["ops", "crew", "venue"]
    kits: list[str] = Field(description="crew: the kits they see")
    venues: list[str] = Field(description="venue users: the venues they see")


@router.post("/token", response_model=TokenOut, responses=refusals({
    401: "incorrect user name or password (the same answer for a user that does not exist or is disabled)",
    403: "a sign-in sent from another site's page", 429: "too many failed logins for this name: wait Retry-After s"}))
def login(form: Annotated[OAuth2PasswordRequestForm, Depends()], request: Request, response: Response):
    """Sign in with a user name and password (form fields ``username``, ``password``): a bearer token,
    also set as the dashboard's HttpOnly cookie."""
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(request):
        raise HTTPException(status_code=403, detail="cross-site sign-in refused")
    auth = get_auth(request)
    try:
        _user, token = auth.login(form.username, form.password)
    except TooManyAttempts as exc:
        raise HTTPException(status_code=429, detail=str(exc),
                            headers={"Retry-After": str(math.ceil(exc.wait_s))}) from None
    except LoginFailed as exc:
        raise HTTPException(status_code=401, detail=str(exc), headers={"WWW-Authenticate": "Bearer"}) from None
    response.set_cookie(COOKIE, token, max_age=auth.ttl_s, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    response.headers["Cache-Control"] = "no-store"
    return TokenOut(access_token=token, expires_in=auth.ttl_s)


@router.post("/logout", status_code=204, response_class=Response, dependencies=guard("ops", "crew", "venue"),
             responses=AUTH_RESPONSES)
def logout(request: Request, user: UserDep,
           everywhere: Annotated[bool, Query(description="also end every other token of this user")] = False):
    """Sign out: the dashboard's cookie is cleared; ``everywhere`` also ends every token issued so far."""
    if everywhere:
        get_auth(request).users.end_sessions(user.name)
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.get("/me", response_model=MeOut, dependencies=guard("ops", "crew", "venue"), responses=AUTH_RESPONSES)
def get_me(user: UserDep):
    """Who is signed in, their role and what they see."""
    return MeOut(name=user.name, role=user.role, kits=list(user.kits), venues=list(user.venues))
