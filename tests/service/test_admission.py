"""Admission control: a job this deployment cannot afford is refused before anything is queued, a full
queue answers 429, a job that runs too long fails as time_limit; and every documented request is accepted.

The rule tests run against APIs without a worker (`serve --no-worker`), so that an accepted job stays
queued and nothing trains: one with small caps, one with the defaults.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from api_helpers import assert_error, long_gaussian_job, submit, wait_finished
from conftest import service_env, start_service

from ml.config import DatasetConfig, RunConfig, TrainingConfig
from ml.data import load_dataset
from ml.models import VAEKMeans, VAESVM, build_model, parameter_count
from ml.train import train
from service.admission import estimate

CAPS = {"job_max_epochs": "5", "job_max_batch_size": "64", "job_max_width": "0.5", "job_max_image_size": "64",
        "job_max_samples": "500", "job_max_repeats": "3", "worker_memory_bytes": str(100 * 2**20),
        "max_queued_jobs": "2"}
SMALL = {"name": "gaussian", "image_size": 32, "n_train": 64, "n_val": 32}
# Within every cap above and about 24 MiB by the estimate.
WITHIN = {"kind": "train", "model": "vgg", "dataset": SMALL, "training": {"epochs": 1, "width": 0.125, "batch_size": 16}}
ERROR_ANALYSIS = {"kind": "error-analysis", "models": ["vgg"], "dataset": {"name": "gaussian", "image_size": 32},
                  "training": {"epochs": 1, "width": 0.125}, "n_train": 10, "n_eval": 100, "repeats": 2}


def no_worker_api(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, name: str, **settings: str) -> Iterator[httpx.Client]:
    home = tmp_path_factory.mktemp(name)
    # /healthz: without a worker the API may not call itself ready, yet it takes jobs.
    url, process = start_service(["serve", "--no-worker"], service_env(home, data_dir, **settings), home, name,
                                 probe="/healthz")
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    process.stop()


@pytest.fixture(scope="module")
def capped(tmp_path_factory, data_dir) -> Iterator[httpx.Client]:
    yield from no_worker_api(tmp_path_factory, data_dir, "capped-api", **CAPS)


@pytest.fixture(scope="module")
def defaults(tmp_path_factory, data_dir) -> Iterator[httpx.Client]:
    yield from no_worker_api(tmp_path_factory, data_dir, "default-api")


def total(client: httpx.Client) -> int:
    return client.get("/v1/jobs", params={"limit": 1}).json()["total"]


def refused(client: httpx.Client, body: dict | str, status: int, code: str, *in_message: str) -> str:
    """POST the body (a string is sent as it is: NaN and 1e400 are not JSON a dict can carry); assert the
    error and that no job was recorded."""
    before = total(client)
    if isinstance(body, str):
        response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    else:
        response = client.post("/v1/jobs", json=body)
    message = assert_error(response, status, code, *in_message)
    assert total(client) == before
    return message


def accepted(client: httpx.Client, body: dict) -> dict:
    job = submit(client, body)
    assert job["status"] == "queued"
    return job


def cancel(client: httpx.Client, job: dict) -> None:
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 200


def changed(body: dict, **changes: dict) -> dict:
    return {**body, **{key: {**body.get(key, {}), **value} if isinstance(value, dict) else value
                       for key, value in changes.items()}}


# Caps


def test_a_job_within_every_cap_is_accepted(capped):
    cancel(capped, accepted(capped, WITHIN))


@pytest.mark.parametrize(
    ("body", "field", "setting"),
    [
        (changed(WITHIN, training={"epochs": 6}), "training.epochs: 6", "JOB_MAX_EPOCHS"),
        (changed(WITHIN, model="vae-svm", training={"head_epochs": 6}), "training.head_epochs: 6", "JOB_MAX_EPOCHS"),
        (changed(WITHIN, training={"batch_size": 65}), "training.batch_size: 65", "JOB_MAX_BATCH_SIZE"),
        (changed(WITHIN, training={"width": 0.75}), "training.width: 0.75", "JOB_MAX_WIDTH"),
        (changed(WITHIN, dataset={"image_size": 96}), "dataset.image_size: 96", "JOB_MAX_IMAGE_SIZE"),
        (changed(WITHIN, dataset={"n_train": 501}), "dataset.n_train: 501", "JOB_MAX_SAMPLES"),
        (changed(WITHIN, dataset={"n_val": 10**12}), "dataset.n_val: 1000000000000", "JOB_MAX_SAMPLES"),
        ({**ERROR_ANALYSIS, "repeats": 4}, "repeats: 4", "JOB_MAX_REPEATS"),
        ({**ERROR_ANALYSIS, "n_eval": 501}, "n_eval: 501", "JOB_MAX_SAMPLES"),
        ({"kind": "experiment", "models": ["vgg"], "conditions": ["vanilla"], "dataset": SMALL,
          "training": {"epochs": 6, "width": 0.125}}, "training.epochs: 6", "JOB_MAX_EPOCHS"),
    ],
    ids=["epochs", "head_epochs", "batch_size", "width", "image_size", "n_train", "n_val", "repeats", "n_eval",
         "experiment"],
)
def test_each_cap_refuses_naming_the_field_and_the_setting(capped, body, field, setting):
    refused(capped, body, 422, "invalid_request", field, f"CLASSCOMP_{setting}")


def test_an_error_analysis_within_the_caps_is_accepted(capped):
    cancel(capped, accepted(capped, ERROR_ANALYSIS))


# Memory


def test_a_job_over_the_memory_budget_is_refused_with_the_estimate_and_the_budget(capped):
    body = changed(WITHIN, dataset={"image_size": 64}, training={"batch_size": 64})  # every cap allows it
    need = estimate(RunConfig(model="vgg", dataset=DatasetConfig(**body["dataset"]),
                              training=TrainingConfig(**body["training"])))
    assert need.total > 100 * 2**20 > estimate(RunConfig(model="vgg", dataset=DatasetConfig(**SMALL),
                                                         training=TrainingConfig(**WITHIN["training"]))).total
    # Activations are most of it, so the batch size is the field named.
    refused(capped, body, 422, "invalid_request", "training.batch_size:", f"({need.total} bytes",
            f"({100 * 2**20} bytes, CLASSCOMP_WORKER_MEMORY_BYTES)")


def test_the_reported_oversized_jobs_are_refused_with_the_default_settings(defaults):
    big = {"kind": "train", "model": "vgg", "dataset": {"image_size": 256},
           "training": {"width": 4, "batch_size": 65536, "epochs": 1000}}
    refused(defaults, big, 422, "invalid_request", "training.batch_size: 65536", "CLASSCOMP_JOB_MAX_BATCH_SIZE")
    refused(defaults, changed(big, training={"batch_size": 4096}), 422, "invalid_request",
            "worker memory budget of 8 GiB", "CLASSCOMP_WORKER_MEMORY_BYTES")
    huge_gaussian = {"kind": "train", "model": "vgg", "dataset": {"name": "gaussian", "n_train": 10**12}}
    refused(defaults, huge_gaussian, 422, "invalid_request", "dataset.n_train: 1000000000000")


def saved_for_backward(net: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the activations a real forward keeps for its backward pass (weights excluded)."""
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in weights:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net.train()(x)
    return sum(storages.values())


@pytest.mark.parametrize("model", ["vgg", "resnet", "unet", "vae-svm", "conv-vae-kmeans"])
def test_the_estimate_agrees_with_a_real_model_on_the_cpu(model):
    cfg = RunConfig(model=model, dataset=DatasetConfig(**SMALL), training=TrainingConfig(width=0.125, batch_size=8))
    need = estimate(cfg)
    real = build_model(cfg)
    # Weights, gradients and Adam's two moments, all float32.
    assert need.parameters == parameter_count(real) * 4 * 4
    net = real.vae if isinstance(real, (VAESVM, VAEKMeans)) else real
    kept = saved_for_backward(net, torch.randn(8, 1, 32, 32))
    # Conservative (the gradients of the activations come on top of what is kept), within a small factor.
    assert kept <= need.activations <= 4 * kept
    data = load_dataset(cfg.dataset)
    assert need.images == data.x_train.nbytes + data.x_val.nbytes


def test_the_estimate_counts_the_mnist_images_a_job_loads(data_dir):
    cfg = RunConfig(model="vgg", dataset=DatasetConfig(classes=[3, 8], image_size=32))
    data = load_dataset(cfg.dataset, data_dir)
    assert estimate(cfg).images == data.x_train.nbytes + data.x_val.nbytes


def test_a_frozen_encoder_has_no_gradients_or_moments():
    cfg = RunConfig(model="unet-pretrained", init_from="resnet-id", dataset=DatasetConfig(image_size=32),
                    training=TrainingConfig(width=0.125))
    frozen = estimate(cfg)
    finetuned = estimate(dataclasses.replace(cfg, training=TrainingConfig(width=0.125, finetune_encoder=True)))
    encoder = parameter_count(build_model(cfg).stages)
    assert finetuned.parameters - frozen.parameters == encoder * 4 * 3


# Values no job can take: non-finite numbers and seeds torch refuses


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"kind": "train", "model": "vgg", "dataset": {"name": "gaussian", "image_size": 32, "mean": [NaN, 1.0]}}',
         "dataset: mean must be finite"),
        ('{"kind": "train", "model": "vgg", "dataset": {"name": "gaussian", "image_size": 32, "std": [1e400, 3.0]}}',
         "dataset: std must be finite"),
        ('{"kind": "train", "model": "vae-svm", "training": {"beta": Infinity}}', "training: beta must be finite"),
        ('{"kind": "train", "model": "vgg", "training": {"vae_grad_clip": -Infinity}}',
         "training: vae_grad_clip must be finite"),
        ('{"kind": "error-analysis", "dataset": {"name": "gaussian", "image_size": 32, "mean": [-1.0, NaN]}}',
         "dataset: mean must be finite"),
    ],
    ids=["NaN mean", "1e400 std", "infinite beta", "negative infinite clip", "error-analysis NaN mean"],
)
def test_non_finite_numbers_are_422_naming_the_field(defaults, raw, field):
    refused(defaults, raw, 422, "invalid_request", field)


def test_a_per_pixel_nan_is_422(defaults):
    mean = [0.0] * 64
    mean[5] = float("nan")
    body = {"kind": "train", "model": "conv-vae-kmeans", "dataset": {"name": "gaussian", "image_size": 8,
                                                                     "mean": [mean, 1.0]}}
    refused(defaults, json.dumps(body), 422, "invalid_request", "dataset: mean must be finite")


@pytest.mark.parametrize(
    ("change", "field"),
    [({"training": {"seed": 2**64}}, "training: seed"), ({"dataset": {"seed": 2**63}}, "dataset: seed"),
     ({"training": {"seed": -1}}, "training: seed")],
    ids=["2**64", "2**63", "negative"],
)
def test_seeds_torch_cannot_take_are_422(defaults, change, field):
    refused(defaults, changed(WITHIN, **change), 422, "invalid_request", field, "must be in [0, 9223372036854775808)")


def test_the_largest_seed_is_accepted_and_trains():
    top = 2**63 - 1
    cfg = RunConfig(model="vae-kmeans", dataset=DatasetConfig(**{**SMALL, "condition": "noisy", "seed": top}),
                    training=TrainingConfig(epochs=1, width=0.125, batch_size=32, seed=top))
    result = train(cfg, load_dataset(cfg.dataset), device="cpu")  # the noisy seed + 1 and K-means' seed included
    assert result.history and not result.stopped


# The queue


def test_a_full_queue_is_429_with_retry_after_and_a_cancel_frees_a_place(capped):
    waiting = capped.get("/v1/jobs", params={"status": "queued"}).json()["total"]
    jobs = [accepted(capped, WITHIN) for _ in range(int(CAPS["max_queued_jobs"]) - waiting)]
    message = refused(capped, WITHIN, 429, "queue_full", "CLASSCOMP_MAX_QUEUED_JOBS")
    assert "2 jobs are queued" in message
    response = capped.post("/v1/jobs", json=WITHIN)
    assert response.status_code == 429 and int(response.headers["retry-after"]) > 0
    # A job the caps refuse is told so, not to retry.
    refused(capped, changed(WITHIN, training={"epochs": 6}), 422, "invalid_request", "training.epochs")
    cancel(capped, jobs[0])
    jobs[0] = accepted(capped, WITHIN)
    for job in jobs:
        cancel(capped, job)


# Time limits


@pytest.fixture(scope="module")
def time_limited(tmp_path_factory, data_dir) -> Iterator[httpx.Client]:
    home = tmp_path_factory.mktemp("time-limited")
    url, process = start_service(["serve"], service_env(home, data_dir, job_soft_time_limit_seconds="3"), home,
                                 "time-limited-serve")
    with httpx.Client(base_url=url, timeout=60) as client:
        yield client
    process.stop()


def test_a_job_past_its_soft_time_limit_fails_as_time_limit(time_limited):
    job = wait_finished(time_limited, submit(time_limited, long_gaussian_job())["id"], timeout=120)
    assert job["status"] == "failed", job
    assert job["error_code"] == "time_limit"
    assert job["error"].startswith("time limit") and "3 s" in job["error"], job["error"]
    assert job["started_at"] and job["progress"]["epoch"] < 500  # it ran, and was stopped long before its end


# The OpenAPI document: what it shows is what the API takes


def test_every_documented_job_example_is_accepted(defaults):
    spec = defaults.get("/openapi.json").json()
    post = spec["paths"]["/v1/jobs"]["post"]
    examples = post["requestBody"]["content"]["application/json"]["examples"]
    assert len(examples) >= 6
    for name, example in examples.items():
        response = defaults.post("/v1/jobs", json=example["value"])
        assert response.status_code == 202, (name, response.text)
        cancel(defaults, response.json())
    assert "Retry-After" in post["responses"]["429"]["headers"]


def meets_any_of(body: dict, alternatives: list[dict]) -> bool:
    """JSON Schema's anyOf for alternatives made of `required` and property `type`s (integer or array)."""
    kinds = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool), "array": lambda v: isinstance(v, list)}
    return any(all(name in body for name in alt["required"])
               and all(kinds[prop["type"]](body[name]) for name, prop in alt["properties"].items() if name in body)
               for alt in alternatives)


def test_the_bayes_risk_schema_says_when_dim_is_required(defaults):
    schema = defaults.get("/openapi.json").json()["components"]["schemas"]["BayesRiskRequest"]
    scalars = {"mean0": -1, "mean1": 1, "cov0": 9, "cov1": 9}
    for body, status in [(scalars, 422), ({**scalars, "dim": 4}, 200), ({**scalars, "mean0": [-1, -1]}, 200),
                         ({**scalars, "cov1": [[9, 0], [0, 9]]}, 200)]:
        assert meets_any_of(body, schema["anyOf"]) == (status == 200), body
        response = defaults.post("/v1/reports/bayes-risk", json=body)
        assert response.status_code == status, (body, response.text)
    assert_error(defaults.post("/v1/reports/bayes-risk", json=scalars), 422, "invalid_request", "dim")
