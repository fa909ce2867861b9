"""GET /v1/jobs/{id}/events: a job's progress as server-sent events, for the dashboard and `submit --wait`.

Workers write each epoch's record to the job row (registry.record_epoch / record_cell_epoch); this stream
reads the row every POLL_SECONDS and sends what is new, so it works the same in embedded mode and with
any number of API processes and workers, with no broker of its own:

- `status`: `{"status", "progress"}`, first and whenever the status changes before the end;
- `epoch` (id n): `{"index": n, "record", "progress", "eta_seconds"}` for the job's n-th metrics record,
  every one in order, those already recorded first; `Last-Event-ID: n` resumes after the n-th;
- `end`: the job as GET /v1/jobs/{id} returns it, once it has finished; the stream closes after it.

`eta_seconds` is the time per unit of work so far (since the job started) times the units left, as of
when the event is sent; null before the first unit.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service import registry
from service.api.deps import SessionDep, get_job_or_404
from service.registry import FINISHED
from service.schemas import ERROR_RESPONSES, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=ERROR_RESPONSES)

POLL_SECONDS = 0.5
# Proxies and browsers drop a connection that stays silent for long; a comment line keeps it open.
KEEP_ALIVE_SECONDS = 15.0
# One event of the stream, as OpenAPI 3.1 tools (Schemathesis) read the schema of text/event-stream.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["status", "epoch", "end"]},
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "an epoch event's index"},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def sse(event: str, data: Any, event_id: int | None = None) -> str:
    lines = [f"event: {event}"] + ([f"id: {event_id}"] if event_id is not None else [])
    return "\n".join([*lines, f"data: {json.dumps(data, separators=(',', ':'))}", "", ""])


def eta_seconds(started_at: datetime | None, progress: dict[str, int | None]) -> float | None:
    done, total = progress["epoch"], progress["epochs"]
    if started_at is None or not done or total is None:
        return None
    elapsed = (registry.now() - started_at).total_seconds()
    return round(elapsed / done * (total - done), 1)


def read_job(job_id: str) -> tuple[dict[str, Any], float | None] | None:
    """The job as GET returns it, and its ETA now; None once it is deleted."""
    with registry.session_scope() as session:
        job = registry.get_job(session, job_id)
        if job is None:
            return None
        return JobOut.model_validate(job).model_dump(mode="json"), eta_seconds(job.started_at, job.progress)


async def job_events(job_id: str, after: int) -> AsyncIterator[str]:
    sent, status, quiet_since = after, None, time.monotonic()
    while True:
        found = await run_in_threadpool(read_job, job_id)
        if found is None:  # deleted while streaming: nothing more will come
            return
        job, eta = found
        chunks = []
        if job["status"] != status and job["status"] not in FINISHED:
            status = job["status"]
            chunks.append(sse("status", {"status": status, "progress": job["progress"]}))
        for index, record in enumerate(job["metrics"][sent:], start=sent + 1):
            progress = {"epoch": record["epoch"], "epochs": record["epochs"]}
            chunks.append(sse("epoch", {"index": index, "record": record, "progress": progress, "eta_seconds": eta}, index))
        sent = max(sent, len(job["metrics"]))
        if job["status"] in FINISHED:
            chunks.append(sse("end", job))
        if chunks:
            yield "".join(chunks)
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > KEEP_ALIVE_SECONDS:
            yield ": keep-alive\n\n"
            quiet_since = time.monotonic()
        if job["status"] in FINISHED:
            return
        await asyncio.sleep(POLL_SECONDS)


@router.get(
    "/{job_id}/events",
    summary="A job's progress as server-sent events",
    description="`text/event-stream`: a `status` event first (and on each change), an `epoch` event (id n) for "
    "every metrics record in order with `eta_seconds`, then `end` with the finished job; the stream then "
    "closes. Send `Last-Event-ID: n` to resume after the n-th epoch.",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA}}}},
)
def stream_job_events(
    job_id: str, session: SessionDep,
    last_event_id: Annotated[int, Header(ge=0, description="resume after this epoch's event")] = 0,
) -> StreamingResponse:
    get_job_or_404(session, job_id)  # a 404 as JSON, before the stream starts
    return StreamingResponse(job_events(job_id, last_event_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
