# HMAC-SHA256 (RFC 2104) for MicroPython, which has hashlib.sha256 but no hmac module.
#
# Allocation: the two 64-byte pad blocks are built once per key, in __init__; each
# digest() then allocates two sha256 contexts and two 32-byte digests, nothing that
# grows with the message (the message is hashed from the caller's buffer, so a
# memoryview slice works without a copy).
from hashlib import sha256
from micropython import const

_BLOCK = const(64)  # SHA-256 block size
_IPAD = const(0x36)
_OPAD = const(0x5C)


class HMAC256:
    """A key prepared for HMAC-SHA256. Reuse one instance per key: digest() does not change it."""

    def __init__(self, key):
        if len(key) > _BLOCK:
            key = sha256(key).digest()
        ipad = bytearray(_BLOCK)
        opad = bytearray(_BLOCK)
        n = len(key)
        for i in range(_BLOCK):
            k = key[i] if i < n else 0
            ipad[i] = k ^ _IPAD
            opad[i] = k ^ _OPAD
        self._ipad = ipad
        self._opad = opad

    def digest(self, msg):
        """The 32-byte HMAC of ``msg`` (any buffer: bytes, bytearray, memoryview)."""
        h = sha256(self._ipad)
        h.update(msg)
        inner = h.digest()
        h = sha256(self._opad)
        h.update(inner)
        return h.digest()


def hmac_sha256(key, msg):
    """One-shot HMAC-SHA256; prefer an HMAC256 instance when the key is used again."""
    return HMAC256(key).digest(msg)


def compare_digest(a, b, n=-1):
    """True if the first ``n`` bytes (all, if n < 0) of a and b are equal, in time independent of where they differ.

    Both must be at least ``n`` long; lengths that differ (n < 0) are unequal, which is not secret.
    """
    if n < 0:
        if len(a) != len(b):
            return False
        n = len(a)
    elif len(a) < n or len(b) < n:
        return False
    diff = 0
    for i in range(n):
        diff |= a[i] ^ b[i]
    return diff == 0
