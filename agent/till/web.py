"""The till page: served by the agent on the kit network to the crew's phones and tablets.

* ``/till/`` is the page (agent/till/static/: plain JS modules, no build step, phone first);
  ``/till/api/...`` its JSON API (agent/till/web_routes.py). Every API call but signing in needs
  a crew session from a kit login made on the Pi (agent/till/logins.py, ``popkit till login``).
* Where it listens: ``POPKIT_TILL_LISTEN=host:port``; unset, the kit network's address
  (``POPKIT_UPDATE_LISTEN``, which ``popkit kit provision`` writes) on port 8090; neither: no
  page (the till still sells through the scanners). Never the uplink's address by default: the
  page is for the kit's own Wi-Fi.
* Bad requests get a 4xx whose ``detail`` says what was wrong; each is counted by kind
  (``GET /till/api/counts``) and the agent goes on. Nothing a request does is lost to a refusal:
  the till refuses before it writes.
* One entry point for the agent: :func:`serve_till`, a task in the agent's asyncio loop. It
  binds its socket itself (an address not up yet, or a port taken, is retried every
  ``RETRY_S`` rather than ending uvicorn with SystemExit) and leaves SIGTERM to the agent, which
  stops it by cancelling the task.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from pathlib import Path

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from agent.till import web_auth
from agent.till.errors import CatalogRefused, NotInCatalog, TillError, UnknownOrder
from agent.till.logins import Logins, logins_path
from agent.till.web_routes import ROUTERS

log = logging.getLogger("popkit.agent.till.web")

DEFAULT_PORT = 8090
RETRY_S = 30.0
STATIC = Path(__file__).resolve().parent / "static"
_WHERE = ("body", "query", "path")  # a field's name says enough: "qty: ...", "station: ..."


def create_app(till, logins: Logins, *, secure_cookie: bool = False, fail_delay_s: float = web_auth.FAIL_DELAY_S,
               ) -> FastAPI:
    """The page and its API over ``till`` (agent.till.service.Till) and the kit's ``logins``."""
    app = FastAPI(title="PopKit till", docs_url="/till/api/docs", openapi_url="/till/api/openapi.json",
                  redoc_url=None)
    app.state.till, app.state.logins = till, logins
    app.state.sessions, app.state.throttle = web_auth.Sessions(), web_auth.Throttle()
    app.state.secure_cookie, app.state.fail_delay_s = secure_cookie, fail_delay_s
    app.state.counts = collections.Counter()
    for router in ROUTERS:
        app.include_router(router, prefix="/till/api")
    _add_error_handlers(app)
    app.mount("/till/static", StaticFiles(directory=STATIC), name="till-static")

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("/till/")

    @app.get("/till/", include_in_schema=False)
    def _page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app


def _add_error_handlers(app: FastAPI) -> None:
    counts: collections.Counter = app.state.counts

    def refused(request: Request, status: int, kind: str, detail) -> JSONResponse:
        counts[kind] += 1
        log.info("till page: %s %s refused (%d): %s", request.method, request.url.path, status, detail)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'] if p not in _WHERE) or 'body'}: {e['msg']}"
                    for e in exc.errors()]
        return refused(request, 422, "bad_request", {"message": "; ".join(problems), "errors": problems})

    @app.exception_handler(UnknownOrder)
    async def _unknown_order(request: Request, exc: UnknownOrder) -> JSONResponse:
        return refused(request, 404, "unknown_order", str(exc))

    @app.exception_handler(NotInCatalog)
    async def _not_in_catalog(request: Request, exc: NotInCatalog) -> JSONResponse:
        return refused(request, 404, "not_in_catalog", str(exc))

    @app.exception_handler(CatalogRefused)
    async def _catalog(request: Request, exc: CatalogRefused) -> JSONResponse:
        return refused(request, 422, "catalog_refused", str(exc))

    @app.exception_handler(TillError)
    async def _till(request: Request, exc: TillError) -> JSONResponse:
        return refused(request, 409, type(exc).__name__, str(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        # The routes' own refusals (401, 404 unknown code, 429, ...): counted where raised, logged here.
        log.info("till page: %s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def till_address(settings) -> tuple[str, int] | None:
    """(host, port) from POPKIT_TILL_LISTEN, else the kit network's address and port 8090, else None."""
    listen = (getattr(settings, "till_listen", "") or "").strip()
    if listen:
        host, sep, port = listen.rpartition(":")
        if not sep or host.endswith(":") or not port.isdigit():  # no port; or [v6] with none
            return listen.strip("[]"), DEFAULT_PORT
        if int(port) > 65535:
            log.error("POPKIT_TILL_LISTEN=%s: no such port; no till page", listen)
            return None
        return host.strip("[]"), int(port)
    if getattr(settings, "update_listen", ""):
        return settings.update_listen, DEFAULT_PORT
    return None


class _KitServer(uvicorn.Server):
    """uvicorn without its signal handlers: SIGTERM and SIGINT belong to the agent's loop."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it a
    # kept-alive phone waited ~40 ms (Nagle against the delayed ACK) for every answer's body.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(64)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_till(till, settings, *, app: FastAPI | None = None, started=None) -> None:
    """The till page for as long as the agent runs (cancel the task to stop it).

    ``started(host, port)`` is called once it listens (tests: port 0 means any free port)."""
    where = till_address(settings)
    if where is None:
        log.info("no till page: neither POPKIT_TILL_LISTEN nor POPKIT_UPDATE_LISTEN names a kit address")
        return
    host, port = where
    if app is None:
        app = create_app(till, Logins(logins_path(settings.agent_data)))
    while True:
        try:
            sock = _bind(host, port)
            break
        except OSError as exc:  # the kit's interface not up yet (a hotspot), or the port taken
            log.error("till page cannot listen on %s:%d (%s): trying again in %.0f s", host, port, exc, RETRY_S)
            await asyncio.sleep(RETRY_S)
    bound = sock.getsockname()[1]
    server = _KitServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                       timeout_graceful_shutdown=2))
    log.info("till page on http://%s:%d/till/", host, bound)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if started is not None and server.started:
            started(host, bound)
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        sock.close()
