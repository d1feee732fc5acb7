"""Signed event tickets: issuing and the reference verifier. The format is defined in docs/tickets.md.

A ticket is one line of text, QR alphanumeric-mode friendly::

    PK1:FEST25:K7QX2MBA:GA:HDZ6O:HDZNC:BWQ4NTKPF2BZ3MM5
    |   |      |        |  |     |     `- MAC: HMAC-SHA256(event key, everything before this ':'),
    |   |      |        |  |     |        first 10 bytes (80 bits), RFC 4648 base32, 16 chars
    |   |      |        |  |     `- not after:  minutes since the Unix epoch, base36 (exclusive)
    |   |      |        |  `- not before: minutes since the Unix epoch, base36 (inclusive)
    |   |      |        `- tier
    |   |      `- ticket id (unique within the event)
    |   `- event id
    `- "PK" + format version

The scanner firmware verifies the same bytes in ``device/lib/ticket.py``; the verdict names
(:data:`VERDICTS`) are shared, and tests check both sides agree ticket by ticket.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from kits.contract import EVENT_ID_RE, TICKET_ID_RE, TIER_RE

VERSION = "PK1"
MAC_BYTES = 10  # 80 bits; see docs/tickets.md for the forgery trade-off
MAC_CHARS = 16  # base32 of 10 bytes, no padding
KEY_BYTES = 32
KEY_FILE_FORMAT = "popkit-event-key/1"
DEFAULT_KEY_DIR = Path("var/keys")
DEFAULT_VALIDITY = timedelta(days=30)

# The one definition of these ids is the wire contract (check-in events carry them).
EVENT_PATTERN = EVENT_ID_RE
TICKET_PATTERN = TICKET_ID_RE
TIER_PATTERN = TIER_RE
_MINUTES_PATTERN = r"[0-9A-Z]{1,7}"
_PAYLOAD_RE = re.compile(
    rf"(?P<body>{VERSION}:(?P<event>{EVENT_PATTERN}):(?P<ticket>{TICKET_PATTERN}):(?P<tier>{TIER_PATTERN})"
    rf":(?P<nbf>{_MINUTES_PATTERN}):(?P<naf>{_MINUTES_PATTERN})):(?P<mac>[A-Z2-7]{{{MAC_CHARS}}})"
)
MAX_PAYLOAD = len(VERSION) + 16 + 16 + 8 + 7 + 7 + MAC_CHARS + 6  # 79 characters

# Verdicts, as the scanner reports them. The last two come from the scanner's redemption store.
ADMITTED = "admitted"
VERDICTS = (ADMITTED, "wrong_event", "not_yet_valid", "expired", "bad_signature", "malformed",
            "revoked", "already_admitted")


# ---------------------------------------------------------------- errors

class TicketError(ValueError):
    """A ticket (or a key for tickets) that cannot be used. ``verdict`` is the scanner's word for it."""

    verdict: str | None = None


class MalformedTicket(TicketError):
    verdict = "malformed"


class WrongEvent(TicketError):
    verdict = "wrong_event"


class BadSignature(TicketError):
    verdict = "bad_signature"


class NotYetValid(TicketError):
    verdict = "not_yet_valid"


class Expired(TicketError):
    verdict = "expired"


class KeyFileError(TicketError):
    """A key file that is missing, unreadable, too open, or holds another event's key."""


# ---------------------------------------------------------------- keys

@dataclass(frozen=True)
class EventKey:
    """The per-event HMAC key. Symmetric: whoever holds it can issue tickets (docs/tickets.md)."""

    event: str
    secret: bytes = field(repr=False)
    created: str = ""

    @classmethod
    def generate(cls, event: str) -> EventKey:
        _check_field("event", event, EVENT_PATTERN)
        return cls(event, secrets.token_bytes(KEY_BYTES), _iso(datetime.now(timezone.utc)))

    def to_json(self) -> str:
        return json.dumps({"format": KEY_FILE_FORMAT, "event": self.event, "key": self.secret.hex(),
                           "created": self.created}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "key file") -> EventKey:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"it holds a JSON {type(data).__name__}, not an object")
            if data.get("format") != KEY_FILE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {KEY_FILE_FORMAT!r}")
            event, key = data.get("event"), data.get("key")
            if not isinstance(event, str) or not re.fullmatch(EVENT_PATTERN, event):
                raise ValueError(f"event is {event!r}, not an event id")
            if not isinstance(key, str):
                raise ValueError("key is missing or not a hex string")  # never echo what may be a secret
            secret = bytes.fromhex(key)
            if len(secret) != KEY_BYTES:
                raise ValueError(f"key is {len(secret)} bytes, expected {KEY_BYTES}")
            return cls(event, secret, data.get("created", ""))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise KeyFileError(f"{where} is not a PopKit event key: {exc}") from None

    def save(self, path: Path) -> None:
        """Create ``path`` with mode 0600 (its folder 0700). Never overwrites an existing file."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise KeyFileError(f"key file {path} already exists; refusing to overwrite it") from None
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: Path) -> EventKey:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyFileError(f"key file {path} does not exist") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"key file {path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
                               f"run: chmod 600 {path}")
        return cls.from_json(path.read_text(), where=f"key file {path}")


def default_key_file(event: str, key_dir: Path = DEFAULT_KEY_DIR) -> Path:
    return key_dir / f"{event}.key"


def load_or_create_key(event: str, path: Path) -> tuple[EventKey, bool]:
    """The event's key from ``path``, or a new one saved there. Returns (key, created)."""
    if path.exists():
        key = EventKey.load(path)
        if key.event != event:
            raise KeyFileError(f"key file {path} holds the key for event {key.event!r}, not {event!r}; "
                               f"refusing to mix them (use another --key-file)")
        return key, False
    key = EventKey.generate(event)
    key.save(path)
    return key, True


# ---------------------------------------------------------------- the format

@dataclass(frozen=True)
class Ticket:
    event: str
    ticket_id: str
    tier: str
    not_before: int  # Unix seconds, inclusive
    not_after: int  # Unix seconds, exclusive
    payload: str


def issue(key: EventKey | bytes, event: str, ticket_id: str, tier: str,
          not_before: datetime | int, not_after: datetime | int) -> str:
    """The signed payload. The window is widened to whole minutes (start down, end up)."""
    secret = _secret_for(key, event)
    _check_field("event", event, EVENT_PATTERN)
    _check_field("ticket id", ticket_id, TICKET_PATTERN)
    _check_field("tier", tier, TIER_PATTERN)
    nbf = _unix(not_before) // 60
    naf = -(-_unix(not_after) // 60)
    if naf <= nbf:
        raise TicketError(f"validity window is empty: not_after ({_iso_s(naf * 60)}) must be after "
                          f"not_before ({_iso_s(nbf * 60)})")
    if nbf < 0 or naf >= 36**7:
        raise TicketError("validity window out of range (1970 .. year 16000)")
    body = f"{VERSION}:{event}:{ticket_id}:{tier}:{_b36(nbf)}:{_b36(naf)}"
    return f"{body}:{_mac(secret, body)}"


def parse(payload: str | bytes) -> Ticket:
    """Split a payload into its fields WITHOUT checking the signature; MalformedTicket if it is not one."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("ascii")
        except UnicodeDecodeError:
            raise MalformedTicket("ticket is not ASCII text") from None
    if len(payload) > MAX_PAYLOAD:
        raise MalformedTicket(f"ticket is {len(payload)} characters, longer than any ticket ({MAX_PAYLOAD})")
    m = _PAYLOAD_RE.fullmatch(payload)
    if not m:
        if not payload.startswith("PK"):
            raise MalformedTicket("not a PopKit ticket (no PK prefix)")
        if not payload.startswith(VERSION + ":"):
            raise MalformedTicket(f"unsupported ticket format {payload.split(':', 1)[0][:8]!r} (this is {VERSION})")
        raise MalformedTicket("ticket fields do not match the PK1 format")
    return Ticket(m["event"], m["ticket"], m["tier"], int(m["nbf"], 36) * 60, int(m["naf"], 36) * 60, payload)


def verify(key: EventKey | bytes, payload: str | bytes, now: datetime | float, event: str | None = None,
           leeway: int = 0) -> Ticket:
    """The reference verifier: the Ticket if the scanner would admit it, else the TicketError it would show.

    Checks run in the scanner's order: malformed, wrong_event, bad_signature, not_yet_valid, expired.
    ``event`` defaults to the key's event; ``leeway`` (seconds) widens the window for clock skew.
    """
    if event is None:
        if not isinstance(key, EventKey):
            raise TypeError("verify() needs event= when given a bare key")
        event = key.event
    secret = _secret_for(key, event)
    ticket = parse(payload)
    if ticket.event != event:
        raise WrongEvent(f"ticket is for event {ticket.event}, this scanner checks {event}")
    body, _, mac = ticket.payload.rpartition(":")
    if not hmac.compare_digest(mac, _mac(secret, body)):
        raise BadSignature("ticket signature does not match: forged, altered, or signed with another key")
    t = _unix(now)
    if t < ticket.not_before - leeway:
        raise NotYetValid(f"ticket valid from {_iso_s(ticket.not_before)}")
    if t >= ticket.not_after + leeway:
        raise Expired(f"ticket expired at {_iso_s(ticket.not_after)}")
    return ticket


def check(key: EventKey | bytes, payload: str | bytes, now: datetime | float, event: str | None = None,
          leeway: int = 0) -> str:
    """The verdict word alone, as the scanner would show it (before its redemption store is asked)."""
    try:
        verify(key, payload, now, event, leeway)
    except TicketError as exc:
        return exc.verdict
    return ADMITTED


# ---------------------------------------------------------------- batches (popkit tickets issue)

@dataclass
class Batch:
    out: Path
    key_file: Path
    key_created: bool
    count: int
    not_before: datetime
    not_after: datetime
    sheet: Path | None = None


def issue_batch(event: str, count: int, out: Path, tier: str = "GA", valid_from: str | None = None,
                valid_until: str | None = None, key_file: Path | None = None, sheet: Path | None = None) -> Batch:
    """Issue ``count`` tickets with fresh random ids into a CSV (ticket_id, tier, payload)."""
    _check_field("event", event, EVENT_PATTERN)
    _check_field("tier", tier, TIER_PATTERN)
    if count < 1:
        raise TicketError("--count must be at least 1")
    nbf = parse_iso(valid_from, "--valid-from") if valid_from else datetime.now(timezone.utc)
    naf = parse_iso(valid_until, "--valid-until") if valid_until else nbf + DEFAULT_VALIDITY
    if out.exists():
        raise TicketError(f"{out} already exists; refusing to overwrite a list of issued tickets")
    if sheet is not None:
        _segno()  # fail before anything is written
    key_file = key_file or default_key_file(event)
    key, created = load_or_create_key(event, key_file)
    ids = _new_ticket_ids(count)
    rows = [(tid, tier, issue(key, event, tid, tier, nbf, naf)) for tid in ids]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "x", newline="") as f:
        w = csv.writer(f)
        w.writerow(("ticket_id", "tier", "payload"))
        w.writerows(rows)
    if sheet is not None:
        write_qr_sheet(sheet, [p for _, _, p in rows])
    first = parse(rows[0][2])
    return Batch(out, key_file, created, count, datetime.fromtimestamp(first.not_before, timezone.utc),
                 datetime.fromtimestamp(first.not_after, timezone.utc), sheet)


def parse_iso(text: str, what: str = "time") -> datetime:
    """An ISO 8601 time WITH a UTC offset (or Z): a venue's local time is ambiguous without one."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise TicketError(f"{what}: {text!r} is not an ISO 8601 time (e.g. 2025-07-12T18:00+02:00)") from None
    if value.tzinfo is None:
        raise TicketError(f"{what}: {text!r} has no UTC offset; add one, e.g. {text}+02:00 or {text}Z")
    return value


def write_qr_sheet(path: Path, payloads: list[str], per_row: int = 5, scale: int = 3) -> None:
    """A PNG of the tickets' QR codes in CSV order, left to right, top to bottom (needs the qr extra)."""
    import struct
    import zlib

    segno = _segno()
    codes = [segno.make(p, error="m", micro=False, boost_error=False).matrix for p in payloads]
    side = max(len(m) for m in codes) + 8  # 4-module quiet zone each side
    rows_n = -(-len(codes) // per_row)
    width, height = per_row * side * scale, rows_n * side * scale
    lines = []
    for y in range(height):
        row = bytearray(b"\xff" * width)
        r, my = divmod(y // scale, side)
        for c in range(per_row):
            i = r * per_row + c
            if i >= len(codes):
                break
            m = codes[i]
            off = (side - len(m)) // 2
            if off <= my < off + len(m):
                for mx, dark in enumerate(m[my - off]):
                    if dark:
                        x0 = (c * side + off + mx) * scale
                        row[x0:x0 + scale] = b"\x00" * scale
        lines.append(b"\x00" + bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(b"".join(lines), 9)) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)


# ---------------------------------------------------------------- helpers

_B36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base32's: no 0/1/8/9 to confuse with O/I/B/g


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if not n:
            return out


def _mac(secret: bytes, body: str) -> str:
    digest = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(digest[:MAC_BYTES]).decode("ascii")


def _secret_for(key: EventKey | bytes, event: str) -> bytes:
    if isinstance(key, EventKey):
        if key.event != event:
            raise WrongEvent(f"key is for event {key.event}, not {event}")
        return key.secret
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise TicketError("key must be an EventKey or non-empty bytes")
    return bytes(key)


def _check_field(what: str, value: str, pattern: str) -> None:
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        raise TicketError(f"{what} {value!r} must match {pattern} (upper case: QR alphanumeric mode)")


def _unix(t: datetime | float) -> int:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise TicketError(f"time {t.isoformat()} has no time zone; use an aware datetime")
        return int(t.timestamp() // 1)
    return int(t // 1)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _iso_s(unix: int) -> str:
    try:
        return _iso(datetime.fromtimestamp(unix, timezone.utc))
    except (OverflowError, ValueError, OSError):  # past the year 9999 (a ticket's window may reach 150000)
        return f"minute {unix // 60} of the Unix epoch"


def _new_ticket_ids(count: int, length: int = 8) -> list[str]:
    ids: dict[str, None] = {}
    while len(ids) < count:
        ids["".join(secrets.choice(_ID_ALPHABET) for _ in range(length))] = None
    return list(ids)


def _segno():
    try:
        import segno
    except ImportError:
        raise TicketError("a QR sheet needs segno: pip install 'popkit[qr]'") from None
    return segno
