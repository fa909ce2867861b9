"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import registry
from service.errors import error_response
from workers.app import app as celery_app

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


def _check_broker() -> None:
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=5)


@router.get("/readyz", summary="Readiness: the registry and the broker are reachable",
            responses={503: {"description": "names what is unreachable"}})
def readyz() -> JSONResponse:
    failures = []
    for name, check in (("registry", registry.ping), ("broker", _check_broker)):
        try:
            check()
        except Exception as exc:
            failures.append(f"{name} unreachable ({type(exc).__name__}: {exc})")
    if failures:
        return error_response(503, "not_ready", "; ".join(failures))
    return JSONResponse({"status": "ready", "registry": "ok", "broker": "ok"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
