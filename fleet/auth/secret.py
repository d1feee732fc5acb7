"""The key signing the API's tokens: POPKIT_SECRET_KEY, or the file POPKIT_SECRET_KEY_FILE names.

Anyone holding it can sign in as anyone, so the service refuses to start without one, or with one
that looks like a placeholder or is too guessable, unless it runs as the local demo (POPKIT_DEMO),
where a random key is made per process. Messages name the setting, never the value.
"""

from __future__ import annotations

import logging
import re
import secrets
from pathlib import Path

from fleet.auth import AuthError

log = logging.getLogger("popkit.fleet.auth")

MIN_LENGTH = 32
MIN_DISTINCT = 8  # a random 32-character key (even hex) has ~14 distinct characters
# Words of the values people paste from examples and templates (compared without case or punctuation).
PLACEHOLDER_WORDS = ("changeme", "changethis", "replaceme", "secret", "password", "passw0rd", "example",
                     "placeholder", "default", "insecure", "dummy", "sample", "notsecure", "letmein", "qwerty",
                     "123456", "abcdef", "popkit", "todo", "fixme", "xxxxxx")
HOW = "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class InsecureSecret(AuthError, ValueError):
    """No signing key, or one that must not be used outside the demo."""


def weakness(key: str) -> str | None:
    """Why ``key`` is no good as a signing key (None: it will do). Never includes the key."""
    if len(key) < MIN_LENGTH:
        return f"it is shorter than {MIN_LENGTH} characters"
    squashed = re.sub(r"[^a-z0-9]", "", key.lower())
    for word in PLACEHOLDER_WORDS:
        if word in squashed:
            return "it looks like a placeholder (it contains a word such values are made of)"
    if len(set(key)) < MIN_DISTINCT:
        return f"it has fewer than {MIN_DISTINCT} distinct characters"
    for period in range(1, len(key) // 2 + 1):
        if key == (key[:period] * (len(key) // period + 1))[: len(key)]:
            return "it is one short pattern repeated"
    return None


def _read_file(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise InsecureSecret(f"POPKIT_SECRET_KEY_FILE {path}: cannot read it ({exc.strerror})") from None


def signing_key(settings) -> bytes:
    """The key from ``settings`` (FleetSettings), checked; a random one in demo mode when none is given.

    Raises InsecureSecret, saying which setting and why, when there is none or it is weak (outside demo)."""
    if settings.secret_key is not None and settings.secret_key_file:
        raise InsecureSecret("both POPKIT_SECRET_KEY and POPKIT_SECRET_KEY_FILE are set: keep one")
    if settings.secret_key_file:
        key, source = _read_file(settings.secret_key_file), f"POPKIT_SECRET_KEY_FILE ({settings.secret_key_file})"
    elif settings.secret_key is not None:
        key, source = settings.secret_key.get_secret_value().strip(), "POPKIT_SECRET_KEY"
    else:
        key, source = "", None
    if not key:
        if settings.demo:
            log.warning("demo mode: no POPKIT_SECRET_KEY, signing tokens with a random key (logins end with this process)")
            return secrets.token_urlsafe(32).encode()
        where = f"{source} is empty" if source else "no signing key is set"
        raise InsecureSecret(f"refusing to start: {where}. Set POPKIT_SECRET_KEY (or POPKIT_SECRET_KEY_FILE) "
                             f"to {MIN_LENGTH}+ random characters, {HOW}")
    why = weakness(key)
    if why is not None:
        if settings.demo:
            log.warning("demo mode: %s is weak (%s); accepted for the demo only", source, why)
        else:
            raise InsecureSecret(f"refusing to start: {source} is not a usable signing key: {why}. "
                                 f"Use {MIN_LENGTH}+ random characters, {HOW}")
    return key.encode()
