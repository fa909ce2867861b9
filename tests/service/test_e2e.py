"""The whole flow through HTTP, once embedded (`classcomp serve`: SQLite, filesystem broker, worker
child) and once distributed (API and worker processes, PostgreSQL, Redis): train a VGG and a
VAE + K-means, predict real MNIST digits, reconstruct, embed, download weights, delete."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from api_helpers import TINY_GAUSSIAN, files_of, small_train_job, submit, wait_finished
from PIL import Image
from safetensors.torch import load as load_safetensors

MODELS = ("vgg", "vae-kmeans")


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def service(request: pytest.FixtureRequest):
    return request.getfixturevalue(f"{request.param}_service")


@pytest.fixture(scope="module")
def client(service):
    with service.client() as client:
        yield client


@pytest.fixture(scope="module")
def jobs(client) -> dict[str, dict]:
    """Both models submitted at once (the worker runs them one after the other), followed to their end."""
    submitted = {name: submit(client, small_train_job(name, epochs=2)) for name in MODELS}
    for job in submitted.values():
        assert job["status"] == "queued"
    return {name: wait_finished(client, job["id"]) for name, job in submitted.items()}


@pytest.fixture(scope="module")
def model_ids(jobs) -> dict[str, str]:
    return {name: job["model_ids"][0] for name, job in jobs.items()}


def test_jobs_succeed_with_progress_and_metrics(jobs):
    for name, job in jobs.items():
        assert job["status"] == "succeeded", job
        assert job["error"] is None
        assert job["progress"] == {"epoch": 2, "epochs": 2}
        assert [r["epoch"] for r in job["metrics"]] == [1, 2]
        assert all("loss" in r and "epoch_seconds" in r for r in job["metrics"])
        assert len(job["model_ids"]) == 1
        assert job["created_at"] <= job["started_at"] <= job["finished_at"]
        assert job["request"]["model"] == name and job["request"]["training"]["width"] == 0.125


def test_job_listing_filters_and_pages_newest_first(client, jobs):
    ours = [jobs["vae-kmeans"]["id"], jobs["vgg"]["id"]]  # submitted second, so listed first
    listed = client.get("/v1/jobs", params={"status": "succeeded", "limit": 200}).json()
    ids = [job["id"] for job in listed["items"]]
    assert [i for i in ids if i in ours] == ours
    assert listed["total"] == len(ids)
    assert client.get("/v1/jobs", params={"status": "queued"}).json()["items"] == []
    page = client.get("/v1/jobs", params={"limit": 1, "offset": 1}).json()
    assert len(page["items"]) == 1 and page["limit"] == 1 and page["offset"] == 1
    assert page["items"][0]["id"] == client.get("/v1/jobs", params={"limit": 2}).json()["items"][1]["id"]


@pytest.mark.parametrize("name", MODELS)
def test_predicts_real_mnist_digits(client, model_ids, mnist_pngs, name):
    response = client.post(f"/v1/models/{model_ids[name]}/predict", files=files_of(p for p, _ in mnist_pngs))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(mnist_pngs) >= 200
    accuracy = np.mean([p["label"] == label for p, (_, label) in zip(predictions, mnist_pngs)])
    assert accuracy >= 0.98
    for p in predictions:
        assert set(p["probabilities"]) == {"0", "1"}
        assert p["label"] == [0, 1][p["class_index"]]
        assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        if name == "vae-kmeans":
            assert p["cluster"] >= 0 and p["distance"] >= 0
        else:
            assert "cluster" not in p and "margin" not in p


def test_pixels_and_pngs_are_preprocessed_alike(client, model_ids, mnist_pngs):
    paths = [p for p, _ in mnist_pngs[:3]]
    pixels = [(np.asarray(Image.open(p), dtype=np.float64) / 255).tolist() for p in paths]
    url = f"/v1/models/{model_ids['vgg']}/predict"
    from_json = client.post(url, json={"pixels": pixels}).json()["predictions"]
    from_png = client.post(url, files=files_of(paths)).json()["predictions"]
    for a, b in zip(from_json, from_png):
        assert a["label"] == b["label"]
        assert a["probabilities"]["1"] == pytest.approx(b["probabilities"]["1"], abs=1e-5)


def test_model_details_and_metric_series(client, model_ids):
    for name, model_id in model_ids.items():
        model = client.get(f"/v1/models/{model_id}").json()
        assert model["id"] == model_id and model["model"] == name
        assert model["classes"] == [0, 1]
        assert model["parameter_count"] > 0 and model["train_seconds"] > 0
        assert model["final_metrics"]["val_accuracy"] >= 0.9
        assert model["config"]["dataset"]["image_size"] == 32
        metrics = client.get(f"/v1/models/{model_id}/metrics").json()
        assert metrics["epochs"] == [1, 2]
        assert all(len(series) == 2 for series in metrics["series"].values())
    assert {m["id"] for m in client.get("/v1/models", params={"limit": 200}).json()["items"]} >= set(model_ids.values())


def test_reconstruct_returns_png_of_the_input_size(client, model_ids, mnist_pngs, tmp_path):
    odd_size = tmp_path / "digit-56x42.png"
    Image.open(mnist_pngs[0][0]).resize((56, 42)).save(odd_size)
    response = client.post(f"/v1/models/{model_ids['vae-kmeans']}/reconstruct",
                           files=files_of([odd_size]), headers={"Accept": "image/png"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG" and image.size == (56, 42) and image.mode == "L"


def test_reconstruct_and_embed_as_json(client, model_ids, mnist_pngs):
    paths = [p for p, _ in mnist_pngs[:2]]
    response = client.post(f"/v1/models/{model_ids['vae-kmeans']}/reconstruct", files=files_of(paths)).json()
    images = np.array(response["reconstructions"])
    assert images.shape == (2, 32, 32) and response["image_size"] == 32
    assert 0 <= images.min() and images.max() <= 1
    embeddings = client.post(f"/v1/models/{model_ids['vae-kmeans']}/embed", files=files_of(paths)).json()["embeddings"]
    assert len(embeddings) == 2
    assert all(len(e["mean"]) == 8 and len(e["logvar"]) == 8 for e in embeddings)


def test_weights_are_a_safetensors_file(client, model_ids):
    response = client.get(f"/v1/models/{model_ids['vae-kmeans']}/weights")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    tensors = load_safetensors(response.content)
    assert "centres" in tensors and tensors["centres"].shape == (2, 8)


def test_delete_model_then_404(service, client, model_ids, jobs):
    model_id = model_ids["vae-kmeans"]
    artifacts = Path(service.env.get("CLASSCOMP_ARTIFACT_DIR") or Path(service.env["CLASSCOMP_HOME"]) / "artifacts")
    assert (artifacts / model_id / "weights.safetensors").is_file()
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert not (artifacts / model_id).exists()
    for method, path in (("GET", ""), ("GET", "/weights"), ("GET", "/metrics"), ("DELETE", "")):
        response = client.request(method, f"/v1/models/{model_id}{path}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "model_not_found"
    assert client.post(f"/v1/models/{model_id}/predict", json={"pixels": [[[0.0]]]}).status_code == 404
    assert model_id not in {m["id"] for m in client.get("/v1/models", params={"limit": 200}).json()["items"]}
    assert client.get(f"/v1/jobs/{jobs['vae-kmeans']['id']}").json()["status"] == "succeeded"


def test_vae_svm_reports_its_margin(client):
    job = wait_finished(client, submit(client, {"kind": "train", "model": "vae-svm", "dataset": TINY_GAUSSIAN,
                                                "training": {"epochs": 1, "head_epochs": 1, "width": 0.125}})["id"])
    assert job["status"] == "succeeded" and job["progress"] == {"epoch": 2, "epochs": 2}, job
    image = np.random.default_rng(0).uniform(size=(32, 32)).tolist()
    (prediction,) = client.post(f"/v1/models/{job['model_ids'][0]}/predict", json={"pixels": [image]}).json()["predictions"]
    assert isinstance(prediction["margin"], float) and (prediction["margin"] > 0) == (prediction["class_index"] == 1)
    assert "cluster" not in prediction


def test_unet_pretrained_starts_from_a_registered_resnet(client):
    resnet = wait_finished(client, submit(client, {"kind": "train", "model": "resnet", "dataset": TINY_GAUSSIAN,
                                                   "training": {"epochs": 1, "width": 0.125}})["id"])
    assert resnet["status"] == "succeeded", resnet
    body = {"kind": "train", "model": "unet-pretrained", "init_from": resnet["model_ids"][0],
            "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.25}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422 and "width" in response.json()["error"]["message"]
    body["training"]["width"] = 0.125
    unet = wait_finished(client, submit(client, body)["id"])
    assert unet["status"] == "succeeded", unet
    assert client.get(f"/v1/models/{unet['model_ids'][0]}").json()["config"]["init_from"] == resnet["model_ids"][0]
