"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from kombu.exceptions import OperationalError
from starlette.concurrency import run_in_threadpool

from service import auth, queue, registry
from service.api import export, figures, health, inference, job_events, job_reports, jobs, models, oip, pages, reports
from service.batching import PredictBatcher
from service.errors import BodyLimitMiddleware, install_error_handlers
from service.inference import ModelCache
from service.metrics import Metrics, MetricsMiddleware
from service.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def _sweep(settings: Settings) -> None:
    stale = settings.job_stale_seconds
    if n := registry.sweep_stale_jobs(stale):
        logger.warning("failed %d job(s) or experiment cell(s) whose worker stopped sending heartbeats", n)
    registry.forget_dead_workers(stale)
    requeued = registry.claim_requeues(settings.requeue_after_seconds, stale)
    for sent, (job_id, cell) in enumerate(requeued):
        try:
            queue.send_job(job_id) if cell is None else queue.send_cell(job_id, cell)
        except OperationalError:
            logger.warning("could not re-send %d lost message(s): the broker is unreachable; trying again in %g s",
                           len(requeued) - sent, settings.requeue_after_seconds, exc_info=True)
            return
        logger.warning("re-sent the message of job %s%s: queued for over %g s beside an idle worker, so the broker "
                       "had lost it", job_id, "" if cell is None else f" cell {cell}", settings.requeue_after_seconds)


async def _sweep_forever(settings: Settings) -> None:
    """Fail jobs of dead workers and re-send lost messages even when nobody reads them (job reads
    also fail stale jobs first)."""
    while True:
        await asyncio.sleep(min(settings.job_stale_seconds, settings.requeue_after_seconds) / 2)
        try:
            await run_in_threadpool(_sweep, settings)
        except Exception:
            logger.exception("the sweep failed; retrying on the next interval")


def create_app() -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(registry.migrate)
        settings.artifacts.mkdir(parents=True, exist_ok=True)
        sweeper = asyncio.create_task(_sweep_forever(settings))
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
    torch.set_num_threads(settings.api_torch_threads)
    app.state.predict_batcher = PredictBatcher(settings.batch_max_size, settings.batch_max_delay_ms / 1000,
                                               app.state.metrics.predict_batch_size)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes)
    # Outside the body limit: no body is read for a caller without a valid token. Inside the metrics,
    # which count refusals too. Before the routers: their routes take the role check then.
    auth.install(app, settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for router in (jobs.router, job_events.router, job_reports.router, export.router, inference.router, reports.router,
                   figures.router, oip.router, models.names_router, models.router, health.router, pages.router):
        app.include_router(router)
    app.mount(pages.STATIC_PREFIX, pages.static, name="static")
    return app
