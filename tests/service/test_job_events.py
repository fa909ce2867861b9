"""GET /v1/jobs/{id}/events over real HTTP from the embedded service: server-sent events read raw here,
with a parser of the test's own (the CLI's is tested through `submit --wait`)."""

from __future__ import annotations

import json

import httpx
import pytest
from api_helpers import TINY_GAUSSIAN, assert_error, submit, wait_for_job

TRAIN = {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 3, "width": 0.125}}


def read_events(client: httpx.Client, job_id: str, **headers: str) -> list[tuple[str, str | None, dict]]:
    """The whole stream, to the server's close, as (event, id, data)."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=httpx.Timeout(60, read=120)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if fields:
            events.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return events


@pytest.fixture(scope="module")
def streamed(client) -> tuple[list, dict]:
    """The events of a 3-epoch job read from the moment it is queued, and the job as GET returns it after."""
    job = submit(client, TRAIN)
    events = read_events(client, job["id"])
    return events, client.get(f"/v1/jobs/{job['id']}").json()


def test_the_stream_delivers_every_epoch_in_order_and_ends_with_the_final_state(streamed):
    events, job = streamed
    assert job["status"] == "succeeded"
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "status" and kinds[-1] == "end" and kinds.count("end") == 1
    epochs = [(event_id, data) for kind, event_id, data in events if kind == "epoch"]
    assert [event_id for event_id, _ in epochs] == ["1", "2", "3"]
    assert [data["record"] for _, data in epochs] == job["metrics"]
    assert [data["progress"] for _, data in epochs] == [{"epoch": e, "epochs": 3} for e in (1, 2, 3)]
    assert events[-1][2] == job  # the end event is the job as GET returns it
    # A status the job passed through between two reads of the registry is not seen: a quick job may go
    # from queued to succeeded in one poll.
    statuses = [data["status"] for kind, _, data in events if kind == "status"]
    assert statuses in (["queued"], ["running"], ["queued", "running"]), statuses


def test_eta_counts_down_to_zero(streamed):
    etas = [data["eta_seconds"] for kind, _, data in streamed[0] if kind == "epoch"]
    assert all(eta is not None and eta >= 0 for eta in etas), etas
    assert etas[-1] == 0


def test_last_event_id_resumes_after_that_epoch(client, streamed):
    job = streamed[1]
    events = read_events(client, job["id"], **{"Last-Event-ID": "2"})
    assert [(kind, event_id) for kind, event_id, _ in events] == [("epoch", "3"), ("end", None)]
    assert events[0][2]["record"] == job["metrics"][2]


def test_a_cancelled_job_ends_its_stream_cancelled(client):
    job = submit(client, {**TRAIN, "training": {"epochs": 1000, "width": 0.125}})
    wait_for_job(client, job["id"], lambda j: j["progress"]["epoch"] >= 1)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    kind, _, data = read_events(client, job["id"])[-1]
    assert kind == "end" and data["status"] == "cancelled"


def test_events_of_an_unknown_job_are_a_404(client):
    assert_error(client.get("/v1/jobs/0123456789abcdef0123456789abcdef/events"), 404, "job_not_found")


def test_a_bad_last_event_id_is_a_422(client, streamed):
    response = client.get(f"/v1/jobs/{streamed[1]['id']}/events", headers={"Last-Event-ID": "two"})
    assert_error(response, 422, "invalid_request", "last-event-id")
