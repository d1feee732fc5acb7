"""The crew's kit logins for the till page: names and scrypt hashes in one file on the Pi.

Rules that shape this module:

* **Made on the Pi, by someone at its console.** ``popkit till login add NAME`` generates the
  passphrase, prints it once and keeps only its hash; nothing about a login is ever in git, in the
  fleet or on the wire. There is no default login and no way to choose a weak passphrase.
* **One file**, ``<agent data>/till-logins.json`` (0600, written whole through a renamed temp file):
  ``{"logins": {name: {"hash": "scrypt$n$r$p$salt$key", "created_ms": ...}}}``. The running agent
  re-reads it when it changes, so a login added or removed at the console counts at once, with no
  restart.
* **hashlib.scrypt** (no new dependency), n=2**14, r=8, p=1: about 16 MB and a few tens of ms on a
  Pi 4 per check, which the page's sign-in throttle (agent/till/web_auth.py) multiplies.
* An unknown name costs the same hash as a wrong passphrase, so a timing does not tell which names
  exist.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from pathlib import Path

from agent.errors import AgentError
from plumbing.files import write_atomic

FILE_NAME = "till-logins.json"
NAME_RE = re.compile(r"[a-z][a-z0-9._-]{0,31}")
# No 0/o/1/l/i: read off a terminal and typed on a phone without a second try.
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_GROUPS, _GROUP_LEN = 5, 4  # 20 characters of 31 symbols: ~99 bits
_N, _R, _P, _DKLEN = 2**14, 8, 1, 32
_MAXMEM = 64 * 1024 * 1024


class LoginError(AgentError, ValueError):
    """A login name that cannot be used, or a logins file that cannot be read; the message says why."""


def logins_path(agent_data: Path) -> Path:
    return Path(agent_data) / FILE_NAME


def new_passphrase() -> str:
    """``k7pm-x2qd-...``: five groups of four, from an alphabet with no look-alike characters."""
    return "-".join("".join(secrets.choice(_ALPHABET) for _ in range(_GROUP_LEN)) for _ in range(_GROUPS))


def hash_passphrase(passphrase: str, *, n: int = _N) -> str:
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(passphrase.encode(), salt=salt, n=n, r=_R, p=_P, dklen=_DKLEN, maxmem=_MAXMEM)
    return f"scrypt${n}${_R}${_P}${_b64(salt)}${_b64(key)}"


def check_passphrase(passphrase: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(key)
        got = hashlib.scrypt(passphrase.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(want), maxmem=_MAXMEM)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise LoginError(f"login name {name!r}: 1 to 32 characters, lowercase letters, digits, '.', '_' or '-', "
                         "starting with a letter (e.g. sam or stall-2)")
    return name


@functools.cache
def _decoy() -> str:
    """A hash of nothing anyone knows, checked for an unknown name so it costs what a known one does."""
    return hash_passphrase(secrets.token_hex(16))


class Logins:
    """The logins file, for the CLI (add, remove, list) and for the page (check)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) of what _cache holds
        self._cache: dict[str, dict] = {}

    # ------------------------------------------------------------ reading

    def _load(self) -> dict[str, dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._seen, self._cache = None, {}
            return self._cache
        except OSError as exc:
            raise LoginError(f"{self.path}: cannot read the till logins ({exc})") from None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._seen:
            try:
                doc = json.loads(self.path.read_text(encoding="utf-8"))
                logins = doc["logins"]
                if not isinstance(logins, dict):
                    raise TypeError("logins is not an object")
            except PermissionError:
                raise LoginError(f"{self.path}: permission denied (it is the agent's: run as root or as the "
                                 "agent's user, e.g. sudo popkit till login ...)") from None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise LoginError(f"{self.path}: not a till logins file ({exc})") from None
            self._cache, self._seen = logins, stamp
        return self._cache

    def names(self) -> list[dict]:
        """Each login's name and when it was made (never its hash)."""
        with self._lock:
            return [{"name": k, "created_ms": v.get("created_ms")} for k, v in sorted(self._load().items())]

    def exists(self, name: str) -> bool:
        with self._lock:
            try:
                return name in self._load()
            except LoginError:
                return False

    def check(self, name: str, passphrase: str) -> bool:
        """True when ``name`` is a login and ``passphrase`` is its own (costs one scrypt either way)."""
        with self._lock:
            entry = self._load().get(name) if isinstance(name, str) else None
        stored = entry.get("hash", _decoy()) if isinstance(entry, dict) else _decoy()
        ok = check_passphrase(passphrase if isinstance(passphrase, str) else "", stored)
        return ok and entry is not None

    # ------------------------------------------------------------ changing (the CLI)

    def add(self, name: str, *, replace: bool = False) -> str:
        """A new login (or, with ``replace``, a new passphrase for one): the passphrase, to show once."""
        check_name(name)
        passphrase = new_passphrase()
        with self._lock:
            logins = dict(self._load())
            if name in logins and not replace:
                raise LoginError(f"login {name!r} exists; --reset gives it a new passphrase")
            logins[name] = {"hash": hash_passphrase(passphrase), "created_ms": int(time.time() * 1000)}
            self._save(logins)
        return passphrase

    def remove(self, name: str) -> None:
        with self._lock:
            logins = dict(self._load())
            if name not in logins:
                raise LoginError(f"no till login {name!r} (popkit till login list shows them)")
            del logins[name]
            self._save(logins)

    def _save(self, logins: dict[str, dict]) -> None:
        write_atomic(self.path, json.dumps({"logins": logins}, indent=1, sort_keys=True) + "\n", private=True)
        _give_to_folder_owner(self.path)
        self._seen = None  # re-read on next use: the stamp of our own write


def _give_to_folder_owner(path: Path) -> None:
    """Run as root (sudo) on the Pi, the file goes to the agent's user, who owns the data folder:
    otherwise the agent could not read the login just made."""
    if os.geteuid() != 0:
        return
    st = path.parent.stat()
    if st.st_uid != 0:
        os.chown(path, st.st_uid, st.st_gid)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: str) -> bytes:
    return base64.b64decode(s.encode(), validate=True)
