"""What a machine token is: its scope, what each scope allows, and how a token looks.

Scopes:
- ``metrics``: GET /metrics, nothing else (Prometheus);
- ``read``: every GET route an ops user may use, but the machine tokens' and notification targets'
  routes (HIDDEN_FROM_MACHINES);
- ``kit:<kit id>``: every GET route a crew user of that one kit may use.

A machine never changes anything: every other method is refused whatever the scope. The token is
``pkm_`` and 43 URL-safe characters (32 random bytes); the prefix tells it apart from a user's JWT
(and tells a secret scanner what it is).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from kits.contract import is_valid_id

PREFIX = "pkm_"
SHOWN_PREFIX = 10  # characters of the token kept to tell tokens apart in the list: "pkm_" and 6 random
METRICS, READ, KIT = "metrics", "read", "kit:"
METRICS_PATH = "/metrics"
# Never to a machine, whatever its scope: which other machines may read the fleet, and the
# notification targets (a webhook URL is often a secret in itself: Slack's, Teams').
HIDDEN_FROM_MACHINES = ("/api/v1/machine-tokens", "/api/v1/notify")


class BadScope(ValueError):
    """Not one of the scopes above."""


def check_scope(scope: str) -> str:
    """``scope`` if valid; BadScope naming what is accepted otherwise."""
    if scope in (METRICS, READ):
        return scope
    if scope.startswith(KIT) and is_valid_id(scope[len(KIT):]):
        return scope
    raise BadScope(f"scope must be 'metrics', 'read' or 'kit:<kit id>', not {scope!r}")


def scope_kit(scope: str) -> str | None:
    return scope[len(KIT):] if scope.startswith(KIT) else None


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_machine_token(token: str) -> bool:
    return token.startswith(PREFIX)


def digest(token: str) -> str:
    """What is stored of a token: a random 256-bit secret needs no slow hash, its sha256 cannot be reversed."""
    return hashlib.sha256(token.encode()).hexdigest()


def allows(scope: str, method: str, route_path: str) -> str | None:
    """Why a token of ``scope`` may not call ``method`` on the route ``route_path`` (None: it may).
    The kit scope's kit is checked by the crew rules (fleet/auth/scope.py), not here."""
    if method not in ("GET", "HEAD"):
        return "machine tokens are read-only"
    if scope == METRICS and route_path != METRICS_PATH:
        return "this machine token is for GET /metrics only (scope metrics)"
    if route_path.startswith(HIDDEN_FROM_MACHINES):
        return "not for machine tokens: machine tokens and notification targets are for ops users only"
    return None


@dataclass(frozen=True)
class MachineToken:
    id: int
    name: str
    scope: str
    prefix: str
    created_ms: int
    created_by: str
    expires_ms: int | None
    last_used_ms: int | None
    revoked_ms: int | None
    revoked_by: str | None

    def active(self, now_ms: int) -> bool:
        return self.revoked_ms is None and (self.expires_ms is None or now_ms < self.expires_ms)

    def public(self, now_ms: int) -> dict:
        """What the API shows of a token: never the token, never its hash."""
        return dict(id=self.id, name=self.name, scope=self.scope, prefix=self.prefix, created_ms=self.created_ms,
                    created_by=self.created_by, expires_ms=self.expires_ms, last_used_ms=self.last_used_ms,
                    revoked_ms=self.revoked_ms, revoked_by=self.revoked_by, active=self.active(now_ms))
