"""The tasks: `run_job` picks a queued job up, runs the handler for its kind and records the outcome;
`run_cell` does the same for one cell of an experiment, whose cells run as tasks of their own.

While a job or cell runs, a heartbeat thread stamps it in the registry; if the process dies, the
stamps stop and the API's sweep fails it ("worker lost") instead of leaving it running forever.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from celery import current_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure
from celery.utils.log import get_task_logger

from ml import artifacts
from ml.analysis.excess_risk import excess_risk
from ml.artifacts import json_safe
from ml.config import RunConfig
from ml.data import Dataset, load_dataset
from ml.errors import UserError
from ml.evaluation import condition_config
from ml.experiment import cell_row
from ml.train import TrainResult, train
from service import registry, storage
from service.queue import RUN_CELL, RUN_JOB
from service.registry import Job, JobStatus
from service.schemas import ErrorAnalysisJob, ExperimentJob, TrainJob, job_request_adapter
from service.settings import get_settings
from workers.app import app, repeating
from workers.tracking import Tracker

logger = get_task_logger(__name__)


def time_limit_error(which: str, seconds: float) -> str:
    return (f"time limit: the job reached its {which} time limit of {seconds:g} s and was stopped "
            f"(CLASSCOMP_JOB_{which.upper()}_TIME_LIMIT_SECONDS)")


def failure(exc: Exception, where: str) -> tuple[str, str]:
    """A failed job's (error, error_code): a UserError as it is; the soft time limit, which Celery raises
    inside the job, as time_limit; anything else is a bug, logged with its traceback and reported as internal."""
    if isinstance(exc, UserError):
        return str(exc), exc.code
    if isinstance(exc, SoftTimeLimitExceeded):
        _hard, soft = current_task.request.timelimit
        return time_limit_error("soft", soft), "time_limit"
    logger.error("%s failed", where, exc_info=exc)
    return f"internal error ({type(exc).__name__}: {exc}); the worker's log has the traceback", "internal_error"


def train_model(cfg: RunConfig, on_epoch: Callable[[dict], bool],
                name: str | None = None) -> tuple[registry.Model, TrainResult] | None:
    """Train one run, write its artifacts (atomically, under a new model id) and return its registry
    row, not yet registered, with the training's result; None if `on_epoch` stopped the training (then
    nothing is written). The model is to be a version of `name`, by default registry.derived_name.

    The caller registers the row (registry.succeed_with_model / finish_cell) and, if that is refused,
    removes the directory with storage.remove(model.id). `cfg.init_from` is a registered model id.
    """
    settings = get_settings()
    data = load_dataset(cfg.dataset, settings.mnist_dir, settings.download)
    init_state = None
    if cfg.init_from:
        try:
            init_state = artifacts.load_state(storage.model_dir(cfg.init_from), registry.weights_sha256(cfg.init_from))
        except artifacts.ArtifactError as exc:
            raise UserError(f"init_from model {cfg.init_from} cannot be loaded (was it deleted?): {exc}",
                            code="init_from_unavailable") from exc

    result = train(cfg, data, device=settings.device, init_state=init_state, on_epoch=on_epoch)
    if result.stopped:
        return None
    model_id = registry.new_id()
    return model_row(model_id, artifacts.save(result, cfg, storage.model_dir(model_id)), name), result


def model_row(model_id: str, directory: Path, name: str | None) -> registry.Model:
    """The registry row of a saved model, copied from its artifact files: they are the one source of
    a model's metadata, and the row is an index of them that is never edited on its own. Its version
    is given when it is registered."""
    config, metrics = artifacts.read_json(directory, artifacts.CONFIG), artifacts.read_json(directory, artifacts.METRICS)
    return registry.Model(
        id=model_id,
        name=name or registry.derived_name(config["run"]),
        architecture=config["run"]["model"],
        config=config["run"],
        classes=config["classes"],
        parameter_count=config["parameter_count"],
        train_seconds=metrics["train_seconds"],
        final_metrics=metrics["final"],
        history=metrics["history"],
        created_at=registry.now(),
        weights_sha256=artifacts.weights_sha256(directory),
    )


def run_train(job: Job) -> None:
    request: TrainJob = job_request_adapter.validate_python(job.request)
    cfg = request.run_config()
    with Tracker(cfg, f"{cfg.model} ({job.id})", {"classcomp.job_id": job.id}) as tracker:

        def on_epoch(record: dict) -> bool:
            tracker.epoch(record)
            return registry.record_epoch(job.id, json_safe(record))

        trained = train_model(cfg, on_epoch, request.name)
        if trained is None:
            registry.finish_job(job.id, JobStatus.cancelled)
            return
        model, _ = trained
        if not registry.succeed_with_model(job.id, model):
            # The job was failed meanwhile (the sweep thought this worker lost): keep no unregistered files.
            storage.remove(model.id)
            return
        tracker.registered(model)


def run_experiment_cell(cell: registry.ClaimedCell) -> None:
    """Train one cell of an experiment and register its model with its row of the report. A cancel
    stops it at the end of the current epoch, leaving nothing. Its job ends with its last cell
    (registry.finish_cell), so no task waits for the others."""
    request: ExperimentJob = job_request_adapter.validate_python(cell.request)
    experiment = request.experiment_config()
    cfg = experiment.run_config(cell.model, cell.condition, init_from=cell.init_from)
    tags = {"classcomp.job_id": cell.job_id, "classcomp.cell": str(cell.position), "classcomp.condition": cell.condition}
    run_name = f"{cell.model} under {cell.condition} ({cell.job_id}, cell {cell.position})"
    with Tracker(cfg, run_name, tags) as tracker:

        def on_epoch(record: dict) -> bool:
            tracker.epoch(record)
            return registry.record_cell_epoch(cell.job_id, cell.position, json_safe(record))

        trained = train_model(cfg, on_epoch)
        if trained is None:
            registry.finish_cell(cell.job_id, cell.position, JobStatus.cancelled)
            return
        model, result = trained
        def noisy() -> Dataset:
            settings = get_settings()
            return load_dataset(condition_config(cfg.dataset, "noisy"), settings.mnist_dir, settings.download)

        row = {**cell_row(experiment, cell.model, cell.condition, result, noisy), "model_id": model.id, "worker": cell.worker}
        if not registry.finish_cell(cell.job_id, cell.position, JobStatus.succeeded, model=model, result=json_safe(row)):
            storage.remove(model.id)  # the sweep failed the cell meanwhile (it thought this worker lost)
            return
        tracker.registered(model)


def run_error_analysis(job: Job) -> None:
    """The excess-risk decomposition. Progress counts (model, repeat) pairs, each two trainings (h-hat
    on n_train images, h-bar on the evaluation set): a record's `epoch`/`epochs` are pairs done and
    in all, with the pair's `model` and `repeat`. A cancel stops after the current pair; a cancelled
    job keeps no report."""
    request: ErrorAnalysisJob = job_request_adapter.validate_python(job.request)
    cfg = request.analysis_config()

    def on_progress(done: int, total: int) -> bool:
        record = {"epoch": done, "epochs": total, "phase": "error-analysis",
                  "model": cfg.models[(done - 1) % len(cfg.models)], "repeat": (done - 1) // len(cfg.models) + 1}
        return registry.record_epoch(job.id, record)

    report = excess_risk(cfg, device=get_settings().device, on_progress=on_progress)
    if report["stopped"]:
        registry.finish_job(job.id, JobStatus.cancelled)
        return
    registry.succeed_with_report(job.id, json_safe(report))


# An experiment's cells run as RUN_CELL tasks of their own; its job has no RUN_JOB message.
HANDLERS: dict[str, Callable[[Job], None]] = {
    "train": run_train,
    "error-analysis": run_error_analysis,
}


def _hostname() -> str:
    return current_task.request.hostname or socket.gethostname()


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    job = registry.claim_job(job_id, worker=_hostname())
    if job is None:
        logger.info("skipping job %s: it is no longer queued", job_id)
        return
    with repeating(lambda: registry.heartbeat(job_id), get_settings().heartbeat_seconds, f"heartbeat-{job_id}"):
        try:
            HANDLERS[job.kind](job)
        except Exception as exc:
            registry.finish_job(job_id, JobStatus.failed, *failure(exc, f"job {job_id}"))


@app.task(name=RUN_CELL)
def run_cell(job_id: str, position: int) -> None:
    cell = registry.claim_cell(job_id, position, worker=_hostname())
    if cell is None:
        logger.info("skipping cell %d of job %s: it is no longer queued, or waits for another", position, job_id)
        return
    beat = lambda: registry.heartbeat_cell(job_id, position)  # noqa: E731
    with repeating(beat, get_settings().heartbeat_seconds, f"heartbeat-{job_id}.{position}"):
        try:
            run_experiment_cell(cell)
        except Exception as exc:
            error, code = failure(exc, f"job {job_id}: cell {position} ({cell.model} under {cell.condition})")
            registry.finish_cell(job_id, position, JobStatus.failed, error=error, error_code=code)


@task_failure.connect
def _killed_at_hard_time_limit(
    sender: object, task_id: str, exception: BaseException, args: list | None = None, **_: object
) -> None:
    """At the hard time limit Celery kills the process running the job, which therefore records nothing;
    this runs in the worker's main process instead (a job's task id is the job id; a cell's args name it)."""
    if not isinstance(exception, TimeLimitExceeded):
        return
    error = time_limit_error("hard", float(exception.args[0]))
    if getattr(sender, "name", None) == RUN_JOB:
        registry.finish_job(task_id, JobStatus.failed, error, "time_limit")
    elif getattr(sender, "name", None) == RUN_CELL and args:
        registry.finish_cell(args[0], args[1], JobStatus.failed, error=error, error_code="time_limit")
