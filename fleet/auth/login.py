"""Signing in and checking who a token belongs to: the key, the users and the login throttle together
(one per app, on app.state.auth)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fleet.auth import AuthError, passwords, tokens
from fleet.auth.throttle import LoginThrottle
from fleet.auth.users import User, UserStore

log = logging.getLogger("popkit.fleet.auth")


class LoginFailed(AuthError):
    """Wrong name or password, or a disabled user: one message for all, so it tells nothing."""


class TooManyAttempts(AuthError):
    def __init__(self, wait_s: float):
        super().__init__(f"too many failed logins: try again in {wait_s:.0f} s")
        self.wait_s = wait_s


@dataclass
class LoginMetrics:
    succeeded: int = 0
    failed: int = 0
    throttled: int = 0


@dataclass
class Auth:
    key: bytes = field(repr=False)
    users: UserStore
    ttl_s: int = 12 * 3600
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    metrics: LoginMetrics = field(default_factory=LoginMetrics)

    def login(self, name: str, password: str) -> tuple[User, str]:
        """The user and a new token; LoginFailed or TooManyAttempts otherwise."""
        wait = self.throttle.wait_s(name)
        if wait > 0:
            self.metrics.throttled += 1
            raise TooManyAttempts(wait)
        user = self.users.get(name)
        ok = passwords.verify_password(user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            self.throttle.failed(name)
            self.metrics.failed += 1
            # Never what was typed as the password; and the name only if it is a user's: an unknown
            # "name" is often a password typed into the wrong field.
            log.info("failed login for %s", repr(user.name) if user else "an unknown user name")
            raise LoginFailed("incorrect user name or password")
        self.throttle.succeeded(name)
        self.metrics.succeeded += 1
        if passwords.needs_rehash(user.password_hash):
            user = self.users.put(user.name, user.role, user.kits, user.venues,
                                  password_hash=passwords.hash_password(password))
        log.info("%s signed in (%s)", user.name, user.role)
        return user, self.token_for(user)

    def token_for(self, user: User) -> str:
        return tokens.issue(self.key, user.name, user.token_gen, self.ttl_s)

    def user_for(self, token: str) -> User:
        """The user a token names, if it is valid, unexpired, of the user's current generation and the
        user is enabled; tokens.BadToken otherwise."""
        claims = tokens.verify(self.key, token)
        user = self.users.get(claims.name)
        if user is None or user.disabled or user.token_gen != claims.gen:
            raise tokens.BadToken("invalid or expired token")
        return user
