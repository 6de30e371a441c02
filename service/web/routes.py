"""Static pages at ``/``. They hold no patient data: the browser fetches it from the API
with the reader's bearer token, kept in sessionStorage for the tab's lifetime only."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import NotFound

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)
_NO_STORE = {"Cache-Control": "no-store"}


@router.get("/")
def worklist_page() -> FileResponse:
    return FileResponse(STATIC / "worklist.html", headers=_NO_STORE)


@router.get("/studies/{study_uid}")
def study_page(study_uid: str) -> FileResponse:
    return FileResponse(STATIC / "study.html", headers=_NO_STORE)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    allowed = {"app.js": "text/javascript", "app.css": "text/css"}
    if name not in allowed:
        raise NotFound("no such asset")
    return FileResponse(STATIC / name, media_type=allowed[name], headers=_NO_STORE)
