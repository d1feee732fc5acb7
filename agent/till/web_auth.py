"""Who is at the till page: crew sessions and the sign-in throttle.

* A sign-in (agent/till/logins.py checks the passphrase) gives a random token in an HttpOnly,
  SameSite=Strict cookie scoped to ``/till``; the server keeps the token and its login for
  ``SESSION_S`` (12 h, a long event day), in memory: an agent restart signs the crew out, and
  loses nothing, because orders are on disk before the page shows them.
* Removing a login (``popkit till login remove``) ends its sessions at their next request.
* Failed sign-ins are counted and slowed: each failure answers after ``FAIL_DELAY_S``; after
  ``FREE_FAILURES`` failures for the same name from the same address, further tries are refused
  (429 with Retry-After) for ``FIRST_LOCK_S``, doubling with each further failure up to ``MAX_LOCK_S``. A success
  clears that name's count. One address failing ``ADDRESS_FACTOR`` times as often, over any names,
  is held the same way (someone trying name after name). Other phones are not held up.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "popkit_till"
COOKIE_PATH = "/till"
SESSION_S = 12 * 3600
FAIL_DELAY_S = 0.5
FREE_FAILURES = 5
FIRST_LOCK_S = 30.0
MAX_LOCK_S = 600.0
MAX_TRACKED = 4096  # (name, address) pairs remembered; the oldest go first past this
ADDRESS_FACTOR = 4  # one address may fail this many times FREE_FAILURES, over all names, before it is held
ANY_NAME = ""  # the per-address count's key (no login name is empty)
MAX_SESSIONS = 512  # a kit has a handful of phones: past this the session nearest its end goes


@dataclass
class Session:
    login: str
    expires: float  # time.time()


class Sessions:
    """Server-side sessions by token (thread-safe: FastAPI runs plain endpoints on a thread pool)."""

    def __init__(self, ttl_s: float = SESSION_S):
        self.ttl_s = ttl_s
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, login: str) -> tuple[str, Session]:
        token = secrets.token_urlsafe(32)
        session = Session(login, time.time() + self.ttl_s)
        with self._lock:
            self._forget_expired()
            while len(self._by_token) >= MAX_SESSIONS:
                del self._by_token[min(self._by_token, key=lambda t: self._by_token[t].expires)]
            self._by_token[token] = session
        return token, session

    def get(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._by_token.get(token)
            if session is not None and session.expires <= time.time():
                del self._by_token[token]
                return None
            return session

    def close(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)

    def _forget_expired(self) -> None:
        now = time.time()
        for token in [t for t, s in self._by_token.items() if s.expires <= now]:
            del self._by_token[token]


class Throttle:
    """Failed sign-ins per (name, address), and per address whatever the name: counted, and held
    back once there are too many (the second stops one phone trying name after name)."""

    def __init__(self, free: int = FREE_FAILURES, max_lock_s: float = MAX_LOCK_S):
        self.free, self.max_lock_s = free, max_lock_s
        self.failed_total = 0
        self._fails: collections.OrderedDict[tuple[str, str], tuple[int, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, name: str, address: str) -> tuple[float, bool]:
        """Seconds before this name may try again from this address (0: now), and whether it is the
        address that is held (too many wrong tries over all names) rather than the name."""
        now = time.monotonic()
        with self._lock:
            name_until = self._fails.get((name, address), (0, 0.0))[1]
            address_until = self._fails.get((ANY_NAME, address), (0, 0.0))[1]
        return max(0.0, name_until - now, address_until - now), address_until > name_until

    def failed(self, name: str, address: str) -> int:
        """Count a failure; how many in a row for this name and address."""
        with self._lock:
            self.failed_total += 1
            self._bump((ANY_NAME, address), self.free * ADDRESS_FACTOR)
            count = self._bump((name, address), self.free)
            while len(self._fails) > MAX_TRACKED:
                self._fails.popitem(last=False)
            return count

    def _bump(self, key: tuple[str, str], free: int) -> int:
        count = self._fails.pop(key, (0, 0.0))[0] + 1
        over = count - free  # 0 at the last free failure: held from then on
        lock_s = min(self.max_lock_s, FIRST_LOCK_S * 2.0 ** over) if over >= 0 else 0.0
        self._fails[key] = (count, time.monotonic() + lock_s)
        return count

    def succeeded(self, name: str, address: str) -> None:
        with self._lock:
            self._fails.pop((name, address), None)
