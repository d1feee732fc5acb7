"""Dependencies shared by the routers: the store and the ingest worker live on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleet.ingest import Ingest
from fleet.store import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_ingest(request: Request) -> Ingest | None:
    return request.app.state.ingest


StoreDep = Annotated[Store, Depends(get_store)]
IngestDep = Annotated[Ingest | None, Depends(get_ingest)]
