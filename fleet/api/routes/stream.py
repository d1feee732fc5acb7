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

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse


router = APIRouter(prefix="/api/v1", tags=["stream"])

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


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
async def get_stream(request: Request):
    """Server-sent events: ``change`` with the kits and devices an ingest commit touched (re-fetch them)."""
    sub = request.app.state.bus.subscribe()
    exiting = _server_exiting()

    async def events():
        try:
            yield f"retry: {RETRY_MS}\n" + _event("hello", {"ping_s": PING_S})
            quiet = 0.0
            while not exiting():
                change = await sub.wait(min(EXIT_POLL_S, PING_S))
                if change is not None:
                    quiet = 0.0
                    yield _event("change", change.as_json())
                else:
                    quiet += min(EXIT_POLL_S, PING_S)
                    if quiet >= PING_S:
                        quiet = 0.0
                        yield ": ping\n\n"
        finally:
            sub.close()  # on disconnect starlette cancels us (or a write fails); the mailbox goes with the client

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
