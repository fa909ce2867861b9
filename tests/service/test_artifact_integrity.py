"""Damaged or vanished model files: 409 artifact_corrupt or 410 artifact_missing naming the model, on
predict, figures and downloads alike, shown on the model resource, and gone once the files are back.

The service is this module's own: its tests damage the files of the models they train.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_helpers import TINY_GAUSSIAN, assert_error, submit, wait_finished
from conftest import Service, service_env, start_service

FAULTS = ("checksum", "garbage", "truncated", "flipped", "deleted", "legacy")
PIXELS = {"pixels": [np.random.default_rng(0).uniform(size=(32, 32)).tolist()]}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("integrity-home")
    env = service_env(home, data_dir)
    url, process = start_service(["serve"], env, home, "serve-integrity")
    yield Service(url, env)
    process.stop()


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as client:
        yield client


@pytest.fixture(scope="module")
def models(client: httpx.Client) -> dict[str, str]:
    """A tiny VGG per test, since each damages its own."""
    body = {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}}
    submitted = {fault: submit(client, body)["id"] for fault in FAULTS}
    jobs = {fault: wait_finished(client, job_id) for fault, job_id in submitted.items()}
    assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
    return {fault: job["model_ids"][0] for fault, job in jobs.items()}


@pytest.fixture(scope="module")
def store(service: Service) -> Path:
    return Path(service.env["CLASSCOMP_HOME"]) / "artifacts"


def predict(client: httpx.Client, model_id: str) -> httpx.Response:
    return client.post(f"/v1/models/{model_id}/predict", json=PIXELS)


def assert_predicts(client: httpx.Client, model_id: str) -> None:
    response = predict(client, model_id)
    assert response.status_code == 200, response.text
    probabilities = response.json()["predictions"][0]["probabilities"]
    assert all(p is not None and math.isfinite(p) for p in probabilities.values()), probabilities


def artifact(client: httpx.Client, model_id: str) -> dict:
    return client.get(f"/v1/models/{model_id}").json()["artifact"]


def listed_artifact(client: httpx.Client, model_id: str) -> dict:
    items = client.get("/v1/models", params={"limit": 200}).json()["items"]
    return next(item["artifact"] for item in items if item["id"] == model_id)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_recorded_checksum_is_the_weights_sha256_and_a_download_matches_it(client, models, store):
    model_id = models["checksum"]
    on_disk = sha256((store / model_id / "weights.safetensors").read_bytes())
    # A listing never hashes: this model's file has not been read since the API started.
    assert listed_artifact(client, model_id)["status"] == "unchecked"
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["weights_sha256"] == on_disk
    assert model["artifact"]["status"] == "ok" and model["artifact"]["checked_at"], model["artifact"]
    assert listed_artifact(client, model_id)["status"] == "ok"
    download = client.get(f"/v1/models/{model_id}/weights")
    assert download.status_code == 200
    assert sha256(download.content) == on_disk


def test_weights_replaced_with_garbage_answer_409_everywhere_until_restored(client, models, store):
    model_id = models["garbage"]
    weights = store / model_id / "weights.safetensors"
    assert_predicts(client, model_id)  # now cached
    original = weights.read_bytes()
    weights.write_bytes(os.urandom(4096))

    assert_error(predict(client, model_id), 409, "artifact_corrupt", model_id)
    assert_error(client.get(f"/v1/models/{model_id}/figures/kernels.png"), 409, "artifact_corrupt", model_id)
    download = client.get(f"/v1/models/{model_id}/weights")
    assert_error(download, 409, "artifact_corrupt", model_id)
    assert download.headers["content-type"] == "application/json"
    state = artifact(client, model_id)
    assert state["status"] == "corrupt" and "SHA-256" in state["detail"], state
    assert listed_artifact(client, model_id)["status"] == "corrupt"

    weights.write_bytes(original)
    assert_predicts(client, model_id)
    assert artifact(client, model_id)["status"] == "ok"
    assert sha256(client.get(f"/v1/models/{model_id}/weights").content) == sha256(original)
    assert client.get(f"/v1/models/{model_id}/figures/kernels.png").status_code == 200


def test_truncated_weights_answer_409(client, models, store):
    model_id = models["truncated"]
    weights = store / model_id / "weights.safetensors"
    assert_predicts(client, model_id)
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert_error(predict(client, model_id), 409, "artifact_corrupt", model_id)
    assert_error(client.get(f"/v1/models/{model_id}/weights"), 409, "artifact_corrupt", model_id)
    assert artifact(client, model_id)["status"] == "corrupt"


def test_flipped_tensor_bytes_behind_an_intact_header_answer_409_not_null_probabilities(client, models, store):
    model_id = models["flipped"]
    weights = store / model_id / "weights.safetensors"
    assert_predicts(client, model_id)
    data = bytearray(weights.read_bytes())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    data[header_end:] = bytes(b ^ 0xFF for b in data[header_end:])  # every tensor, as NaNs and nonsense
    with open(weights, "r+b") as f:  # in place: same inode, same size
        f.write(data)
    assert_error(predict(client, model_id), 409, "artifact_corrupt", model_id)
    assert artifact(client, model_id)["status"] == "corrupt"


def test_a_deleted_directory_answers_410_even_for_a_cached_model_until_restored(client, models, store, tmp_path):
    model_id = models["deleted"]
    directory = store / model_id
    assert_predicts(client, model_id)
    backup = shutil.copytree(directory, tmp_path / model_id)
    shutil.rmtree(directory)

    assert_error(predict(client, model_id), 410, "artifact_missing", model_id)
    assert_error(client.get(f"/v1/models/{model_id}/figures/kernels.png"), 410, "artifact_missing", model_id)
    assert_error(client.get(f"/v1/models/{model_id}/weights"), 410, "artifact_missing", model_id)
    assert artifact(client, model_id)["status"] == "missing"
    assert listed_artifact(client, model_id)["status"] == "missing"

    shutil.copytree(backup, directory)
    assert_predicts(client, model_id)
    assert artifact(client, model_id)["status"] == "ok"


def test_a_model_registered_without_a_checksum_loads_as_before_reported_unverified(client, models, service):
    model_id = models["legacy"]
    # What the migration leaves for models registered before checksums were recorded.
    with sqlite3.connect(Path(service.env["CLASSCOMP_HOME"]) / "registry.db") as db:
        db.execute("UPDATE models SET weights_sha256 = NULL WHERE id = ?", (model_id,))
    model = client.get(f"/v1/models/{model_id}").json()
    assert model["weights_sha256"] is None and model["artifact"]["status"] == "unverified", model
    assert_predicts(client, model_id)
    assert client.get(f"/v1/models/{model_id}/weights").status_code == 200
