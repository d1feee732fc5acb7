"""Dependencies shared by the routers: the store and the ingest worker live on app.state."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from fleet.commands import Publisher
from fleet.ingest import Ingest
from fleet.store import Store


def get_store(request: Request) -> Store:
    return request.app.state.store


def get_ingest(request: Request) -> Ingest | None:
    return request.app.state.ingest


def get_publisher(request: Request) -> Publisher:
    publisher = request.app.state.publisher
    if publisher is None:
        raise HTTPException(status_code=503, detail="this fleet process has no broker connection to publish through")
    return publisher


StoreDep = Annotated[Store, Depends(get_store)]
IngestDep = Annotated[Ingest | None, Depends(get_ingest)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]
