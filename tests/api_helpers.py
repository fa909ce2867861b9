"""Small HTTP helpers shared by the service tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

FINISHED = ("succeeded", "failed", "cancelled")
# Synthetic images, few of them: a job on these takes about a second.
TINY_GAUSSIAN = {"name": "gaussian", "image_size": 32, "n_train": 64, "n_val": 32}


# The paper's task at a 32nd of its width, each cell one epoch over MNIST 0 vs 1 (about 12,700
# images): the four cells took about 17 s on an idle 2-core CPU.
MNIST_EXPERIMENT = {
    "kind": "experiment",
    "models": ["resnet", "unet-pretrained"],
    "conditions": ["vanilla", "noisy"],
    "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32},
    "training": {"epochs": 1, "width": 0.03125, "batch_size": 128},
}


# The excess-risk decomposition on Gaussian images at a 16th of the paper's width: seconds.
TINY_ERROR_ANALYSIS = {
    "kind": "error-analysis",
    "models": ["vgg", "vae-svm", "vae-kmeans"],
    "dataset": {"name": "gaussian", "image_size": 32, "mean": [-1.0, 1.0], "std": [3.0, 3.0]},
    "training": {"epochs": 2, "width": 0.0625, "batch_size": 32, "head_epochs": 3},
    "n_train": 10,
    "n_eval": 100,
    "repeats": 2,
}


def small_train_job(model: str, epochs: int = 2, **training: Any) -> dict:
    """MNIST 0 vs 1 at 32x32 and an eighth of the paper's width: seconds per epoch on a CPU."""
    return {
        "kind": "train",
        "model": model,
        "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32},
        "training": {"epochs": epochs, "width": 0.125, "batch_size": 128, **training},
    }


def long_gaussian_job(epochs: int = 500) -> dict:
    """A job that would run for minutes, in short epochs: for cancelling and killing mid-run."""
    return {
        "kind": "train",
        "model": "vgg",
        "dataset": {"name": "gaussian", "image_size": 32, "n_train": 256, "n_val": 64},
        "training": {"epochs": epochs, "width": 0.125, "batch_size": 64},
    }


def submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    return job


def wait_for_job(client: httpx.Client, job_id: str, until: Callable[[dict], bool], timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there within {timeout}s: {job}")
        time.sleep(0.3)


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    return wait_for_job(client, job_id, lambda job: job["status"] in FINISHED, timeout)


def registry_counts(client: httpx.Client) -> tuple[int, int]:
    """(jobs, models) in the registry, as the API reports them."""
    return client.get("/v1/jobs", params={"limit": 1}).json()["total"], client.get("/v1/models", params={"limit": 1}).json()["total"]


def assert_error(response: httpx.Response, status: int, code: str, *in_message: str) -> str:
    """The documented status, the one JSON error shape, its code and these words in its message; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    for fragment in in_message:
        assert fragment in body["error"]["message"], body
    return body["error"]["message"]


def files_of(paths: list[Path]) -> list:
    """PNG files as a multipart upload."""
    return [("files", (p.name, p.read_bytes(), "image/png")) for p in paths]
