"""``GET /api/v1/stream``: server-sent events telling the dashboard what changed, as ingest commits it.

Events (``text/event-stream``):

* ``hello`` once: ``{"ping_s": 15}``
* ``change`` after an ingest commit touched kits/devices: ``{"kits": [...], "devices": [...], "all": false}``;
  several commits while a client is slow arrive merged as one (``all``: too many to name, re-fetch all).
  The page re-fetches what it shows from the ordinary API; the stream carries no state of its own.
* a ``: ping`` comment every 15 s, so proxies and the browser see the connection alive.

Ingest never waits on a client: see fleet/events_bus.py. A stream ends by itself when uvicorn shuts
down (see _server_exiting), so Ctrl-C on ``popkit fleet serve`` is not held up by open dashboards.
The bus is made, and hooked to the app's ingest worker, by create_app (fleet/api/app.py).
"""

from __future__ import annotations

import json
import signal
from typing import Callable

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from fleet.auth.deps import AUTH_RESPONSES, UserDep, guard
from fleet.auth.scope import visible_kits, visible_venues
from fleet.auth.users import User
from fleet.events_bus import Change

router = APIRouter(prefix="/api/v1", tags=["stream"], dependencies=guard("ops", "crew", "venue"),
                   responses=AUTH_RESPONSES)

PING_S = 15.0
RETRY_MS = 1000  # the browser reconnects this soon after losing the stream
EXIT_POLL_S = 1.0  # how often a quiet stream checks whether the server is shutting down


def _server_exiting() -> Callable[[], bool]:
    """Whether the uvicorn server is shutting down: a stream must then end by itself, or uvicorn's
    graceful shutdown (Ctrl-C on ``popkit fleet serve``) would wait for every open dashboard.
    uvicorn installs its ``Server.handle_exit`` as the SIGINT handler; that is how we find it."""
    server = getattr(signal.getsignal(signal.SIGINT), "__self__", None)
    if server is None or not hasattr(server, "should_exit"):
        return lambda: False  # not under uvicorn's signal handling (a thread, a test client)
    return lambda: bool(server.should_exit)


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class ScopedChanges:
    """What of a change a user may hear of: ops everything; crew their kits and those kits' devices;
    venue users their venues' controllers (the kits they belong to are not theirs to see)."""

    def __init__(self, state, user: User):
        self.state, self.user = state, user
        self.kits, self.venues = visible_kits(user), visible_venues(user)
        self._devices: set[str] | None = None

    def _mine(self) -> set[str]:
        if self.kits is not None and self.kits:
            return {d for d, ref in self.state.store.registry.device_refs().items() if ref.kit_id in self.kits}
        found: set[str] = set()
        for venue_id in self.venues or ():
            docs = self.state.venue_lighting.docs.load(venue_id)
            found |= set(docs.controllers()) if docs else set()
        return found

    def filter(self, change: Change) -> dict | None:
        """The change as this user sees it; None: nothing of theirs."""
        if self.kits is None and self.venues is None or change.all:
            return change.as_json()
        kits = change.kits & self.kits if self.kits else set()
        if self._devices is None or kits or (self.venues and change.devices):
            self._devices = self._mine()  # a kit of theirs changed (maybe a new device), or a venue's zones
        devices = change.devices & self._devices
        if not kits and not devices:
            return None
        return Change(kits=kits, devices=devices).as_json()

    def still_valid(self) -> bool:
        """The user is still enabled, with the token generation they signed in with."""
        now = self.state.auth.users.get(self.user.name)
        return now is not None and not now.disabled and now.token_gen == self.user.token_gen


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
async def get_stream(request: Request, user: UserDep):
    """Server-sent events: ``change`` with the kits and devices an ingest commit touched (re-fetch them).
    Crew users hear of their kits and devices only, venue users of their venues' controllers; the
    stream ends when the user is disabled or signs in anew elsewhere with a new password."""
    sub = request.app.state.bus.subscribe()
    exiting = _server_exiting()
    scoped = ScopedChanges(request.app.state, user)

    async def events():
        try:
            yield f"retry: {RETRY_MS}\n" + _event("hello", {"ping_s": PING_S})
            quiet = 0.0
            while not exiting():
                change = await sub.wait(min(EXIT_POLL_S, PING_S))
                if change is not None:
                    quiet = 0.0
                    shown = await to_thread.run_sync(scoped.filter, change)
                    if shown is not None:
                        yield _event("change", shown)
                else:
                    quiet += min(EXIT_POLL_S, PING_S)
                    if quiet >= PING_S:
                        quiet = 0.0
                        if not await to_thread.run_sync(scoped.still_valid):
                            return
                        yield ": ping\n\n"
        finally:
            sub.close()  # on disconnect starlette cancels us (or a write fails); the mailbox goes with the client

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
