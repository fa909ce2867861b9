"""The worker's Celery app: the API's queue configuration (service.queue) plus the task module,
and the worker's liveness stamps in the registry."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

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


@contextmanager
def repeating(beat: Callable[[], None], interval: float, name: str, at_start: bool = False) -> Iterator[None]:
    """Call `beat` every `interval` seconds from a thread while the block runs (the heartbeats of jobs
    and of this worker), and once first in the caller if `at_start`. A failing beat is logged, never
    raised: a registry hiccup must not stop the work, and the next beat may get through. No beat runs
    after the block has left."""
    stop = threading.Event()

    def safe_beat() -> None:
        try:
            beat()
        except Exception:
            logger.warning("%s: a beat failed", name, exc_info=True)

    def run() -> None:
        while not stop.wait(interval):
            safe_beat()

    if at_start:
        safe_beat()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# This worker's row in the registry, stamped every heartbeat interval from worker_ready to
# worker_shutdown by a thread of the main process, which stays free while its pool process trains.
# The row's name is the worker's Celery hostname, which the jobs and cells it claims record.
_liveness = ExitStack()


@worker_ready.connect
def _start_liveness(sender: object, **_: object) -> None:
    from service import registry

    name = sender.hostname  # sender: the worker's consumer
    _liveness.callback(_forget, name)  # closed last in, first out: after the thread stops, so no stamp follows
    # The first stamp lands before the worker logs "ready.", which is what whoever started it waits for.
    _liveness.enter_context(repeating(lambda: registry.stamp_worker(name), get_settings().heartbeat_seconds,
                                      "worker-liveness", at_start=True))


def _forget(name: str) -> None:
    from service import registry

    try:
        registry.forget_worker(name)
    except Exception:  # its row then just goes stale
        logger.warning("could not remove worker %s from the registry", name, exc_info=True)


@worker_shutdown.connect
def _stop_liveness(**_: object) -> None:
    _liveness.close()
