"""Event keys and revocations as data, and what one scanner's config carries of them. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

FLEET = "fleet"  # revoked_at of a revocation made through the fleet's API


class ExpiredKey(ValueError):
    """A key whose window is over (or empty): a scanner would drop it at once."""


class UnknownEvent(LookupError):
    """A revocation for an event nobody holds: no key, no check-in, no revocation yet."""


class ConfigConflict(ValueError):
    """A scanner's desired config has a shape the change cannot be merged into."""


def iso(unix_s: int) -> str:
    try:
        return datetime.fromtimestamp(unix_s, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, ValueError, OSError):  # past the year 9999
        return f"{unix_s} s after the Unix epoch"


@dataclass(frozen=True)
class KeySpec:
    """An event's key for the scanners, valid from ``not_before`` until ``expires`` (Unix s)."""

    event_id: str
    key_hex: str
    not_before: int
    expires: int
    kits: frozenset[str] | None = None  # the kits whose scanners hold it; None: every kit

    def check(self, now_s: int) -> None:
        """ExpiredKey when the window is empty or already over at ``now_s``."""
        if self.expires <= self.not_before:
            raise ExpiredKey(f"event {self.event_id}: the key's window is empty (expires {iso(self.expires)} "
                             f"is not after not_before {iso(self.not_before)})")
        if self.expires <= now_s:
            raise ExpiredKey(f"event {self.event_id}: the key expired at {iso(self.expires)}; a scanner would "
                             f"drop it at once (give it an expires after now, {iso(now_s)})")

    def holds(self, kit_id: str) -> bool:
        return self.kits is None or kit_id in self.kits

    def for_scanner(self) -> dict[str, Any]:
        return {"event": self.event_id, "key": self.key_hex, "not_before": self.not_before, "expires": self.expires}


@dataclass(frozen=True)
class Revocation:
    event_id: str
    ticket: str
    revoked_by: str  # the fleet user, or the person at the kit
    revoked_at: str  # where: "fleet", or "kit <kit>/<agent>"
    revoked_ms: int
    kit_id: str | None = None


def scanner_data(old: dict | None, kit_id: str, keys: list[KeySpec], revoked: dict[str, list[str]],
                 now_s: int) -> dict:
    """One scanner's desired config data: ``old`` with ``data.keys`` set to the keys its kit holds that
    are not over at ``now_s``, and ``revoked`` added to ``data.revoked`` (a union: ids already there
    stay, whoever put them). Other keys of ``old`` are kept."""
    data = dict(old or {})
    current = data.get("revoked") or {}
    if not isinstance(current, dict):
        # A flat list (the scanner reads it as "revoked at every event") cannot take per-event ids.
        raise ConfigConflict("the desired config's 'revoked' is not per event ({EVENT: [ids]}); PUT the config to fix it")
    merged = {e: list(ids) for e, ids in current.items()}
    for event_id, ids in revoked.items():
        have = merged.setdefault(event_id, [])
        seen = set(have)
        have += [t for t in ids if t not in seen and not seen.add(t)]
    if merged:
        data["revoked"] = merged
    held = [k.for_scanner() for k in sorted(keys, key=lambda k: k.event_id) if k.holds(kit_id) and k.expires > now_s]
    if held or "keys" in data:
        data["keys"] = held
    return data


# An event's key lets whoever holds it forge that event's tickets, at any kit: it goes to the scanners
# (their retained config) and is never shown back. The API shows a scanner's config with each key
# replaced by this, and a PUT that sends this back keeps the key the device already holds, so the
# usual GET, change, PUT of a config (a scanner's mode, its till station) leaves its keys as they were.
HIDDEN_KEY = "(hidden)"


def hide_keys(data: dict | None) -> dict | None:
    """``data`` as the API shows it: every ``keys[].key`` replaced by :data:`HIDDEN_KEY`."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        return data
    return {**data, "keys": [{**k, "key": HIDDEN_KEY} if isinstance(k, dict) and "key" in k else k
                             for k in data["keys"]]}


def restore_keys(data: dict, held: dict | None) -> dict:
    """``data`` from a PUT with each hidden key put back from ``held`` (the desired config stored now),
    matched by event. A hidden key of an event the device holds no key for is refused: say so."""
    keys = data.get("keys")
    if not isinstance(keys, list) or not any(isinstance(k, dict) and k.get("key") == HIDDEN_KEY for k in keys):
        return data
    stored = {k.get("event"): k.get("key") for k in ((held or {}).get("keys") or []) if isinstance(k, dict)}
    out = []
    for i, k in enumerate(keys):
        if isinstance(k, dict) and k.get("key") == HIDDEN_KEY:
            if not isinstance(stored.get(k.get("event")), str):
                raise ConfigConflict(f"data.keys[{i}]: the key of event {k.get('event')!r} is hidden and this device "
                                     "holds none to keep; set it with PUT /api/v1/events/{event_id}/key")
            k = {**k, "key": stored[k["event"]]}
        out.append(k)
    return {**data, "keys": out}
