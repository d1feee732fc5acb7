"""The demo's sign-in to the fleet API: its ops user ``demo-ops`` with a fresh random password each
start (in ``<data>/dashboard-login.txt``, 0600, and on the console once), and the demo's own API
calls (the timelines and the revocation it pushes, its readiness check) signed in as that user.
Kept apart from popkit/demo.py, which starts the parts."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEMO_USER = "demo-ops"
LOGIN_FILE = "dashboard-login.txt"


def create_login(db_url: str, data_dir: Path) -> str:
    """Create (or reset) the demo's ops user in the fleet's database; its password, also written to
    ``data_dir/LOGIN_FILE`` (owner-only). Run before the fleet starts: it migrates the database too."""
    from fleet.auth.passwords import hash_password, new_password
    from fleet.auth.users import UserStore
    from fleet.store import Store

    password = new_password()
    store = Store.open(db_url)
    try:
        UserStore(store.engine).put(DEMO_USER, "ops", password_hash=hash_password(password), disabled=False)
    finally:
        store.close()
    path = data_dir / LOGIN_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file was there before
    with os.fdopen(fd, "w") as f:
        f.write(f"user {DEMO_USER}\npassword {password}\n")
    return password


def read_login(data_dir: Path) -> tuple[str, str]:
    """(user, password) from ``data_dir/LOGIN_FILE``."""
    fields = dict(line.split(" ", 1) for line in (data_dir / LOGIN_FILE).read_text().splitlines() if " " in line)
    return fields["user"], fields["password"]


class FleetSession:
    """JSON calls to the fleet API signed in as one user; signs in again once when the token is refused."""

    def __init__(self, base: str, user: str, password: str, timeout: float = 5.0):
        self.base, self.user, self._password, self.timeout = base, user, password, timeout
        self._token: str | None = None

    def _sign_in(self) -> str:
        form = urllib.parse.urlencode({"username": self.user, "password": self._password}).encode()
        req = urllib.request.Request(f"{self.base}/api/v1/auth/token", data=form, method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            self._token = json.load(r)["access_token"]
        return self._token

    def call(self, method: str, path: str, body: dict | None = None):
        for attempt in (1, 2):
            token = self._token or self._sign_in()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            data = None
            if body is not None:
                data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
            req = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as r:
                    return json.load(r)
            except urllib.error.HTTPError as exc:
                if exc.code != 401 or attempt == 2:
                    raise
                self._token = None  # expired, or the fleet restarted with a new demo key: sign in again

    def get(self, path: str):
        return self.call("GET", path)
