"""The dashboard: `/` serves the page shell and `/static/` its scripts and styles (service/web).

The shell and its scripts hold no data, so they are public like /docs; every job, model and figure the
pages show comes from /v1 with the caller's bearer token, which a page asks for when the API says 401.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).resolve().parents[1] / "web"
STATIC_PREFIX = "/static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard() -> FileResponse:
    return FileResponse(WEB / "index.html")


# Scripts change with the service, so browsers revalidate them (StaticFiles answers with ETags).
static = StaticFiles(directory=WEB)
