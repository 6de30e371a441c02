"""Static pages at ``/``. They hold no patient data: the browser fetches it from the API
with the reader's bearer token, kept in sessionStorage for the tab's lifetime only.

``/docs`` is Swagger UI served from this process (the ``swagger-ui-bundle-v2`` wheel), so
the API docs work without internet and under the same Content Security Policy.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from swagger_ui_bundle import swagger_ui_path

from service.errors import NotFound

STATIC = Path(__file__).parent / "static"
SWAGGER_UI = Path(str(swagger_ui_path))
router = APIRouter(include_in_schema=False)
_NO_STORE = {"Cache-Control": "no-store"}
_JS, _CSS = "text/javascript", "text/css"
# Our own assets; viewer.js and viewer.css belong to the study page.
ASSETS = {
    "app.js": _JS,
    "app.css": _CSS,
    "worklist.js": _JS,
    "admin.js": _JS,
    "docs.js": _JS,
    "viewer.js": _JS,
    "viewer.css": _CSS,
}
# Swagger UI's files are versioned by the wheel, so browsers may keep them a day.
SWAGGER_ASSETS = {"swagger-ui-bundle.js": _JS, "swagger-ui.css": _CSS, "favicon-32x32.png": "image/png"}
_CACHE_A_DAY = {"Cache-Control": "public, max-age=86400"}


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC / name, media_type="text/html", headers=_NO_STORE)


@router.get("/")
def worklist_page() -> FileResponse:
    return _page("worklist.html")


@router.get("/studies/{study_uid}")
def study_page(study_uid: str) -> FileResponse:
    return _page("study.html")


@router.get("/admin")
def admin_page() -> FileResponse:
    return _page("admin.html")


@router.get("/docs")
def docs_page() -> FileResponse:
    return _page("docs.html")


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    path = STATIC / name
    if name not in ASSETS or not path.is_file():
        raise NotFound("no such asset")
    return FileResponse(path, media_type=ASSETS[name], headers=_NO_STORE)


@router.get("/static/swagger-ui/{name}")
def swagger_asset(name: str) -> FileResponse:
    if name not in SWAGGER_ASSETS:
        raise NotFound("no such asset")
    return FileResponse(SWAGGER_UI / name, media_type=SWAGGER_ASSETS[name], headers=_CACHE_A_DAY)
