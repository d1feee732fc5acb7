from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def get_index():
    """The fleet overview page (it polls /api/v1/kits)."""
    return (resources.files("fleet.api") / "static" / "index.html").read_text()
