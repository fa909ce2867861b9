"""The worker's Celery app: the API's queue configuration (service.queue) plus the task module,
and the worker's liveness stamps in the registry."""

from __future__ import annotations

import threading

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from celery.utils.log import get_logger

from service.queue import celery_config
from service.settings import get_settings

logger = get_logger(__name__)

app = Celery("classcomp", include=["workers.tasks"])
app.conf.update(celery_config(get_settings()))


@worker_init.connect
def _migrate_registry(**_: object) -> None:
    from service import registry

    registry.migrate()


@worker_process_init.connect
def _forget_parent_connections(**_: object) -> None:
    # A forked pool process must not reuse the database connections of the process it was forked from.
    from service import registry

    registry.engine().dispose(close=False)


def _stamp(name: str) -> None:
    from service import registry

    try:
        registry.stamp_worker(name)
    except Exception:  # a registry hiccup must not stop the worker; the next stamp may get through
        logger.warning("could not stamp worker %s as live in the registry", name, exc_info=True)


class _Liveness:
    """This worker's row in the registry, stamped every heartbeat interval from worker_ready to
    worker_shutdown by a thread of the main process, which stays free while its pool process trains.
    The row's name is the worker's Celery hostname, which the jobs it claims record."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.name = ""

    def start(self, name: str) -> None:
        self.name = name
        _stamp(name)  # before the worker logs "ready.", which is what whoever started it waits for
        interval = get_settings().heartbeat_seconds

        def stamp_until_stopped() -> None:
            while not self.stopping.wait(interval):
                _stamp(name)

        self.thread = threading.Thread(target=stamp_until_stopped, name="worker-liveness", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is None:  # shut down before it was ever ready
            return
        self.stopping.set()
        self.thread.join()  # no stamp may land after the row is gone
        from service import registry

        try:
            registry.forget_worker(self.name)
        except Exception:  # its row then just goes stale
            logger.warning("could not remove worker %s from the registry", self.name, exc_info=True)


_liveness = _Liveness()


@worker_ready.connect
def _start_liveness(sender: object, **_: object) -> None:
    _liveness.start(sender.hostname)  # sender: the worker's consumer


@worker_shutdown.connect
def _stop_liveness(**_: object) -> None:
    _liveness.stop()
