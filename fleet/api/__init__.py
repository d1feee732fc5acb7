"""The fleet's HTTP API (FastAPI): one router per resource under /api/v1."""
