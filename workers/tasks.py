"""The one task, `run_job`: pick a queued job up, run the handler for its kind, record the outcome.

While a job runs, a heartbeat thread stamps it in the registry; if the process dies, the stamps
stop and the API's sweep fails the job ("worker lost") instead of leaving it running forever.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure
from celery.utils.log import get_task_logger

from ml import artifacts
from ml.artifacts import json_safe
from ml.analysis.excess_risk import excess_risk
from ml.config import RunConfig
from ml.data import load_dataset
from ml.errors import UserError
from ml.evaluation import condition_config, evaluate
from ml.train import epochs_of, train
from service import registry, storage
from service.registry import Job, JobStatus
from service.schemas import ErrorAnalysisJob, ExperimentJob, TrainJob, job_request_adapter
from service.settings import get_settings
from service.queue import RUN_JOB
from workers.app import app

logger = get_task_logger(__name__)


@contextmanager
def heartbeat(job_id: str, interval: float) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                registry.heartbeat(job_id)
            except Exception:  # a registry hiccup must not kill the job; the next beat may get through
                logger.warning("heartbeat for job %s failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def time_limit_error(which: str, seconds: float) -> str:
    return (f"time limit: the job reached its {which} time limit of {seconds:g} s and was stopped "
            f"(CLASSCOMP_JOB_{which.upper()}_TIME_LIMIT_SECONDS)")


def failure(exc: Exception, where: str) -> tuple[str, str]:
    """A failed job's (error, error_code): a UserError as it is; the soft time limit, which Celery raises
    inside the job, as time_limit; anything else is a bug, logged with its traceback and reported as internal."""
    if isinstance(exc, UserError):
        return str(exc), exc.code
    if isinstance(exc, SoftTimeLimitExceeded):
        _hard, soft = run_job.request.timelimit
        return time_limit_error("soft", soft), "time_limit"
    logger.error("%s failed", where, exc_info=exc)
    return f"internal error ({type(exc).__name__}: {exc}); the worker's log has the traceback", "internal_error"


def train_model(cfg: RunConfig, on_epoch: Callable[[dict], bool]) -> registry.Model | None:
    """Train one run, write its artifacts (atomically, under a new model id) and return its registry
    row, not yet registered; None if `on_epoch` stopped the training (then nothing is written).

    The caller registers the row (registry.succeed_with_model / add_model) and, if that is refused,
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
    return model_row(model_id, artifacts.save(result, cfg, storage.model_dir(model_id)))


def model_row(model_id: str, directory: Path) -> registry.Model:
    """The registry row of a saved model, copied from its artifact files: they are the one source of
    a model's metadata, and the row is an index of them that is never edited on its own."""
    config, metrics = artifacts.read_json(directory, artifacts.CONFIG), artifacts.read_json(directory, artifacts.METRICS)
    return registry.Model(
        id=model_id,
        name=config["run"]["model"],
        config=config["run"],
        classes=config["classes"],
        parameter_count=config["parameter_count"],
        train_seconds=metrics["train_seconds"],
        final_metrics=metrics["final"],
        history=metrics["history"],
        created_at=registry.now(),
        weights_sha256=artifacts.weights_sha256(directory),
    )


def evaluate_under(model_id: str, cfg: RunConfig, condition: str) -> dict:
    """A registered model's accuracy and confusion matrix on the validation images of `condition`."""
    settings = get_settings()
    loaded = artifacts.load(storage.model_dir(model_id), settings.device)
    data = load_dataset(condition_config(cfg.dataset, condition), settings.mnist_dir, settings.download)
    return evaluate(loaded.model, data)


def run_train(job: Job) -> None:
    request: TrainJob = job_request_adapter.validate_python(job.request)

    def on_epoch(record: dict) -> bool:
        return registry.record_epoch(job.id, json_safe(record))

    model = train_model(request.run_config(), on_epoch)
    if model is None:
        registry.finish_job(job.id, JobStatus.cancelled)
    elif not registry.succeed_with_model(job.id, model):
        # The job was failed meanwhile (the sweep thought this worker lost): keep no unregistered files.
        storage.remove(model.id)


def run_experiment(job: Job) -> None:
    """Train every (model, condition) cell in `cells()` order, registering each model as it is done.

    Progress counts epochs over the whole grid: a record's `epoch`/`epochs` are the grid's, and it
    also names its cell (`cell`, `cells`, `model`, `condition`) and the epoch within the cell
    (`cell_epoch`, `cell_epochs`). A cancel stops at the end of the current epoch; a cell that fails
    fails the job with that cell's error. Either way the models of finished cells stay registered
    (they are whole models, listed in the job's model_ids); the unfinished cell leaves nothing.
    Each unet-pretrained starts from the resnet trained just before it under the same condition.
    """
    request: ExperimentJob = job_request_adapter.validate_python(job.request)
    experiment = request.experiment_config()
    cells = experiment.cells()
    total = experiment.total_epochs()
    done = 0  # epochs of the cells already trained
    resnets: dict[str, str] = {}  # condition -> the id of its resnet
    rows: list[dict] = []
    for index, (name, condition) in enumerate(cells, start=1):
        cfg = experiment.run_config(name, condition, init_from=resnets.get(condition) if name == "unet-pretrained" else None)
        where = {"cell": index, "cells": len(cells), "model": name, "condition": condition}

        def on_epoch(record: dict, offset: int = done, where: dict = where) -> bool:
            grid = {**record, **where, "epoch": offset + record["epoch"], "epochs": total,
                    "cell_epoch": record["epoch"], "cell_epochs": record["epochs"]}
            return registry.record_epoch(job.id, json_safe(grid))

        try:
            model = train_model(cfg, on_epoch)
        except Exception as exc:
            error, code = failure(exc, f"job {job.id}: cell {name} under {condition}")
            kept = f"; the {len(rows)} model(s) of earlier cells stay registered" if rows else ""
            registry.finish_job(job.id, JobStatus.failed,
                                f"{name} under {condition} (cell {index} of {len(cells)}): {error}{kept}", code)
            return
        if model is None:
            registry.finish_job(job.id, JobStatus.cancelled)
            return
        if not registry.add_model(job.id, model):
            storage.remove(model.id)  # the job was failed meanwhile (the sweep thought this worker lost)
            return
        if name == "resnet":
            resnets[condition] = model.id
        done += epochs_of(name, experiment.training)
        row = {"model": name, "condition": condition, "model_id": model.id,
               "val_accuracy": model.final_metrics.get("val_accuracy"),
               "train_seconds": model.train_seconds, "parameter_count": model.parameter_count}
        if condition == "vanilla" and "noisy" in experiment.conditions:
            # The paper's bracketed Table 1 values: trained clean, tested on the noisy validation images.
            row["noisy_val_accuracy"] = evaluate_under(model.id, cfg, "noisy")["accuracy"]
        rows.append(row)
    report = {"models": experiment.models, "conditions": experiment.conditions, "rows": rows}
    registry.succeed_with_report(job.id, json_safe(report))


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


HANDLERS: dict[str, Callable[[Job], None]] = {
    "train": run_train,
    "experiment": run_experiment,
    "error-analysis": run_error_analysis,
}


@app.task(name=RUN_JOB)
def run_job(job_id: str) -> None:
    job = registry.claim_job(job_id, worker=run_job.request.hostname or socket.gethostname())
    if job is None:
        logger.info("skipping job %s: it is no longer queued", job_id)
        return
    with heartbeat(job_id, get_settings().heartbeat_seconds):
        try:
            HANDLERS[job.kind](job)
        except Exception as exc:
            registry.finish_job(job_id, JobStatus.failed, *failure(exc, f"job {job_id}"))


@task_failure.connect
def _killed_at_hard_time_limit(sender: object, task_id: str, exception: BaseException, **_: object) -> None:
    """At the hard time limit Celery kills the process running the job, which therefore records nothing;
    this runs in the worker's main process instead (the task id is the job id)."""
    if getattr(sender, "name", None) == RUN_JOB and isinstance(exception, TimeLimitExceeded):
        registry.finish_job(task_id, JobStatus.failed, time_limit_error("hard", float(exception.args[0])), "time_limit")
