"""The API's side of the job queue: Celery configured from settings, used only to send and revoke
messages by task name. The task itself lives in workers/, which builds its app from `celery_config`
here, so the two sides cannot disagree on broker, queue or serialisation, and importing the API
never loads the worker's stack.

No result backend: a job's state lives in the registry, which the worker writes as it goes.
Messages are JSON only. A job message is acknowledged after the task returns (acks_late) and
put back if the process running it dies (reject_on_worker_lost), and a worker holds one message
at a time (prefetch 1), so a long training never sits behind another in a prefetch buffer. A
redelivered or re-sent message for a job that is no longer queued is skipped by the task itself,
which returns normally, so the duplicate is acknowledged like any other.

Redis's visibility timeout keeps its default (an hour). The message of a killed worker waits that
long in Redis's unacknowledged set, but nothing waits for it: a job the worker had claimed is
failed by the stale-job sweep, and one it had not is still queued, so the API's sweep re-sends
its message once a worker sits idle beside it. A lower timeout would recover nothing more, and
would redeliver the message of every job that trains longer than it, for some idle worker to skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from celery import Celery, Signature, chain, group

from service.settings import Settings, get_settings

RUN_JOB = "classcomp.run_job"
RUN_CELL = "classcomp.run_cell"


def celery_config(settings: Settings) -> dict[str, Any]:
    transport_options = {}
    if settings.broker.startswith("filesystem://"):
        # Embedded mode: messages are files under CLASSCOMP_HOME, so no broker server is needed.
        folders = {name: settings.broker_dir / name for name in ("queue", "control")}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folders["queue"]),
            "data_folder_out": str(folders["queue"]),
            "control_folder": str(folders["control"]),
        }
    return {
        "broker_url": settings.broker,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "task_routes": {RUN_JOB: {"queue": settings.queue}, RUN_CELL: {"queue": settings.queue}},
        # Fail a submission quickly when the broker is down instead of hanging the request.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    }


@lru_cache
def client() -> Celery:
    """A Celery app that knows no tasks: it only publishes and revokes."""
    app = Celery("classcomp")
    app.conf.update(celery_config(get_settings()))
    return app


def send_job(job_id: str) -> None:
    """Queue a job's message (the task id is the job id), carrying the API's time limits: the worker
    raises SoftTimeLimitExceeded in the job at the soft one and kills its process at the hard one.
    Raises kombu's OperationalError when the broker is unreachable."""
    client().send_task(RUN_JOB, args=[job_id], task_id=job_id, **_limits())


def _limits() -> dict[str, float]:
    settings = get_settings()
    return {"soft_time_limit": settings.job_soft_time_limit_seconds, "time_limit": settings.job_hard_time_limit_seconds}


def cell_task_id(job_id: str, position: int) -> str:
    return f"{job_id}.{position}"


def _cell(job_id: str, position: int) -> Signature:
    # Immutable: in a chain, a cell's task takes its own arguments, not the previous one's return value.
    return client().signature(RUN_CELL, args=[job_id, position], immutable=True,
                              task_id=cell_task_id(job_id, position), **_limits())


def send_experiment(job_id: str, cells: Sequence[Any]) -> None:
    """Queue an experiment's cells (ml.experiment's plan: position, after) as one canvas: a group of
    chains, each cell chained behind the cell it starts from, so every worker can take a cell at once
    while a unet-pretrained waits for its resnet. Each cell's time limits are the job limits.
    Raises kombu's OperationalError when the broker is unreachable."""
    waiting: dict[int, list[int]] = {}
    for cell in cells:
        if cell.after is not None:
            waiting.setdefault(cell.after, []).append(cell.position)

    def chained(position: int) -> Signature:
        after = [chained(p) for p in waiting.get(position, [])]
        if not after:
            return _cell(job_id, position)
        return chain(_cell(job_id, position), after[0] if len(after) == 1 else group(after))

    group([chained(c.position) for c in cells if c.after is None]).apply_async()


def send_cell(job_id: str, position: int) -> None:
    """Re-send one cell's message (the sweep's, for a message the broker lost); alone, not chained:
    a cell waiting for it is re-sent on its own once its turn comes."""
    _cell(job_id, position).apply_async()


def revoke(task_ids: Sequence[str]) -> None:
    client().control.revoke(list(task_ids))


def check_broker() -> None:
    with client().connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=5)
