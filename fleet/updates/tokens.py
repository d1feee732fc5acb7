"""Bundle tokens: a kit's agent's capability to fetch one release's bundle from the fleet, until it
expires (docs/updates.md, "Rollouts"). Not a user's token: it names no user, opens no other route.

    <kit>.<release>.<exp>.<mac>       e.g.  alpha.scanner-0.3.2.1796640000.3q2-7w...

``kit`` (no dots: kits.contract.ID_PATTERN), ``release`` (``<role>-<version>``, two dots), ``exp``
(Unix seconds), ``mac``: base64url, unpadded, of HMAC-SHA256(K, "<kit>.<release>.<exp>") with
K = HMAC-SHA256(the fleet's signing key, "popkit bundle token v1"). The derived key keeps these
MACs apart from anything else the signing key signs (the API's JWTs). It is parsed from both ends:
the kit up to the first dot, exp and mac after the last two.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass

from kits.contract import ID_PATTERN

_CONTEXT = b"popkit bundle token v1"
_KIT = re.compile(ID_PATTERN)
_RELEASE = re.compile(r"^(scanner|lighting|agent)-[0-9]{1,6}\.[0-9]{1,6}\.[0-9]{1,6}$")
_EXP = re.compile(r"^[0-9]{1,12}$")


class BadBundleToken(Exception):
    """Not a bundle token this fleet made, or one past its expiry: answered 401 (the reason is logged, not sent)."""


@dataclass(frozen=True)
class BundleGrant:
    kit: str
    release: str
    expires: int  # Unix seconds


def _mac(key: bytes, body: str) -> str:
    k = hmac.new(key, _CONTEXT, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(hmac.new(k, body.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()


def mint(key: bytes, kit: str, release: str, ttl_s: int, now: float | None = None) -> str:
    """A token for ``kit`` to fetch ``release`` for ``ttl_s`` from ``now``."""
    if not _KIT.match(kit) or not _RELEASE.match(release):
        raise ValueError(f"no bundle token for kit {kit!r}, release {release!r}")
    body = f"{kit}.{release}.{int(now if now is not None else time.time()) + ttl_s}"
    return f"{body}.{_mac(key, body)}"


def check(key: bytes, token: str, now: float | None = None) -> BundleGrant:
    """What ``token`` grants; BadBundleToken if it is malformed, not ours, or expired."""
    kit, _, rest = token.partition(".")
    parts = rest.rsplit(".", 2)
    if len(token) > 300 or len(parts) != 3 or not _KIT.match(kit):
        raise BadBundleToken("malformed")
    release, exp, mac = parts
    if not _RELEASE.match(release) or not _EXP.match(exp):
        raise BadBundleToken("malformed")
    if not hmac.compare_digest(mac, _mac(key, f"{kit}.{release}.{exp}")):
        raise BadBundleToken("bad signature")
    if int(exp) <= (now if now is not None else time.time()):
        raise BadBundleToken("expired")
    return BundleGrant(kit, release, int(exp))
