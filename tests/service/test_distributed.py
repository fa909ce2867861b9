"""Job semantics that need separate worker processes: cancelling running and queued jobs, and a
worker killed mid-job (SIGKILL of its whole process group, as when its machine goes away)."""

from __future__ import annotations

import pytest
from api_helpers import long_gaussian_job, submit, wait_finished, wait_for_job


@pytest.fixture
def client(distributed_service):
    with distributed_service.client() as client:
        yield client


def running_with_epochs(job: dict) -> bool:
    return job["status"] == "running" and len(job["metrics"]) >= 1


def test_cancel_queued_at_once_and_running_within_one_epoch(client):
    running = submit(client, long_gaussian_job())
    wait_for_job(client, running["id"], running_with_epochs, timeout=120)
    queued = submit(client, long_gaussian_job())  # the one worker is busy: this one waits in the broker

    response = client.post(f"/v1/jobs/{queued['id']}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"

    response = client.post(f"/v1/jobs/{running['id']}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True
    # The flag is committed now: the epoch in progress is the last one.
    epochs_at_cancel = len(client.get(f"/v1/jobs/{running['id']}").json()["metrics"])
    job = wait_finished(client, running["id"], timeout=60)
    assert job["status"] == "cancelled" and job["model_ids"] == []
    assert len(job["metrics"]) <= epochs_at_cancel + 1 < 500

    # The worker is free again and receives the queued job's message: it must not run it.
    probe = wait_finished(client, submit(client, long_gaussian_job(epochs=1))["id"], timeout=120)
    assert probe["status"] == "succeeded", probe
    queued = client.get(f"/v1/jobs/{queued['id']}").json()
    assert queued["status"] == "cancelled" and queued["started_at"] is None and queued["metrics"] == []
    assert client.post(f"/v1/jobs/{running['id']}/cancel").status_code == 409


def test_killed_worker_leaves_the_job_failed_not_running(client, distributed_workers):
    job = submit(client, long_gaussian_job())
    wait_for_job(client, job["id"], running_with_epochs, timeout=120)
    distributed_workers.current.kill()
    try:
        job = wait_finished(client, job["id"], timeout=60)
        assert job["status"] == "failed", job
        assert "worker lost" in job["error"]
    finally:
        distributed_workers.replace()
    # A new worker does not bring the job back to life.
    job = wait_finished(client, submit(client, long_gaussian_job(epochs=1))["id"], timeout=120)
    assert job["status"] == "succeeded", job
