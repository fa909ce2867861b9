"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import registry
from service.api import figures, health, inference, job_reports, jobs, models, reports
from service.errors import BodyLimitMiddleware, install_error_handlers
from service.inference import ModelCache
from service.metrics import Metrics, MetricsMiddleware
from service.settings import get_settings

logger = logging.getLogger(__name__)


def _sweep(stale_seconds: float) -> None:
    with registry.session_scope() as session:
        if n := registry.sweep_stale_jobs(session, stale_seconds):
            logger.warning("failed %d job(s) whose worker stopped sending heartbeats", n)


async def _sweep_forever(stale_seconds: float) -> None:
    """Fail jobs of dead workers even when nobody reads them (job reads also sweep first)."""
    while True:
        await asyncio.sleep(stale_seconds / 2)
        try:
            await run_in_threadpool(_sweep, stale_seconds)
        except Exception:
            logger.exception("the stale-job sweep failed; retrying on the next interval")


def create_app() -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(registry.migrate)
        settings.artifacts.mkdir(parents=True, exist_ok=True)
        sweeper = asyncio.create_task(_sweep_forever(settings.job_stale_seconds))
        yield
        sweeper.cancel()

    app = FastAPI(
        title="classcomp",
        summary="Train, store, compare and serve CNN and VAE classifiers",
        version="1",
        lifespan=lifespan,
    )
    app.state.model_cache = ModelCache(settings.model_cache_size, settings.device)
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in (jobs.router, job_reports.router, models.router, inference.router, reports.router, figures.router,
                   health.router):
        app.include_router(router)
    return app
