"""Event tickets at the fleet: each event's key with its validity window, and the revocations.

Both reach the scanners through their retained desired config (``data.keys``, ``data.revoked``).
Revocations come from the API (ops and crew users) and from the kits: a revocation made at a kit
with no uplink (``popkit tickets revoke --kit``) comes up as its agent's ``revocation`` event and
is merged here in the same transaction that stores the event, before its receipt, so a kit's
revocation is never lost. The fleet keeps the union, with who revoked each ticket and where.

``model`` is pure (windows, the per-scanner config data), ``store`` its tables, ``delivery`` the
pushes to scanners and the merge of the kits' events.
"""

from fleet.tickets.model import ExpiredKey, KeySpec, Revocation, UnknownEvent, scanner_data

__all__ = ["ExpiredKey", "KeySpec", "Revocation", "UnknownEvent", "scanner_data"]
