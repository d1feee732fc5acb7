"""HTTPS (docs/https.md): `popkit fleet serve --tls-cert --tls-key` serves TLS with HSTS and a Secure
session cookie; behind a reverse proxy the same holds when a trusted proxy says the request came over
HTTPS, and only then; plain HTTP on a non-loopback address is warned about at start, outside the demo.

Each test runs the real `popkit fleet serve` process against the test's Mosquitto, with a certificate
made by popkit/tls.py (the kits' own CA code) for 127.0.0.1."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import httpx
import pytest

from popkit.broker import free_port
from popkit.tls import ensure_broker_tls
from tests.conftest import REPO, wait_until

PASSWORD = "correct horse battery staple"
WARNING = "serving plain HTTP on"


def _env(**extra) -> dict:
    # Inherits the suite's signing key (tests/conftest.py); no other POPKIT_* setting of the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPKIT_") or k == "POPKIT_SECRET_KEY"}
    return dict(env, **extra)


def _add_user(db: str) -> None:
    r = subprocess.run([sys.executable, "-m", "popkit.cli", "fleet", "user", "add", "ops-t", "--role", "ops",
                        "--password-stdin", "--db", db], input=PASSWORD + "\n", env=_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


class Served:
    """`popkit fleet serve` on a free port; ``stop()`` returns its stderr."""

    def __init__(self, tmp_path, broker, host: str, *args: str, **env: str):
        self.db = f"sqlite:///{tmp_path / 'fleet.db'}"
        _add_user(self.db)
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "popkit.cli", "fleet", "serve", "--db", self.db, "--mqtt",
                                      broker.url, "--http", f"{host}:{self.port}", *args], env=_env(**env), cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait(self, client: httpx.Client, base: str) -> None:
        def answers():
            assert self.proc.poll() is None, self.proc.communicate()[1]
            try:
                return client.get(f"{base}/healthz", timeout=1).status_code in (200, 503)
            except httpx.TransportError:
                return False
        wait_until(answers, timeout=30, what="the fleet serving")

    def stop(self) -> str:
        self.proc.terminate()
        return self.proc.communicate(timeout=30)[1]


def _sign_in(client: httpx.Client, base: str, **headers) -> httpx.Response:
    r = client.post(f"{base}/api/v1/auth/token", data={"username": "ops-t", "password": PASSWORD}, headers=headers)
    assert r.status_code == 200, r.text
    return r


def test_https_with_hsts_and_a_secure_cookie(tmp_path, broker):
    tls = ensure_broker_tls(tmp_path / "tls", "fleet", ["127.0.0.1"])
    fleet = Served(tmp_path, broker, "0.0.0.0", "--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    base = f"https://127.0.0.1:{fleet.port}"
    try:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(tls.ca))) as client:
            fleet.wait(client, base)
            r = client.get(f"{base}/healthz")
            assert r.headers["strict-transport-security"] == "max-age=31536000"
            cookie = _sign_in(client, base).headers["set-cookie"].lower()
            assert "popkit_token=" in cookie and "; secure" in cookie and "httponly" in cookie
            token = client.cookies.get("popkit_token")
            assert client.get(f"{base}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json()["name"] == "ops-t"
        with pytest.raises(httpx.TransportError):  # the port speaks TLS only
            httpx.get(f"http://127.0.0.1:{fleet.port}/healthz", timeout=5)
    finally:
        err = fleet.stop()
    assert WARNING not in err  # on 0.0.0.0, but HTTPS


@pytest.mark.parametrize("host, env, warned", [
    ("0.0.0.0", {}, True),
    ("127.0.0.1", {}, False),
    ("0.0.0.0", {"POPKIT_DEMO": "1"}, False),
])
def test_plain_http_on_a_network_address_is_warned_about_outside_the_demo(tmp_path, broker, host, env, warned):
    fleet = Served(tmp_path, broker, host, **env)
    try:
        with httpx.Client() as client:
            fleet.wait(client, f"http://127.0.0.1:{fleet.port}")
            r = _sign_in(client, f"http://127.0.0.1:{fleet.port}")
            assert "secure" not in r.headers["set-cookie"].lower()  # a Secure cookie would never come back
            assert "strict-transport-security" not in r.headers
    finally:
        err = fleet.stop()
    assert (WARNING in err) == warned, err
    if warned:
        assert f"{WARNING} 0.0.0.0:{fleet.port}" in err and "docs/https.md" in err


@pytest.mark.parametrize("trusted", [True, False])
def test_behind_a_proxy_https_is_believed_only_from_the_trusted_address(tmp_path, broker, trusted):
    env = {"POPKIT_FORWARDED_ALLOW_IPS": "127.0.0.1"} if trusted else {}
    fleet = Served(tmp_path, broker, "127.0.0.1", **env)
    base = f"http://127.0.0.1:{fleet.port}"
    try:
        with httpx.Client() as client:
            fleet.wait(client, base)
            r = _sign_in(client, base, **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"})
    finally:
        fleet.stop()
    assert ("; secure" in r.headers["set-cookie"].lower()) == trusted
    assert ("strict-transport-security" in r.headers) == trusted


@pytest.mark.parametrize("args, says", [
    (["--tls-cert", "CERT"], "both --tls-cert and --tls-key"),
    (["--tls-cert", "CERT", "--tls-key", "MISSING"], "no such file"),
    (["--tls-cert", "CA_KEY", "--tls-key", "KEY"], "not a PEM certificate and its private key"),
])
def test_a_bad_certificate_or_key_is_refused_at_start(tmp_path, args, says):
    tls = ensure_broker_tls(tmp_path / "tls", "fleet", ["127.0.0.1"])
    files = {"CERT": str(tls.cert), "KEY": str(tls.key), "CA_KEY": str(tls.ca), "MISSING": str(tmp_path / "none.pem")}
    r = subprocess.run([sys.executable, "-m", "popkit.cli", "fleet", "serve", "--db", f"sqlite:///{tmp_path / 'f.db'}",
                        "--http", "127.0.0.1:1", *[files.get(a, a) for a in args]], env=_env(), cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
