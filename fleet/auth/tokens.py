"""Bearer tokens: JWT (HS256) signed with the service's key, naming the user and their token
generation, expiring after token_ttl_s. A token is checked against the user record on every request
(fleet/auth/deps.py), so a disabled user or a changed password ends every older token."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from fleet.auth import AuthError

ALGORITHM = "HS256"
AUDIENCE = "popkit-fleet-api"


class BadToken(AuthError):
    """Not a token this service signed, tampered with, or expired."""


@dataclass(frozen=True)
class Claims:
    name: str
    gen: int
    expires: int  # seconds since the epoch


def issue(key: bytes, name: str, gen: int, ttl_s: int, now: float | None = None) -> str:
    iat = int(now if now is not None else time.time())
    return jwt.encode({"sub": name, "gen": gen, "iat": iat, "exp": iat + ttl_s, "aud": AUDIENCE}, key,
                      algorithm=ALGORITHM)


def verify(key: bytes, token: str) -> Claims:
    try:
        claims = jwt.decode(token, key, algorithms=[ALGORITHM], audience=AUDIENCE,
                            options={"require": ["sub", "gen", "exp", "aud"]})
    except jwt.PyJWTError:
        raise BadToken("invalid or expired token") from None
    if not isinstance(claims["sub"], str) or not isinstance(claims["gen"], int):
        raise BadToken("invalid or expired token")
    return Claims(claims["sub"], claims["gen"], int(claims["exp"]))
