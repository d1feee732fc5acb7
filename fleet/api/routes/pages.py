"""The dashboard: one HTML page, its scripts and stylesheets (fleet/api/static/), and the libraries it
uses as their projects built them (fleet/api/static/vendor/, see its README.md): no build step, no CDN."""

from __future__ import annotations

import hashlib
from importlib import resources

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

router = APIRouter(include_in_schema=False)

_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}


def _static(name: str, *folders: str) -> str:
    where = resources.files("fleet.api") / "static"
    for folder in folders:
        where = where / folder
    return (where / name).read_text()


@router.get("/", response_class=HTMLResponse)
def get_index():
    """The dashboard: every kit, a page per kit (#/kit/ID), live through /api/v1/stream."""
    return _static("index.html")


@router.get("/static/{name}")
def get_static(name: str, request: Request):
    return _asset(name, request)


@router.get("/static/vendor/{name}")
def get_vendored(name: str, request: Request):
    """A library the dashboard uses (uPlot), as vendored: fleet/api/static/vendor/README.md."""
    return _asset(name, request, "vendor")


def _asset(name: str, request: Request, *folders: str) -> Response:
    kind = name.rsplit(".", 1)[-1]
    if "/" in name or name.startswith(".") or kind not in _TYPES:
        raise HTTPException(status_code=404)
    try:
        body = _static(name, *folders)
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPException(status_code=404) from None
    # Revalidate every time (a stale script after an upgrade is worse), but answer an unchanged file
    # with a 304: the vendored libraries are most of the bytes and rarely change.
    etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=_TYPES[kind], headers=headers)
