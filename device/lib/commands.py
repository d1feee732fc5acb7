# The gate every `cmd` passes before a device acts on it (docs/protocol.md):
#   - a retained command is refused (commands are never retained; one that is
#     would run again at every subscribe);
#   - a command whose id already ran is dropped without an answer (a QoS 1
#     redelivery, or the broker resending after a reboot: the ids that ran are
#     on flash, written *before* the command runs, so a power cut can lose a
#     command but never run one twice);
#   - a command past its `expires` (ms since the epoch, on the board's clock) is
#     answered "expired" and not run; with no clock it cannot be checked and is
#     refused.
# What the command does is the caller's business (lighting.py for "scene").
from micropython import const
import json

import atomic

KEEP = const(8)  # ids remembered: the last few, enough for a broker's redelivery burst
DUPLICATE = "duplicate"  # admit()'s status for "already ran: say nothing"
CLOCK_VALID_MS = 1704067200000  # 2024-01-01 UTC in ms
_FIELDS = ("id", "ts", "expires", "action", "args")
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


def _problem(c):
    """What is wrong with a decoded cmd (the contract's Command), or None."""
    if type(c) is not dict:
        return "cmd: must be a JSON object"
    for k in c:
        if k not in _FIELDS:
            return "cmd: unknown field %r" % (k,)
    cid = c.get("id")
    if type(cid) is not str or not 1 <= len(cid) <= 64:
        return "id: must be 1..64 characters"
    for ch in cid:
        if ch not in _ID_CHARS:
            return "id: only letters, digits, _ and -"
    for k in ("ts", "expires"):
        v = c.get(k)
        if type(v) is not int or v < 0:
            return "%s: must be epoch milliseconds" % k
    if type(c.get("action")) is not str:
        return "action: must be a string"
    if type(c.get("args", {})) is not dict:
        return "args: must be an object"
    return None


class CommandGate:
    """Decides whether a cmd runs; remembers (on flash, at ``path``) the ids that ran."""

    def __init__(self, path, keep=KEEP):
        self.path = path
        self.keep = keep
        raw = atomic.read(path)
        self.ids = raw.decode().split() if raw else []

    def admit(self, raw, retained, now_ms):
        """-> (cmd, status, detail).

        ``cmd`` is the decoded command, or None when it is not one (no id to answer;
        ``detail`` says why). ``status`` None: run it now (its id is recorded already);
        "rejected" or "expired": answer that and do not run it; DUPLICATE: it ran
        before, say nothing.
        """
        try:
            c = json.loads(raw)
        except ValueError:
            return None, "rejected", "cmd: not JSON"
        why = _problem(c)
        if why is not None:
            if type(c) is dict and type(c.get("id")) is str and not why.startswith("id:"):
                return c, "rejected", why
            return None, "rejected", why
        if retained:
            return c, "rejected", "retained cmd ignored: commands are never retained"
        if c["id"] in self.ids:
            return c, DUPLICATE, None
        if now_ms is None or now_ms < CLOCK_VALID_MS:
            return c, "rejected", "clock not set: cannot check expires"
        if now_ms >= c["expires"]:  # at its expiry instant it is over (as link.py has it)
            return c, "expired", None
        self.remember(c["id"])
        return c, None, None

    def remember(self, cid):
        ids = self.ids
        ids.append(cid)
        if len(ids) > self.keep:
            del ids[0]
        atomic.write(self.path, "\n".join(ids))
