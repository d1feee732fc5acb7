"""A growing wait after failed logins, per user name: online password guessing gets slow.

The name is counted whether or not such a user exists (the answer must not tell). After FREE
failures within WINDOW_S, each further attempt must wait 2, 4, 8 ... up to MAX_WAIT_S seconds
after the last failure; a success clears the count. Memory is bounded: the oldest names are forgotten.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

FREE = 5
WINDOW_S = 15 * 60
MAX_WAIT_S = 300
MAX_NAMES = 10_000


class LoginThrottle:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name -> (count, last failure)
        self._lock = threading.Lock()

    def wait_s(self, name: str) -> float:
        """Seconds before ``name`` may try again (0: now)."""
        with self._lock:
            count, last = self._failures.get(name, (0, 0.0))
        now = self.clock()
        if count <= FREE or now - last > WINDOW_S:
            return 0.0
        return max(0.0, last + min(MAX_WAIT_S, 2 ** (count - FREE)) - now)

    def failed(self, name: str) -> None:
        now = self.clock()
        with self._lock:
            count, last = self._failures.pop(name, (0, 0.0))
            self._failures[name] = ((count if now - last <= WINDOW_S else 0) + 1, now)
            while len(self._failures) > MAX_NAMES:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)
