"""The registry: jobs and models as SQL rows (SQLite embedded, PostgreSQL distributed).

Job state lives here, not in a Celery result backend, so the API, any number of workers and the
stale-job sweep all agree on one record. Every status change is a conditional UPDATE
(`... WHERE status = 'queued'`), so a cancel, a worker picking the job up and the sweep can race
without one overwriting another.

An experiment job is a grid of cells, one row each, each trained by its own task on whichever
worker takes it. Cells report to their job: its progress sums theirs, a cancel reaches all of them,
and the transaction that ends its last cell ends the job (`_settle`), with the report.

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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import (
    JSON, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint, create_engine, delete, event, func, or_, select,
    union, update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from ml.experiment import grid_record
from service.settings import get_settings

# `name@latest` is a name's newest version: no alias of that name can be set.
LATEST = "latest"
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
    cells: Mapped[list[Cell]] = relationship(lazy="selectin", order_by="Cell.position", cascade="all, delete-orphan")

    @property
    def model_ids(self) -> list[str]:
        return [m.id for m in self.models]

    @property
    def model_refs(self) -> list[str]:
        return [f"{m.name}/{m.version}" for m in self.models]

    @property
    def progress(self) -> dict[str, int | None]:
        last = self.metrics[-1] if self.metrics else None
        return {"epoch": last["epoch"] if last else 0, "epochs": last["epochs"] if last else None}


class Cell(Base):
    """One (model, condition) training of an experiment job. `after` is the position of the cell
    whose model this one starts from (a unet-pretrained's resnet); its task runs once that one succeeded.
    `result` is the cell's row of the report; `epoch` how many of its `epochs` records it has made."""

    __tablename__ = "cells"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(32))
    condition: Mapped[str] = mapped_column(String(16))
    after: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(255))
    model_id: Mapped[str | None] = mapped_column(String(32))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]

    @property
    def label(self) -> str:
        return f"{self.model} under {self.condition} (cell {self.position})"


class RegisteredModel(Base):
    """A name whose models are its versions, 1, 2, ... in the order they were registered; `last_version`
    is the newest ever given, so a deleted version's number is never reused (as in MLflow)."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class ModelAlias(Base):
    """`name@alias` points at one version of `name`; moving it is one UPDATE, so a reader sees the
    old version or the new, never neither."""

    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(ForeignKey("registered_models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    updated_at: Mapped[datetime]


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_models_name_version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    # The registered name and the version it was given when registered (register_model).
    name: Mapped[str] = mapped_column(ForeignKey("registered_models.name", name="fk_models_name"))
    version: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str] = mapped_column(String(32))
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
    alias_rows: Mapped[list[ModelAlias]] = relationship(lazy="selectin", order_by="ModelAlias.alias",
                                                        cascade="all, delete-orphan", passive_deletes=True)

    @property
    def aliases(self) -> list[str]:
        return [a.alias for a in self.alias_rows]


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


def create_job(session: Session, kind: str, request: dict[str, Any], cells: Sequence[Any] = ()) -> Job:
    """A queued job, its messages stamped as sent now: the caller sends them at once, or deletes the job.

    `cells` (an experiment's, as ml.experiment plans them: position, model, condition, after, epochs)
    become its queued cells, each with its own message; a job with cells has no message of its own.
    """
    created = now()
    job = Job(id=new_id(), kind=kind, status=JobStatus.queued, request=request, metrics=[], created_at=created,
              enqueued_at=created)
    job.cells = [Cell(position=c.position, model=c.model, condition=c.condition, after=c.after, epochs=c.epochs,
                      epoch=0, status=JobStatus.queued, enqueued_at=created) for c in cells]
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


def _lock_job(session: Session, job_id: str) -> Job | None:
    """The job's row, locked until the transaction ends, read after the lock is held.

    A no-op UPDATE comes first because it is the one statement that locks on both backends before
    anything is read: PostgreSQL locks the row, SQLite takes its write lock. Reading first would let
    two cells' read-modify-writes interleave (in SQLite the second write would even be refused).
    """
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=Job.heartbeat_at))
    return session.get(Job, job_id, populate_existing=True)


def _transition(session: Session, job_id: str, source: JobStatus, **values: Any) -> bool:
    """Change a job that is in `source` status; False if it was not (someone else moved it first)."""
    result = session.execute(update(Job).where(Job.id == job_id, Job.status == source).values(**values))
    return result.rowcount == 1


def cancel_job(session: Session, job_id: str) -> JobStatus | None:
    """Cancel a queued job now, or flag a running one for its worker to stop after this epoch.

    An experiment's queued cells are cancelled at once and its running ones stop after their epoch;
    with none running, the job ends now. Returns the status the job had when acted on (None if there
    is no such job); a finished status means nothing was changed.
    """
    job = _lock_job(session, job_id)
    if job is None:
        return None
    previous = JobStatus(job.status)
    if previous == JobStatus.queued:
        job.status, job.finished_at = JobStatus.cancelled, now()
        for cell in job.cells:
            cell.status, cell.finished_at = JobStatus.cancelled, job.finished_at
    elif previous == JobStatus.running:
        job.cancel_requested = True
        for cell in job.cells:
            if cell.status == JobStatus.queued:
                cell.status, cell.finished_at = JobStatus.cancelled, now()
        _settle(session, job)
    session.commit()
    return previous


def sweep_stale_jobs(stale_seconds: float) -> int:
    """Fail running jobs, and experiment cells, whose worker stopped sending heartbeats (killed,
    crashed, machine gone); an experiment ends when its last cell does. Returns how many were failed.

    An experiment's own heartbeat is its cells': between cells, or while they wait for a free
    worker, nothing stamps it, so only its running cells can be stale."""
    cutoff = now() - timedelta(seconds=stale_seconds)
    lost = f"worker lost: no heartbeat for {stale_seconds:g} seconds"
    with session_scope() as session:
        jobs = session.execute(
            update(Job)
            .where(Job.status == JobStatus.running, Job.heartbeat_at < cutoff, ~Job.cells.any())
            .values(status=JobStatus.failed, finished_at=now(), error=lost, error_code="worker_lost")
        ).rowcount
        stale_cells = session.execute(
            select(Cell.job_id, Cell.position).where(Cell.status == JobStatus.running, Cell.heartbeat_at < cutoff)
        ).all()
    return jobs + sum(
        finish_cell(job_id, position, JobStatus.failed, error=lost, error_code="worker_lost")
        for job_id, position in stale_cells
    )


def claim_requeues(requeue_after: float, stale_seconds: float) -> list[tuple[str, int | None]]:
    """Messages most likely lost by the broker, to be sent again, oldest first: (job id, None) for
    a queued job's, (job id, position) for an experiment cell's whose turn has come (it waits for
    no cell, or for one that succeeded).

    A job qualifies once its message was sent over `requeue_after` seconds ago while some live
    worker has been idle at least that long: with one message reserved per worker, an idle worker
    beside a waiting message cannot last. Each job's `enqueued_at` is stamped now in the same
    conditional UPDATE that selects it, so of several APIs sweeping one registry only one re-sends
    it, and nobody again before another `requeue_after`. A needless re-send costs nothing: the
    worker's claim of a job that is no longer queued fails and the duplicate is skipped.
    """
    moment = now()
    cutoff = moment - timedelta(seconds=requeue_after)
    idle_worker = select(Worker.name).where(
        Worker.seen_at >= moment - timedelta(seconds=stale_seconds),
        Worker.started_at <= cutoff,
        Worker.name.not_in(_busy_workers(since=cutoff)),
    )
    sent_at = func.coalesce(Job.enqueued_at, Job.created_at)  # jobs queued before enqueued_at existed have none
    with session_scope() as session:
        if not session.scalar(select(idle_worker.exists())):
            return []
        overdue = session.scalars(
            select(Job.id).where(Job.status == JobStatus.queued, sent_at < cutoff, ~Job.cells.any())
            .order_by(Job.created_at)
        ).all()
        resend: list[tuple[str, int | None]] = [
            (job_id, None) for job_id in overdue
            if session.execute(
                update(Job).where(Job.id == job_id, Job.status == JobStatus.queued, sent_at < cutoff)
                .values(enqueued_at=moment)
            ).rowcount == 1
        ]
        before = aliased(Cell)
        turn_came = or_(Cell.after.is_(None), select(before.position).where(
            before.job_id == Cell.job_id, before.position == Cell.after, before.status == JobStatus.succeeded).exists())
        cells = session.execute(
            select(Cell.job_id, Cell.position).join(Job)
            .where(Cell.status == JobStatus.queued, Cell.enqueued_at < cutoff, turn_came)
            .order_by(Job.created_at, Cell.position)
        ).all()
        return resend + [
            (job_id, position) for job_id, position in cells
            if session.execute(
                update(Cell).where(Cell.job_id == job_id, Cell.position == position, Cell.status == JobStatus.queued,
                                   Cell.enqueued_at < cutoff).values(enqueued_at=moment)
            ).rowcount == 1
        ]


def _busy_workers(since: datetime | None = None) -> Any:
    """The names of workers running a job or a cell (and, given `since`, those that finished one since)."""
    def busy(status: Any, finished_at: Any) -> Any:
        return status == JobStatus.running if since is None else or_(status == JobStatus.running, finished_at >= since)

    jobs = select(Job.worker).where(Job.worker.is_not(None), busy(Job.status, Job.finished_at))
    cells = select(Cell.worker).where(Cell.worker.is_not(None), busy(Cell.status, Cell.finished_at))
    return union(jobs, cells)


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
        _register(session, model)
        return True


# --- experiment cells ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimedCell:
    """What a worker needs to train a cell it claimed: the job's request, and the id of the model
    it starts from (the resnet of `after`), if any."""

    job_id: str
    position: int
    model: str
    condition: str
    worker: str
    request: dict[str, Any]
    init_from: str | None


def claim_cell(job_id: str, position: int, worker: str) -> ClaimedCell | None:
    """Move a queued cell to running for this worker (and its job too, with its first cell); None if
    the cell is not queued (cancelled, swept, taken, or ended with the cell it starts from) or the
    cell it starts from has not succeeded yet (a re-sent message can come early).

    The job's row is locked first, as every cell transition does, so cells of one job settle in turn.
    """
    with session_scope() as session:
        job = _lock_job(session, job_id)
        cell = next((c for c in job.cells if c.position == position), None) if job else None
        if cell is None or cell.status != JobStatus.queued or job.status not in (JobStatus.queued, JobStatus.running):
            return None
        before = next((c for c in job.cells if c.position == cell.after), None)
        if before is not None and before.status != JobStatus.succeeded:
            return None
        started = now()
        if job.status == JobStatus.queued:
            job.status, job.started_at = JobStatus.running, started
        job.heartbeat_at = started
        cell.status, cell.worker, cell.started_at, cell.heartbeat_at = JobStatus.running, worker, started, started
        return ClaimedCell(job_id, position, cell.model, cell.condition, worker, job.request,
                           before.model_id if before is not None else None)


def heartbeat_cell(job_id: str, position: int) -> None:
    with session_scope() as session:
        stamp = now()
        session.execute(update(Cell).where(Cell.job_id == job_id, Cell.position == position,
                                           Cell.status == JobStatus.running).values(heartbeat_at=stamp))
        session.execute(update(Job).where(Job.id == job_id, Job.status == JobStatus.running).values(heartbeat_at=stamp))


def record_cell_epoch(job_id: str, position: int, record: dict[str, Any]) -> bool:
    """Append a cell's epoch to its job's metrics as the grid's (`ml.experiment.grid_record`), its
    `epoch` / `epochs` the sums over cells, so progress only grows however cells interleave.
    True if the cell should stop: its job was cancelled, or the cell is no longer running."""
    with session_scope() as session:
        job = _lock_job(session, job_id)
        cell = next(c for c in job.cells if c.position == position)
        if job.status != JobStatus.running or cell.status != JobStatus.running:
            return True
        cell.epoch = record["epoch"]
        cell.heartbeat_at = job.heartbeat_at = now()
        grid = grid_record(record, position, len(job.cells), cell.model, cell.condition,
                           sum(c.epoch for c in job.cells), sum(c.epochs for c in job.cells))
        job.metrics = [*job.metrics, grid]
        return job.cancel_requested


def finish_cell(
    job_id: str, position: int, status: JobStatus, *, model: Model | None = None, result: dict[str, Any] | None = None,
    error: str | None = None, error_code: str | None = None,
) -> bool:
    """End a running cell: succeeded (registering `model`, with `result` its report row), failed or
    cancelled; the job ends with it if it was the last. False (nothing registered) if the cell was
    not running: the sweep failed it meanwhile."""
    with session_scope() as session:
        job = _lock_job(session, job_id)
        cell = next((c for c in job.cells if c.position == position), None) if job else None
        if cell is None or cell.status != JobStatus.running:
            return False
        _end_cell(cell, status, error, error_code)
        if model is not None:
            model.job_id, cell.model_id, cell.result = job_id, model.id, result
            _register(session, model)
        _settle(session, job)
        return True


def _end_cell(cell: Cell, status: JobStatus, error: str | None = None, error_code: str | None = None) -> None:
    cell.status, cell.finished_at, cell.error, cell.error_code = status, now(), error, error_code


def _settle(session: Session, job: Job) -> None:
    """End a running experiment whose cells have all ended: cancelled if a cancel was asked for,
    failed (naming each failed cell; the others' models stay registered and in the report) if any
    failed, else succeeded. Queued cells that start from a cell that ended without a model end too."""
    by_position = {c.position: c for c in job.cells}
    for cell in job.cells:  # in position order, so a chain of dependencies resolves in one pass
        before = by_position.get(cell.after)
        if cell.status == JobStatus.queued and before is not None and before.status in (JobStatus.failed, JobStatus.cancelled):
            _end_cell(cell, JobStatus(before.status), f"it starts from {before.label}, which {before.status}",
                      "dependency_failed" if before.status == JobStatus.failed else None)
    if not job.cells or job.status != JobStatus.running or any(c.status not in FINISHED for c in job.cells):
        return
    failed = [c for c in job.cells if c.status == JobStatus.failed]
    job.finished_at = now()
    if job.cancel_requested:
        job.status = JobStatus.cancelled
        return
    job.report = {"models": job.request.get("models"), "conditions": job.request.get("conditions"),
                  "rows": [c.result for c in job.cells if c.status == JobStatus.succeeded],
                  "failed": [{"cell": c.position, "model": c.model, "condition": c.condition, "error": c.error,
                              "error_code": c.error_code} for c in failed]}
    if not failed:
        job.status = JobStatus.succeeded
        return
    codes = {c.error_code for c in failed}
    kept = sum(c.status == JobStatus.succeeded for c in job.cells)
    job.status, job.error_code = JobStatus.failed, codes.pop() if len(codes) == 1 else "cells_failed"
    cells_by_error: dict[str | None, list[str]] = {}  # cells that failed alike are named once, together
    for c in failed:
        cells_by_error.setdefault(c.error, []).append(c.label)
    job.error = (f"{len(failed)} of {len(job.cells)} cells failed: "
                 + "; ".join(f"{', '.join(labels)}: {error}" for error, labels in cells_by_error.items())
                 + f"; the {kept} model(s) of the other cells stay registered and in the report")


# --- models ----------------------------------------------------------------------------------


def derived_name(run: dict[str, Any]) -> str:
    """The registered name of a model whose job gave none: architecture, dataset, classes, condition,
    e.g. `vgg-mnist-0v1-vanilla` or `resnet-fashion-mnist-0to9-noisy`."""
    dataset, classes = run["dataset"], run["dataset"]["classes"]
    consecutive = len(classes) > 2 and classes == list(range(classes[0], classes[-1] + 1))
    span = f"{classes[0]}to{classes[-1]}" if consecutive else "v".join(map(str, classes))
    return f"{run['model']}-{dataset['name']}-{span}-{dataset['condition']}"


def _insert(session: Session, table: type[Base]) -> Any:
    """An INSERT with the backend's ON CONFLICT clauses (both dialects have them, SQLAlchemy's core one not)."""
    return (postgresql_insert if session.bind.dialect.name == "postgresql" else sqlite_insert)(table)


def _register(session: Session, model: Model) -> None:
    """Add `model` as the next version of its name, creating the name on its first model. The UPDATE
    of the name's row holds that row until the transaction ends, so two workers registering under one
    name at once get one version each."""
    session.execute(_insert(session, RegisteredModel).values(name=model.name, last_version=0, created_at=now()).on_conflict_do_nothing())
    model.version = session.scalar(
        update(RegisteredModel).where(RegisteredModel.name == model.name)
        .values(last_version=RegisteredModel.last_version + 1).returning(RegisteredModel.last_version))
    session.add(model)


class ModelKey(NamedTuple):
    id: str
    name: str
    version: int


def resolve(session: Session, ref: str) -> ModelKey | None:
    """The model `ref` names, by its id, `name/version`, `name@alias` (`name@latest`: the newest version)
    or a bare `name` (its newest version). One indexed lookup of the key columns, not the model's row:
    predict and infer by name or alias resolve their ref this way on every request."""
    key = select(Model.id, Model.name, Model.version)
    if "@" in ref:
        name, alias = ref.split("@", 1)
        if alias == LATEST:
            return _latest(session, name)
        return _first(session, key.join(ModelAlias, ModelAlias.model_id == Model.id)
                      .where(ModelAlias.name == name, ModelAlias.alias == alias))
    if "/" in ref:
        name, _, version = ref.rpartition("/")
        if not version.isdecimal():
            return None
        return _first(session, key.where(Model.name == name, Model.version == int(version)))
    return _first(session, key.where(Model.id == ref)) or _latest(session, ref)


def _latest(session: Session, name: str) -> ModelKey | None:
    return _first(session, select(Model.id, Model.name, Model.version).where(Model.name == name)
                  .order_by(Model.version.desc()).limit(1))


def _first(session: Session, query: Any) -> ModelKey | None:
    row = session.execute(query).first()
    return ModelKey(*row) if row else None


def get_model(session: Session, ref: str) -> Model | None:
    """The model `ref` names (see `resolve`)."""
    key = resolve(session, ref)
    return session.get(Model, key.id) if key is not None else None


def weights_sha256(model_id: str) -> str | None:
    """The checksum recorded for a model's weights; None for a model registered before checksums were."""
    with session_scope() as session:
        return session.scalar(select(Model.weights_sha256).where(Model.id == model_id))


# What `list_models` sorts by: columns, or fields of the config and final metrics (JSON, on both backends).
MODEL_SORT_KEYS = {
    "date": Model.created_at,
    "name": Model.name,
    "architecture": Model.architecture,
    "dataset": Model.config["dataset"]["name"].as_string(),
    "condition": Model.config["dataset"]["condition"].as_string(),
    "accuracy": Model.final_metrics["val_accuracy"].as_float(),
}


@dataclass(frozen=True)
class ModelFilter:
    name: str | None = None
    architecture: str | None = None
    dataset: str | None = None
    condition: str | None = None

    def clauses(self) -> list[Any]:
        values = {"name": self.name, "architecture": self.architecture, "dataset": self.dataset,
                  "condition": self.condition}
        return [MODEL_SORT_KEYS[key] == value for key, value in values.items() if value is not None]


def list_models(session: Session, where: ModelFilter, sort: str, limit: int, offset: int) -> tuple[list[Model], int]:
    """A page of the models `where` selects, by `sort` (a key of MODEL_SORT_KEYS, `-key` descending);
    ties, and models without the sorted value (last either way), in the order they were registered."""
    key = MODEL_SORT_KEYS[sort.removeprefix("-")]
    order = key.desc() if sort.startswith("-") else key.asc()
    total = session.scalar(select(func.count()).select_from(Model).where(*where.clauses()))
    items = session.scalars(select(Model).where(*where.clauses())
                            .order_by(order.nulls_last(), Model.created_at.desc(), Model.id.desc())
                            .limit(limit).offset(offset))
    return list(items), total or 0


# --- names and aliases -----------------------------------------------------------------------


@dataclass(frozen=True)
class NameSummary:
    name: str
    created_at: datetime
    versions: list[int]
    aliases: dict[str, int]

    @property
    def latest_version(self) -> int | None:
        return self.versions[-1] if self.versions else None


def _summaries(session: Session, names: Sequence[RegisteredModel]) -> list[NameSummary]:
    wanted = [n.name for n in names]
    versions: dict[str, list[int]] = {name: [] for name in wanted}
    for name, version in session.execute(select(Model.name, Model.version).where(Model.name.in_(wanted))
                                         .order_by(Model.version)):
        versions[name].append(version)
    aliases: dict[str, dict[str, int]] = {name: {} for name in wanted}
    for name, alias, version in session.execute(
            select(ModelAlias.name, ModelAlias.alias, Model.version).join(Model, Model.id == ModelAlias.model_id)
            .where(ModelAlias.name.in_(wanted)).order_by(ModelAlias.alias)):
        aliases[name][alias] = version
    return [NameSummary(n.name, n.created_at, versions[n.name], aliases[n.name]) for n in names]


def list_names(session: Session, limit: int, offset: int) -> tuple[list[NameSummary], int]:
    total = session.scalar(select(func.count()).select_from(RegisteredModel))
    names = session.scalars(select(RegisteredModel).order_by(RegisteredModel.name).limit(limit).offset(offset))
    return _summaries(session, list(names)), total or 0


def get_name(session: Session, name: str) -> NameSummary | None:
    row = session.get(RegisteredModel, name)
    return _summaries(session, [row])[0] if row else None


def set_alias(session: Session, model: Model, alias: str) -> None:
    """Point `model.name@alias` at `model`: the alias is created or moved in one statement."""
    insert = _insert(session, ModelAlias).values(name=model.name, alias=alias, model_id=model.id, updated_at=now())
    session.execute(insert.on_conflict_do_update(index_elements=["name", "alias"],
                                                 set_={"model_id": insert.excluded.model_id,
                                                       "updated_at": insert.excluded.updated_at}))
    session.commit()


def delete_alias(session: Session, name: str, alias: str) -> bool:
    """False if there was no such alias."""
    deleted = session.execute(delete(ModelAlias).where(ModelAlias.name == name, ModelAlias.alias == alias)).rowcount
    session.commit()
    return deleted > 0


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
    n_live = session.scalar(select(func.count()).select_from(Worker).where(live))
    n_busy = session.scalar(select(func.count()).select_from(Worker).where(live, Worker.name.in_(_busy_workers())))
    return n_live or 0, n_busy or 0
