"""The registry: jobs and models as SQL rows (SQLite embedded, PostgreSQL distributed).

Job state lives here, not in a Celery result backend, so the API, any number of workers and the
stale-job sweep all agree on one record. Every status change is a conditional UPDATE
(`... WHERE status = 'queued'`), so a cancel, a worker picking the job up and the sweep can race
without one overwriting another.

Workers are rows too: each worker process stamps its own while it lives, so whether any worker
is live, and which are busy, is read here rather than asked of the broker.

The schema is created and upgraded by Alembic (service/migrations) at API and worker start-up
(`migrate`). Both may start at once, so the upgrade runs under a lock: a PostgreSQL advisory
lock held for the migration's transaction, or an exclusive file lock beside a SQLite file.
"""

from __future__ import annotations

import enum
import fcntl
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON, DateTime, ForeignKey, Integer, String, Text, create_engine, delete, event, func, or_, select, update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from service.settings import get_settings

# Any constant unique to this application: the key of the PostgreSQL advisory lock around migrations.
MIGRATION_LOCK_KEY = 0x0C1A55C0


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    request: Mapped[dict[str, Any]]
    # One record per finished epoch, as ml.train's on_epoch hands them over.
    metrics: Mapped[list[Any]] = mapped_column(default=list)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    # When its broker message was last sent (the sweep re-sends the message of a job queued too long).
    enqueued_at: Mapped[datetime | None]
    # The experiment / error-analysis report (JSON), written in the transaction that marks the job
    # succeeded, so only a succeeded job has one. Deferred: job listings never load it.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)

    models: Mapped[list[Model]] = relationship(back_populates="job", lazy="selectin", order_by="Model.created_at")

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]

    @property
    def progress(self) -> dict[str, int | None]:
        last = self.metrics[-1] if self.metrics else None
        return {"epoch": last["epoch"] if last else 0, "epochs": last["epochs"] if last else None}


class Model(Base):
    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]]
    classes: Mapped[list[Any]]
    parameter_count: Mapped[int] = mapped_column(Integer)
    train_seconds: Mapped[float]
    final_metrics: Mapped[dict[str, Any]]
    # The model's own per-epoch series (its artifact's metrics.json history): unlike the job's
    # progress records it includes what training adds after the last epoch (K-means accuracy).
    history: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(index=True)
    # SHA-256 of weights.safetensors when it was registered; loads and downloads are checked against it.
    weights_sha256: Mapped[str | None] = mapped_column(String(64))

    job: Mapped[Job | None] = relationship(back_populates="models")


class Worker(Base):
    """A live (or recently live) worker process: stamped by the worker, read by /readyz and the sweep.

    `name` is the worker's Celery hostname, the string a job it claims records in `Job.worker`, so
    a worker is busy while a running job names it.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime] = mapped_column(index=True)


# --- engine, sessions, schema -----------------------------------------------------------------


@lru_cache
def engine() -> Engine:
    url = get_settings().database
    if url.startswith("sqlite"):
        # The API and the worker are separate processes writing one file: WAL lets reads go on
        # during a write, and the timeout makes a writer wait for the lock instead of failing.
        eng = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(eng, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return eng
    return create_engine(url, pool_pre_ping=True)


@lru_cache
def _sessionmaker() -> sessionmaker[Session]:
    # Rows stay readable after commit: the worker uses a job after its session closed, and routes
    # return rows they just committed.
    return sessionmaker(engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session committed on success and rolled back on error (the worker's unit of work)."""
    with _sessionmaker().begin() as session:
        yield session


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one session per request; routes commit what they change."""
    with _sessionmaker()() as session:
        yield session


@contextmanager
def _migration_lock(conn: Connection) -> Iterator[None]:
    if conn.dialect.name == "postgresql":
        # Released when the migration's transaction ends.
        conn.execute(select(func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))
        yield
    elif conn.dialect.name == "sqlite" and conn.engine.url.database not in (None, "", ":memory:"):
        with open(f"{conn.engine.url.database}.migrate.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
    else:
        yield


def migrate() -> None:
    """Upgrade the registry schema to the newest Alembic revision; safe to run from several processes at once."""
    from alembic import command
    from alembic.config import Config

    eng = engine()
    if eng.url.get_backend_name() == "sqlite" and eng.url.database:
        Path(eng.url.database).parent.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.set_main_option("script_location", "service:migrations")
    with eng.begin() as conn, _migration_lock(conn):
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


# --- jobs ---------------------------------------------------------------------------------------


def create_job(session: Session, kind: str, request: dict[str, Any]) -> Job:
    """A queued job, its message stamped as sent now: the caller sends it at once, or deletes the job."""
    created = now()
    job = Job(id=new_id(), kind=kind, status=JobStatus.queued, request=request, metrics=[], created_at=created,
              enqueued_at=created)
    session.add(job)
    session.commit()
    return job


def delete_job(session: Session, job: Job) -> None:
    """Undo `create_job` when its message could not be sent: the request had no effect."""
    session.delete(job)
    session.commit()


def get_job(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def list_jobs(session: Session, status: JobStatus | None, limit: int, offset: int) -> tuple[list[Job], int]:
    query = select(Job)
    if status is not None:
        query = query.where(Job.status == status)
    total = session.scalar(select(func.count()).select_from(query.subquery()))
    items = session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit).offset(offset)).all()
    return list(items), total or 0


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    return {status: n for status, n in rows}


def _transition(session: Session, job_id: str, source: JobStatus, **values: Any) -> bool:
    """Change a job that is in `source` status; False if it was not (someone else moved it first)."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.status == source).values(**values))
    return result.rowcount == 1


def cancel_job(session: Session, job_id: str) -> JobStatus | None:
    """Cancel a queued job now, or flag a running one for its worker to stop after this epoch.

    Returns the status the job had when acted on (None if there is no such job); a finished
    status means nothing was changed.
    """
    if _transition(session, job_id, JobStatus.queued, status=JobStatus.cancelled, finished_at=now()):
        session.commit()
        return JobStatus.queued
    if _transition(session, job_id, JobStatus.running, cancel_requested=True):
        session.commit()
        return JobStatus.running
    job = session.get(Job, job_id)
    return JobStatus(job.status) if job else None


def sweep_stale_jobs(session: Session, stale_seconds: float) -> int:
    """Fail running jobs whose worker stopped sending heartbeats (killed, crashed, machine gone)."""
    cutoff = now() - timedelta(seconds=stale_seconds)
    result = session.execute(
        update(Job)
        .where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff)
        .values(
            status=JobStatus.failed,
            finished_at=now(),
            error=f"worker lost: no heartbeat for {stale_seconds:g} seconds",
            error_code="worker_lost",
        )
    )
    session.commit()
    return result.rowcount


def claim_requeues(requeue_after: float, stale_seconds: float) -> list[str]:
    """Queued jobs whose broker message was most likely lost, to be sent again (ids, oldest first).

    A job qualifies once its message was sent over `requeue_after` seconds ago while some live
    worker has been idle at least that long: with one message reserved per worker, an idle worker
    beside a waiting message cannot last. Each job's `enqueued_at` is stamped now in the same
    conditional UPDATE that selects it, so of several APIs sweeping one registry only one re-sends
    it, and nobody again before another `requeue_after`. A needless re-send costs nothing: the
    worker's claim of a job that is no longer queued fails and the duplicate is skipped.
    """
    moment = now()
    cutoff = moment - timedelta(seconds=requeue_after)
    recently_busy = select(Job.worker).where(
        Job.worker.is_not(None), or_(Job.status == JobStatus.running, Job.finished_at >= cutoff)
    )
    idle_worker = select(Worker.name).where(
        Worker.seen_at >= moment - timedelta(seconds=stale_seconds),
        Worker.started_at <= cutoff,
        Worker.name.not_in(recently_busy),
    )
    sent_at = func.coalesce(Job.enqueued_at, Job.created_at)  # jobs queued before enqueued_at existed have none
    with session_scope() as session:
        if not session.scalar(select(idle_worker.exists())):
            return []
        overdue = session.scalars(
            select(Job.id).where(Job.status == JobStatus.queued, sent_at < cutoff).order_by(Job.created_at)
        ).all()
        return [
            job_id for job_id in overdue
            if session.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.queued, sent_at < cutoff)
                .values(enqueued_at=moment)
            ).rowcount == 1
        ]


def claim_job(job_id: str, worker: str) -> Job | None:
    """Move a queued job to running for this worker; None if it is not queued (cancelled, swept, taken)."""
    with session_scope() as session:
        started = now()
        if not _transition(session, job_id, JobStatus.queued, status=JobStatus.running, worker=worker,
                           started_at=started, heartbeat_at=started):
            return None
        return session.get(Job, job_id)


def heartbeat(job_id: str) -> None:
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(heartbeat_at=now()))


def record_epoch(job_id: str, record: dict[str, Any]) -> bool:
    """Append one epoch's metrics to a running job; True if its training should stop: a cancel
    was requested, or the job is no longer running (the sweep failed it)."""
    with session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job.status != JobStatus.running:
            return True
        job.metrics = [*job.metrics, record]
        job.heartbeat_at = now()
        return job.cancel_requested


def finish_job(job_id: str, status: JobStatus, error: str | None = None, error_code: str | None = None) -> bool:
    with session_scope() as session:
        return _transition(session, job_id, JobStatus.running, status=status, error=error, error_code=error_code,
                           finished_at=now())


def add_model(job_id: str, model: Model) -> bool:
    """Register one model of a job that goes on running (an experiment's cell).

    False (and nothing registered) if the job is no longer running. The job's row is updated
    first, so a concurrent sweep or cancel waits for this transaction or has already won.
    """
    with session_scope() as session:
        if not _transition(session, job_id, JobStatus.running, heartbeat_at=now()):
            return False
        model.job_id = job_id
        session.add(model)
        return True


def succeed_with_report(job_id: str, report: dict[str, Any]) -> bool:
    """Store a job's report and mark it succeeded in one transaction; False (nothing stored) if it
    is no longer running."""
    with session_scope() as session:
        return _transition(session, job_id, JobStatus.running, status=JobStatus.succeeded, finished_at=now(),
                           report=report)


def succeed_with_model(job_id: str, model: Model) -> bool:
    """Register `model` and mark its job succeeded in one transaction.

    False (and nothing registered) if the job is no longer running, e.g. the sweep failed it.
    """
    with session_scope() as session:
        if not _transition(session, job_id, JobStatus.running, status=JobStatus.succeeded, finished_at=now()):
            return False
        model.job_id = job_id
        session.add(model)
        return True


# --- models ----------------------------------------------------------------------------------


def get_model(session: Session, model_id: str) -> Model | None:
    return session.get(Model, model_id)


def weights_sha256(model_id: str) -> str | None:
    """The checksum recorded for a model's weights; None for a model registered before checksums were."""
    with session_scope() as session:
        return session.scalar(select(Model.weights_sha256).where(Model.id == model_id))


def list_models(session: Session, limit: int, offset: int) -> tuple[list[Model], int]:
    total = session.scalar(select(func.count()).select_from(Model))
    items = session.scalars(select(Model).order_by(Model.created_at.desc(), Model.id.desc()).limit(limit).offset(offset))
    return list(items), total or 0


def delete_model(session: Session, model: Model) -> None:
    session.delete(model)
    session.commit()


# --- workers ---------------------------------------------------------------------------------


def stamp_worker(name: str) -> None:
    """Record that worker `name` is alive now; its first stamp records when it started."""
    with session_scope() as session:
        seen = now()
        # One process stamps its own row, so the update-or-insert never races another writer.
        if session.execute(update(Worker).where(Worker.name == name).values(seen_at=seen)).rowcount == 0:
            session.add(Worker(name=name, started_at=seen, seen_at=seen))


def forget_worker(name: str) -> None:
    """Drop a worker that stopped (or was seen to die): it no longer counts as live."""
    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.name == name))


def forget_dead_workers(stale_seconds: float) -> None:
    """Drop the rows of workers unseen for `stale_seconds` (killed ones never drop their own)."""
    with session_scope() as session:
        session.execute(delete(Worker).where(Worker.seen_at < now() - timedelta(seconds=stale_seconds)))


def worker_counts(session: Session, stale_seconds: float) -> tuple[int, int]:
    """(live, busy): workers seen within `stale_seconds`, and those of them a running job names."""
    live = Worker.seen_at >= now() - timedelta(seconds=stale_seconds)
    running = select(Job.worker).where(Job.status == JobStatus.running, Job.worker.is_not(None))
    n_live = session.scalar(select(func.count()).select_from(Worker).where(live))
    n_busy = session.scalar(select(func.count()).select_from(Worker).where(live, Worker.name.in_(running)))
    return n_live or 0, n_busy or 0
