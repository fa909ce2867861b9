"""POST/GET /v1/jobs and cancellation."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

import torch
from fastapi import APIRouter, Body, Query, Response
from kombu.exceptions import OperationalError
from sqlalchemy.orm import Session

from ml.config import RunConfig
from ml.models import build_model
from service import registry
from service.api.deps import SessionDep, SweptSessionDep, get_job_or_404
from service.errors import ApiError, not_found
from service.registry import FINISHED, JobStatus
from service.schemas import ERROR_RESPONSES, JOB_EXAMPLES, ErrorAnalysisJob, ExperimentJob, JobOut, JobRequest, Page, TrainJob
from workers.app import app as celery_app
from workers.tasks import run_job

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def check_buildable(cfg: RunConfig) -> None:
    """The network `cfg` describes can be built (e.g. its image size fits its poolings)."""
    try:
        with torch.device("meta"):  # builds the network's shapes without allocating its weights
            build_model(cfg)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from exc


# Stands in for the resnet an experiment's unet-pretrained will start from: it does not exist yet.
_PLACEHOLDER_ID = "0" * 32


def check_job(session: Session, job: TrainJob | ErrorAnalysisJob | ExperimentJob) -> None:
    """What the dataclasses cannot check alone: every network the job trains can be built."""
    if isinstance(job, TrainJob):
        check_train_job(session, job)
    elif isinstance(job, ErrorAnalysisJob):
        for model in job.models:
            check_buildable(RunConfig(model=model, dataset=job.dataset, training=job.training))
    else:
        for model in job.models:
            check_buildable(job.run_config(model, job.conditions[0],
                                           init_from=_PLACEHOLDER_ID if model == "unet-pretrained" else None))


def check_train_job(session: Session, job: TrainJob) -> None:
    """The network can be built and init_from is a fitting resnet."""
    cfg = job.run_config()
    check_buildable(cfg)
    if cfg.init_from:
        source = registry.get_model(session, cfg.init_from)
        if source is None or source.name != "resnet":
            raise ApiError(422, "invalid_request", f"init_from: {cfg.init_from!r} is not the id of a registered resnet model")
        width = source.config["training"]["width"]
        if width != cfg.training.width:
            raise ApiError(422, "invalid_request",
                           f"init_from: resnet {cfg.init_from} has width {width}; training.width must match it")


@router.post("", status_code=202, response_model=JobOut, summary="Submit a job")
def submit_job(
    body: Annotated[JobRequest, Body(openapi_examples=JOB_EXAMPLES)], session: SessionDep, response: Response
) -> registry.Job:
    check_job(session, body)
    job = registry.create_job(session, body.kind, dataclasses.asdict(body))
    try:
        run_job.apply_async(args=[job.id], task_id=job.id)
    except OperationalError as exc:
        registry.delete_job(session, job)
        raise ApiError(503, "broker_unavailable", f"the job could not be queued: the broker is unreachable ({exc})") from exc
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("", response_model=Page[JobOut], summary="List jobs, newest first")
def list_jobs(
    session: SweptSessionDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    items, total = registry.list_jobs(session, status, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{job_id}", response_model=JobOut, summary="A job's status, progress and metrics")
def get_job(job_id: str, session: SweptSessionDep) -> registry.Job:
    return get_job_or_404(session, job_id)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    description="A queued job is cancelled at once (200). A running one is asked to stop and ends "
    "`cancelled` within one epoch (202). A finished job cannot be cancelled (409).",
    responses={202: {"model": JobOut}},
)
def cancel_job(job_id: str, session: SweptSessionDep, response: Response) -> registry.Job:
    previous = registry.cancel_job(session, job_id)
    if previous is None:
        raise not_found("job", job_id)
    if previous in FINISHED:
        raise ApiError(409, "job_finished", f"job {job_id} has already {previous}; only queued or running jobs can be cancelled")
    if previous == JobStatus.queued:
        try:
            celery_app.control.revoke(job_id)
        except Exception:  # the worker skips a cancelled job anyway; revoking only saves it the look-up
            logger.warning("could not revoke the message of job %s", job_id, exc_info=True)
    else:
        response.status_code = 202
    return registry.get_job(session, job_id)
