"""The dashboard: one HTML page, its script and its stylesheet (fleet/api/static/; no build step, no CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}


def _static(name: str) -> str:
    return (resources.files("fleet.api") / "static" / name).read_text()


@router.get("/", response_class=HTMLResponse)
def get_index():
    """The dashboard: every kit, a page per kit (#/kit/ID), live through /api/v1/stream."""
    return _static("index.html")


@router.get("/static/{name}")
def get_static(name: str):
    kind = name.rsplit(".", 1)[-1]
    if "/" in name or name.startswith(".") or kind not in _TYPES:
        raise HTTPException(status_code=404)
    try:
        body = _static(name)
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPException(status_code=404) from None
    # Revalidate every time: the files are small, and a stale script after an upgrade is worse.
    return Response(body, media_type=_TYPES[kind], headers={"Cache-Control": "no-cache"})
