"""create_app(): routers, error handlers, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.access_log import install_access_log
from service.dicomweb.qido import router as qido_router
from service.dicomweb.stow import router as dicomweb_router
from service.dicomweb.wado import router as wado_router
from service.errors import DATABASE_RESPONSES, install_error_handlers
from service.explanations.routes import router as explanations_router
from service.health.routes import router as health_router
from service.http_guard import HttpGuard
from service.ingest.routes import router as ingest_router
from service.registry.routes import router as models_router
from service.settings import Settings, get_settings
from service.web.routes import router as web_router
from service.web.security import install_security_headers
from service.workflow.routes import router as workflow_router
from service.workflow.routes import ups_router
from service.worklist.routes import router as worklist_router

DISCLAIMER = "Decision support for research use only. Not a medical device; predictions must not be used for diagnosis."


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        yield

    app = FastAPI(
        title="Sightline",
        version="0.1.0",
        description="Radiology worklist with Grad-CAM-explained brain-MRI tumour triage. " + DISCLAIMER,
        lifespan=lifespan,
        docs_url=None,  # /docs is served by service.web with local Swagger UI assets (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(HttpGuard)  # before the access log and headers: those wrap its 422s too
    install_access_log(app)
    install_security_headers(app)
    app.include_router(health_router)
    app.include_router(ingest_router, prefix="/api/v1", responses=DATABASE_RESPONSES)
    app.include_router(worklist_router, prefix="/api/v1", responses=DATABASE_RESPONSES)
    app.include_router(dicomweb_router, prefix="/dicomweb", responses=DATABASE_RESPONSES)
    app.include_router(qido_router, prefix="/dicomweb", responses=DATABASE_RESPONSES)
    app.include_router(wado_router, prefix="/dicomweb", responses=DATABASE_RESPONSES)
    app.include_router(workflow_router, prefix="/api/v1", responses=DATABASE_RESPONSES)
    app.include_router(models_router, prefix="/api/v1", responses=DATABASE_RESPONSES)
    app.include_router(explanations_router, prefix="/api/v1", responses=DATABASE_RESPONSES)
    app.include_router(ups_router, prefix="/dicomweb", responses=DATABASE_RESPONSES)
    app.include_router(web_router)
    return app
