"""A stock OHIF Viewer (v2, ``@ohif/viewer`` UMD build from the npm registry) served next to Sightline.

``fetch_ohif`` puts the package's ``dist/`` in a cache directory once (``npm pack`` + tar
extract, no CDN at run time); ``viewer_app`` is the "site": a same-origin Starlette app that
serves the viewer's files and a generated ``app-config.js``, and passes ``/dicomweb/*``
through to a real Sightline API, untouched (the browser's own Authorization header included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

OHIF_PACKAGE = "@ohif/viewer"
OHIF_VERSION = "4.12.51"  # the last OHIF v2 release (script-tag UMD build: dist/index.umd.js)
NPM_TIMEOUT_S = 300


class OhifUnavailable(RuntimeError):
    """npm or the registry is not reachable, so the viewer package cannot be fetched."""


def cache_root() -> Path:
    configured = os.environ.get("SIGHTLINE_OHIF_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "sightline-ohif"


def fetch_ohif(version: str = OHIF_VERSION) -> Path:
    """The ``dist/`` folder of ``@ohif/viewer@version``, fetched into the cache on first use."""
    dist = cache_root() / version / "dist"
    if (dist / "index.umd.js").is_file():
        return dist
    npm = shutil.which("npm")
    if npm is None:
        raise OhifUnavailable("npm is not installed")
    dist.parent.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dist.parent.parent) as scratch:
        try:
            done = subprocess.run(
                [npm, "pack", f"{OHIF_PACKAGE}@{version}", "--silent"],
                cwd=scratch, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise OhifUnavailable(f"npm pack {OHIF_PACKAGE}@{version} timed out") from exc
        tarballs = list(Path(scratch).glob("*.tgz"))
        if done.returncode != 0 or len(tarballs) != 1:
            raise OhifUnavailable(f"npm pack {OHIF_PACKAGE}@{version} failed: {done.stderr.strip()[-800:]}")
        with tarfile.open(tarballs[0]) as tar:
            tar.extractall(Path(scratch) / "x", filter="data")
        package = Path(scratch) / "x" / "package"
        if not (package / "dist" / "index.umd.js").is_file():
            raise RuntimeError(f"{OHIF_PACKAGE}@{version} has no dist/index.umd.js")
        target = dist.parent
        if target.exists():
            shutil.rmtree(target)
        package.rename(target)  # same file system: the cache never holds half a package
    return dist


# The package's own index.html loads a polyfill from polyfill.io; Chromium needs none, and
# nothing may come from a CDN. OHIF v2 sends a server's ``requestOptions.auth`` only with
# QIDO and metadata requests; its image loader and SR loader call getAuthorizationHeader()
# without the server and use the signed-in (OIDC) user's access token instead, so the page
# puts Sightline's bearer token there too, as an OIDC login would. (OHIF 4.12.51 then
# parses Sightline's TID 1500 SR and shows "Failed to parse ... SR display set": its
# parseSCOORD3D reads srDisplaySet.referencedDisplaySets, which it never set; a viewer bug.)
INDEX_HTML = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8" /><title>OHIF Viewer (Sightline test)</title></head>
<body>
  <div id="root"></div>
  <script src="/app-config.js"></script>
  <script src="/index.umd.js" crossorigin></script>
  <script>
    window.OHIFViewer.installViewer(window.config, 'root');
    window.store.dispatch({type: 'redux-oidc/USER_FOUND', payload: {access_token: window.sightlineToken}});
  </script>
</body>
</html>
"""


def app_config(dicomweb_root: str, token: str) -> str:
    """``window.config`` for OHIF v2 with one DICOMweb server: Sightline at ``dicomweb_root``."""
    server = {
        "name": "Sightline",
        "wadoUriRoot": dicomweb_root,
        "qidoRoot": dicomweb_root,
        "wadoRoot": dicomweb_root,
        "qidoSupportsIncludeField": True,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "showStudyList": True,
        "filterQueryParam": False,
        "disableServersCache": False,
        "studyPrefetcher": {"enabled": False},
        "servers": {"dicomWeb": [server]},
    }
    return (
        f"window.sightlineToken = {json.dumps(token)};\n"
        "window.sightlineAuthorization = function () { return 'Bearer ' + window.sightlineToken; };\n"
        f"window.config = {json.dumps(config, indent=2)};\n"
        "window.config.servers.dicomWeb[0].requestOptions = { auth: window.sightlineAuthorization };\n"
    )


def viewer_app(dist: Path, api_base: str, token: str) -> Starlette:
    """The viewer's files, its config, and ``/dicomweb/*`` proxied to ``api_base`` (same origin)."""
    config_js = app_config("/dicomweb", token)
    passed_request = ("accept", "authorization", "content-type")
    passed_response = ("content-type", "content-length", "content-location", "warning", "www-authenticate")
    client = httpx.AsyncClient(base_url=api_base, timeout=60)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    async def config(_: Request) -> Response:
        return Response(config_js, media_type="application/javascript")

    async def dicomweb(request: Request) -> Response:
        upstream = await client.request(
            request.method,
            "/dicomweb/" + request.path_params["path"] + (f"?{request.url.query}" if request.url.query else ""),
            headers={k: v for k, v in request.headers.items() if k.lower() in passed_request},
            content=await request.body(),
        )
        headers = {k: v for k, v in upstream.headers.items() if k.lower() in passed_response}
        return Response(upstream.content, status_code=upstream.status_code, headers=headers)

    async def files(request: Request) -> Response:
        name = request.path_params["path"]
        path = (dist / name).resolve()
        if name and path.is_file() and path.is_relative_to(dist.resolve()) and path.name != "index.html":
            return FileResponse(path)
        return HTMLResponse(INDEX_HTML)  # every viewer route (/, /viewer/<uid>, ...) is the app

    return Starlette(
        routes=[
            Route("/app-config.js", config),
            Route("/dicomweb/{path:path}", dicomweb, methods=["GET", "POST"]),
            Route("/{path:path}", files),
        ],
        lifespan=lifespan,
    )


@contextmanager
def serve(app: object, port: int) -> Iterator[str]:
    """Run ``app`` under a real uvicorn server on 127.0.0.1:port in a thread; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn on port {port} did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
