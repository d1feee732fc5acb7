# Parse and verify a scanned PopKit ticket (format: docs/tickets.md; reference: kits/tickets.py).
#
#   PK1:<event>:<ticket>:<tier>:<not before>:<not after>:<mac>
#
# Times are minutes since the Unix epoch in base36; the MAC is the first 10 bytes of
# HMAC-SHA256(event key, everything before the last ':') in RFC 4648 base32 (16 chars).
# Verdicts are decided in this order, the same as the reference verifier:
# malformed, wrong_event, bad_signature, not_yet_valid, expired, admitted.
# Fields are trusted only once the signature checks (every verdict after bad_signature).
from micropython import const

from hmac256 import compare_digest

ADMITTED = "admitted"
WRONG_EVENT = "wrong_event"
NOT_YET_VALID = "not_yet_valid"
EXPIRED = "expired"
BAD_SIGNATURE = "bad_signature"
MALFORMED = "malformed"
REVOKED = "revoked"  # decided by verdict.Gate (revocation list)
ALREADY_ADMITTED = "already_admitted"  # decided by verdict.Gate (redemption store)

_MAC_BYTES = const(10)
_MAC_CHARS = const(16)
_MAX_PAYLOAD = const(79)
_MAX_ID = const(16)
_MAX_TIER = const(8)
_MAX_MINUTES = const(7)
_COLON = const(58)

# Character classes, one byte per ASCII code: bit 1 = A-Z 0-9, bit 2 = '-', bit 4 = base32 (A-Z 2-7).
_ALNUM = const(1)
_DASH = const(2)
_B32 = const(4)


def _classes():
    t = bytearray(128)
    for c in range(48, 58):  # 0-9
        t[c] = _ALNUM
    for c in range(50, 56):  # 2-7
        t[c] |= _B32
    for c in range(65, 91):  # A-Z
        t[c] = _ALNUM | _B32
    t[45] = _DASH
    return t


_CLASS = _classes()
_mac_buf = bytearray(_MAC_BYTES)  # the scanned MAC, decoded; reused by every verify()


def _all(field, mask, lo, hi):
    n = len(field)
    if n < lo or n > hi:
        return False
    cls = _CLASS
    for c in field:
        if c > 127 or not cls[c] & mask:
            return False
    return True


def parse(payload):
    """(event, ticket, tier, not_before_s, not_after_s, body_len, mac) as bytes/ints, or None if malformed.

    Nothing here is trusted until verify() has checked the MAC.
    """
    if isinstance(payload, str):
        payload = payload.encode()
    if len(payload) > _MAX_PAYLOAD:
        return None
    parts = payload.split(b":")
    if len(parts) != 7 or parts[0] != b"PK1":
        return None
    _, event, tid, tier, nbf, naf, mac = parts
    if not (_all(event, _ALNUM | _DASH, 1, _MAX_ID) and _CLASS[event[0]] & _ALNUM
            and _all(tid, _ALNUM, 1, _MAX_ID) and _all(tier, _ALNUM, 1, _MAX_TIER)
            and _all(nbf, _ALNUM, 1, _MAX_MINUTES) and _all(naf, _ALNUM, 1, _MAX_MINUTES)
            and _all(mac, _B32, _MAC_CHARS, _MAC_CHARS)):
        return None
    return event, tid, tier, int(nbf, 36) * 60, int(naf, 36) * 60, len(payload) - _MAC_CHARS - 1, mac


def _b32decode_into(chars, out):
    acc = 0
    bits = 0
    j = 0
    for c in chars:
        acc = (acc << 5) | (c - 65 if c >= 65 else c - 24)  # 'A'..'Z' = 0..25, '2'..'7' = 26..31
        bits += 5
        if bits >= 8:
            bits -= 8
            out[j] = (acc >> bits) & 0xFF
            j += 1
            acc &= (1 << bits) - 1


def verify(fields, payload, key, now, leeway=0, early=False):
    """The verdict for parsed ``fields`` of ``payload`` under ``key`` (an hmac256.HMAC256), at Unix time ``now``
    (None: no trusted time, so the signature alone decides; verdict.Gate's caller says so).
    early: ``now`` may be behind (a kit clock on its last known time): a ticket is never refused
    as not yet valid on it, only as expired."""
    if isinstance(payload, str):
        payload = payload.encode()
    digest = key.digest(memoryview(payload)[: fields[5]])
    _b32decode_into(fields[6], _mac_buf)
    if not compare_digest(_mac_buf, digest, _MAC_BYTES):
        return BAD_SIGNATURE
    if now is None:
        return ADMITTED
    if not early and now < fields[3] - leeway:
        return NOT_YET_VALID
    if now >= fields[4] + leeway:
        return EXPIRED
    return ADMITTED


def as_dict(fields):
    """The fields a verdict reports (event, ticket, tier, not_before, not_after), as str and int."""
    return {"event": fields[0].decode(), "ticket": fields[1].decode(), "tier": fields[2].decode(),
            "not_before": fields[3], "not_after": fields[4]}


def check(payload, keys, now, leeway=0):
    """(verdict, fields dict or None) for one scan; ``keys`` maps event id (bytes) to HMAC256.

    The same verdict the reference kits.tickets.check() gives. The redemption store's verdicts
    (revoked, already_admitted) come from verdict.Gate.
    """
    fields = parse(payload)
    if fields is None:
        return MALFORMED, None
    key = keys.get(fields[0])
    if key is None:
        return WRONG_EVENT, as_dict(fields)  # unverified: what the ticket claims
    verdict = verify(fields, payload, key, now, leeway)
    return verdict, (None if verdict == BAD_SIGNATURE else as_dict(fields))
