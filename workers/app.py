"""The Celery app, configured from settings.

No result backend: a job's state lives in the registry, which the worker writes as it goes.
Messages are JSON only. A job message is acknowledged after the task returns (acks_late) and
put back if the process running it dies (reject_on_worker_lost), and a worker holds one message
at a time (prefetch 1), so a long training never sits behind another in a prefetch buffer. A
redelivered message for a job that is no longer queued is skipped by the task itself.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init, worker_process_init

from service.settings import Settings, get_settings

RUN_JOB = "classcomp.run_job"


def make_celery(settings: Settings) -> Celery:
    app = Celery("classcomp", include=["workers.tasks"])
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
    app.conf.update(
        broker_url=settings.broker,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=settings.queue,
        task_routes={RUN_JOB: {"queue": settings.queue}},
        # Fail a submission quickly when the broker is down instead of hanging the request.
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1},
    )
    return app


app = make_celery(get_settings())


@worker_init.connect
def _migrate_registry(**_: object) -> None:
    from service import registry

    registry.migrate()


@worker_process_init.connect
def _forget_parent_connections(**_: object) -> None:
    # A forked pool process must not reuse the database connections of the process it was forked from.
    from service import registry

    registry.engine().dispose(close=False)
