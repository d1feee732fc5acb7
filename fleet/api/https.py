"""HTTPS at the fleet's edge: the HSTS header on answers to HTTPS requests, and the start-up checks
of the TLS and proxy settings (docs/https.md).

A request "came over HTTPS" when its ASGI scheme says so: uvicorn serving TLS itself (--tls-cert),
or uvicorn's proxy-headers middleware having believed a trusted proxy's X-Forwarded-Proto
(forwarded_allow_ips). The session cookie's Secure flag follows the same scheme
(fleet/api/routes/auth.py), so both hold behind a proxy as when serving TLS directly.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

log = logging.getLogger("popkit.fleet")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class HstsMiddleware:
    """Adds Strict-Transport-Security to every answer to an HTTPS request (pure ASGI: it must not
    buffer the live stream)."""

    def __init__(self, app, max_age_s: int):
        self.app = app
        self.header = (b"strict-transport-security", f"max-age={max_age_s}".encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def send_with_hsts(message):
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), self.header])
            await send(message)

        await self.app(scope, receive, send_with_hsts)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve to any address


def check_tls(settings) -> None:
    """Both of tls_cert and tls_key, or neither; and they load as a pair. ValueError saying which
    (popkit prints it and exits 2), before anything else starts."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("HTTPS needs both --tls-cert and --tls-key (POPKIT_TLS_CERT, POPKIT_TLS_KEY)")
    if not settings.tls:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_cert, settings.tls_key)
    except FileNotFoundError as exc:
        raise ValueError(f"--tls-cert/--tls-key: no such file {exc.filename}") from None
    except (ssl.SSLError, OSError) as exc:
        raise ValueError(f"--tls-cert {settings.tls_cert} with --tls-key {settings.tls_key}: not a PEM certificate "
                         f"and its private key ({exc})") from None


def warn_if_plain(settings) -> bool:
    """Warns (True) when the fleet serves plain HTTP on an address other machines reach, outside the
    demo: sign-ins and the session cookie would cross the network readable."""
    if settings.tls or settings.demo or is_loopback(settings.http_host):
        return False
    log.warning("serving plain HTTP on %s: passwords and session cookies cross the network unencrypted. Serve "
                "HTTPS (--tls-cert FILE --tls-key FILE) or listen on 127.0.0.1 behind a TLS reverse proxy "
                "(POPKIT_FORWARDED_ALLOW_IPS): see docs/https.md", settings.http)
    return True
