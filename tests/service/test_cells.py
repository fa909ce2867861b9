"""An experiment's cells spread over workers: `classcomp serve --workers 2` (embedded: SQLite and the
filesystem broker), each cell its own Celery task, a unet-pretrained chained behind its resnet."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import FINISHED, MNIST_EXPERIMENT, TINY_GAUSSIAN, submit, wait_finished, wait_for_job
from conftest import STALE_SECONDS, Service, service_env, start_service

# Each cell takes seconds: long enough that two idle workers both take one of the first cells.
EXPERIMENT = MNIST_EXPERIMENT


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("two-workers")
    env = service_env(home, data_dir, job_stale_seconds=STALE_SECONDS)
    url, process = start_service(["serve", "--workers", "2"], env, home, "serve-2-workers")  # one worker is live
    deadline = time.monotonic() + 90
    while httpx.get(f"{url}/readyz").json()["workers"]["live"] < 2:
        assert time.monotonic() < deadline, "the second worker did not come up"
        time.sleep(0.3)
    yield Service(url, env)
    process.stop()


@pytest.fixture(scope="module")
def client(two_workers: Service) -> Iterator[httpx.Client]:
    with two_workers.client() as client:
        yield client


def model_ids(client: httpx.Client) -> set[str]:
    return {m["id"] for m in client.get("/v1/models", params={"limit": 200}).json()["items"]}


def test_two_workers_train_the_cells_of_one_experiment(client):
    job = wait_finished(client, submit(client, EXPERIMENT)["id"], timeout=600)
    assert job["status"] == "succeeded", job
    cells = job["cells"]
    assert [(c["model"], c["condition"], c["after"]) for c in cells] == [
        ("resnet", "vanilla", None), ("unet-pretrained", "vanilla", 1), ("resnet", "noisy", None),
        ("unet-pretrained", "noisy", 3)]
    assert all(c["status"] == "succeeded" and c["epoch"] == c["epochs"] == 1 for c in cells), cells
    # The two resnets wait for nothing: the two idle workers took one each.
    assert len({c["worker"] for c in cells}) == 2, cells
    # A unet-pretrained started only after its resnet had finished, from that resnet's model.
    for resnet, unet in ((cells[0], cells[1]), (cells[2], cells[3])):
        assert unet["started_at"] >= resnet["finished_at"]
        assert client.get(f"/v1/models/{unet['model_id']}").json()["config"]["init_from"] == resnet["model_id"]
    # Progress is the grid's, growing by one per record however the cells interleave.
    assert [r["epoch"] for r in job["metrics"]] == [1, 2, 3, 4] and job["progress"] == {"epoch": 4, "epochs": 4}
    assert sorted(job["model_ids"]) == sorted(c["model_id"] for c in cells)

    rows = client.get(f"/v1/jobs/{job['id']}/report").json()["rows"]
    assert [(r["model"], r["condition"], r["model_id"], r["worker"]) for r in rows] == [
        (c["model"], c["condition"], c["model_id"], c["worker"]) for c in cells]
    assert all(r["val_accuracy"] >= 0.95 for r in rows if r["condition"] == "vanilla"), rows
    assert all("noisy_val_accuracy" in r for r in rows if r["condition"] == "vanilla"), rows


def test_cancel_reaches_every_cell_and_registers_nothing(client):
    before = model_ids(client)
    body = {"kind": "experiment", "models": ["vgg"], "conditions": ["vanilla", "imbalance", "noisy"],
            "dataset": TINY_GAUSSIAN, "training": {"epochs": 1000, "width": 0.125}}
    job = submit(client, body)
    job = wait_for_job(client, job["id"], lambda j: sum(c["epoch"] > 0 for c in j["cells"]) == 2
                       or j["status"] in FINISHED)
    statuses = [c["status"] for c in job["cells"]]
    assert sorted(statuses) == ["queued", "running", "running"], job["cells"]
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    # The queued cell is cancelled at once; the running ones stop after their epoch, which on tiny images
    # may already have ended by the time the answer is written.
    after = [c["status"] for c in response.json()["cells"]]
    assert [a for a, s in zip(after, statuses) if s == "queued"] == ["cancelled"], after
    assert all(a in ("running", "cancelled") for a, s in zip(after, statuses) if s == "running"), after
    job = wait_finished(client, job["id"])
    assert job["status"] == "cancelled", job
    assert [c["status"] for c in job["cells"]] == ["cancelled"] * 3
    assert all(c["epoch"] < 1000 for c in job["cells"])
    assert job["model_ids"] == [] and model_ids(client) == before


def test_a_failing_cell_fails_the_job_and_the_others_stay_registered(client):
    # Two synthetic images: under imbalance (0.9 of class 1) one is left, too few for K-means' two
    # clusters; every other cell trains.
    body = {"kind": "experiment", "models": ["vgg", "vae-kmeans"], "conditions": ["vanilla", "imbalance"],
            "dataset": {**TINY_GAUSSIAN, "n_train": 2}, "training": {"epochs": 1, "width": 0.125}}
    job = wait_finished(client, submit(client, body)["id"])
    assert job["status"] == "failed" and job["error_code"] == "too_few_images", job
    assert job["error"].startswith("1 of 4 cells failed: vae-kmeans under imbalance (cell 4): K-means needs at least 2"), job
    statuses = {(c["model"], c["condition"]): c["status"] for c in job["cells"]}
    assert statuses == {("vgg", "vanilla"): "succeeded", ("vae-kmeans", "vanilla"): "succeeded",
                        ("vgg", "imbalance"): "succeeded", ("vae-kmeans", "imbalance"): "failed"}
    assert len(job["model_ids"]) == 3 and set(job["model_ids"]) <= model_ids(client)
    report = client.get(f"/v1/jobs/{job['id']}/report").json()
    assert sorted(r["model_id"] for r in report["rows"]) == sorted(job["model_ids"])
    assert report["failed"] == [{"cell": 4, "model": "vae-kmeans", "condition": "imbalance",
                                 "error": job["cells"][3]["error"], "error_code": "too_few_images"}]


def test_a_killed_worker_fails_its_cell_and_the_other_trains_on(client):
    body = {"kind": "experiment", "models": ["vgg"], "conditions": ["vanilla", "noisy"], "dataset": TINY_GAUSSIAN,
            "training": {"epochs": 1000, "width": 0.125}}
    job = submit(client, body)
    job = wait_for_job(client, job["id"], lambda j: all(c["epoch"] > 0 for c in j["cells"]) or j["status"] in FINISHED)
    victim, survivor = job["cells"]
    # The worker's Celery name is classcomp-PID@HOST; its process group is it and its pool process.
    os.killpg(int(re.match(r"classcomp-(\d+)@", victim["worker"]).group(1)), signal.SIGKILL)
    killed_at = time.monotonic()
    job = wait_for_job(client, job["id"], lambda j: j["cells"][0]["status"] != "running", timeout=60)
    assert time.monotonic() - killed_at < float(STALE_SECONDS) + 10
    victim = job["cells"][0]
    assert victim["status"] == "failed" and victim["error_code"] == "worker_lost", victim
    epoch = job["cells"][1]["epoch"]
    job = wait_for_job(client, job["id"], lambda j: j["cells"][1]["epoch"] > epoch + 2)
    assert job["status"] == "running" and job["cells"][1]["status"] == "running", job
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    job = wait_finished(client, job["id"])
    assert job["status"] == "cancelled" and job["model_ids"] == [], job
    assert [c["status"] for c in job["cells"]] == ["failed", "cancelled"]
