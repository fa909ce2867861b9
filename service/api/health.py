"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import queue, registry
from service.api.deps import SettingsDep
from service.errors import error_response

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


def _unreachable(name: str, exc: Exception) -> str:
    return f"{name} unreachable ({type(exc).__name__}: {exc})"


@router.get(
    "/readyz",
    summary="Readiness: the registry and the broker are reachable and a worker is live",
    description="A worker is live when it stamped the registry within CLASSCOMP_JOB_STALE_SECONDS; it is "
    "busy while a running job names it. Without a live worker, jobs are accepted but wait queued.",
    responses={503: {"description": "names what is missing: the registry, the broker, or a live worker"}},
)
def readyz(settings: SettingsDep) -> JSONResponse:
    failures = []
    workers = None
    try:
        with registry.session_scope() as session:
            workers = registry.worker_counts(session, settings.job_stale_seconds)
    except Exception as exc:
        failures.append(_unreachable("registry", exc))
    try:
        queue.check_broker()
    except Exception as exc:
        failures.append(_unreachable("broker", exc))
    if workers is not None and workers[0] == 0:
        failures.append(f"no live worker (none seen in the last {settings.job_stale_seconds:g} s)")
    if failures:
        return error_response(503, "not_ready", "; ".join(failures))
    live, busy = workers
    return JSONResponse({"status": "ready", "registry": "ok", "broker": "ok", "workers": {"live": live, "busy": busy}})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
