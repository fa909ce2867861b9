"""POST/GET /v1/jobs and cancellation."""

from __future__ import annotations

import dataclasses
import logging
from typing import Annotated

from fastapi import APIRouter, Body, Query, Response
from kombu.exceptions import OperationalError
from sqlalchemy.orm import Session

from ml.config import RunConfig
from service import admission, queue, registry
from service.api.deps import SessionDep, SettingsDep, SweptSessionDep, get_job_or_404
from service.errors import ApiError
from service.registry import FINISHED, JobStatus
from service.schemas import (
    ERROR_RESPONSES, JOB_EXAMPLES, ErrorAnalysisJob, ErrorResponse, ExperimentJob, JobOut, JobRequest, Page, TrainJob,
)
from service.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)


def check_job(session: Session, job: TrainJob | ErrorAnalysisJob | ExperimentJob, settings: Settings) -> None:
    """What the dataclasses cannot check alone (init_from is a fitting resnet), then what this deployment
    affords (service/admission.py, which also finds whether every network the job trains can be built)."""
    if isinstance(job, TrainJob) and job.init_from:
        # The job keeps the id: the worker starts from the model named now, wherever an alias has moved since.
        job.init_from = check_init_from(session, job.run_config())
    admission.admit(session, job, settings)


def check_init_from(session: Session, cfg: RunConfig) -> str:
    """The id of the registered resnet that `cfg.init_from` names."""
    source = registry.get_model(session, cfg.init_from)
    if source is None or source.architecture != "resnet":
        raise ApiError(422, "invalid_request", f"init_from: {cfg.init_from!r} names no registered resnet model "
                       "(give its id, name/version, name@alias or name)")
    width = source.config["training"]["width"]
    if width != cfg.training.width:
        raise ApiError(422, "invalid_request",
                       f"init_from: resnet {cfg.init_from} has width {width}; training.width must match it")
    return source.id


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Submit a job",
    description="The job is validated, then admitted only if this deployment affords it, before anything is "
    "queued: epochs, batch size, width, image size, generated images and repeats within the CLASSCOMP_JOB_MAX_* "
    "caps, and the estimated memory of each training (weights, gradients and Adam's moments, activations at the "
    "batch size, the images) within CLASSCOMP_WORKER_MEMORY_BYTES; otherwise 422 naming the field. With "
    "CLASSCOMP_MAX_QUEUED_JOBS jobs already queued it is 429 with Retry-After. A job running past "
    "CLASSCOMP_JOB_SOFT_TIME_LIMIT_SECONDS fails with error_code time_limit.",
    responses={429: {"model": ErrorResponse, "description": "the queue is full (code queue_full)",
                     "headers": {"Retry-After": {"description": "seconds to wait before submitting again",
                                                 "schema": {"type": "integer"}}}}},
)
def submit_job(
    body: Annotated[JobRequest, Body(openapi_examples=JOB_EXAMPLES)], session: SessionDep, settings: SettingsDep,
    response: Response,
) -> registry.Job:
    check_job(session, body, settings)
    cells = body.experiment_config().plan() if isinstance(body, ExperimentJob) else []
    job = registry.create_job(session, body.kind, dataclasses.asdict(body), cells)
    try:
        if cells:
            queue.send_experiment(job.id, cells)
        else:
            queue.send_job(job.id)
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
    "`cancelled` within one epoch (202); an experiment's queued cells are cancelled at once, and with none "
    "running it ends at once (200). A finished job cannot be cancelled (409).",
    responses={202: {"model": JobOut}},
)
def cancel_job(job_id: str, session: SweptSessionDep, response: Response) -> registry.Job:
    queued_cells = [c.position for c in get_job_or_404(session, job_id).cells if c.status == JobStatus.queued]
    previous = registry.cancel_job(session, job_id)
    if previous in FINISHED:
        raise ApiError(409, "job_finished", f"job {job_id} has already {previous}; only queued or running jobs can be cancelled")
    messages = [queue.cell_task_id(job_id, p) for p in queued_cells] or ([job_id] if previous == JobStatus.queued else [])
    if messages:
        try:
            queue.revoke(messages)
        except Exception:  # workers skip what is no longer queued anyway; revoking only saves them the look-up
            logger.warning("could not revoke the messages of job %s", job_id, exc_info=True)
    job = registry.get_job(session, job_id)
    if job.status not in FINISHED:
        response.status_code = 202
    return job
