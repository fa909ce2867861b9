"""K classes through HTTP: a job trains a small ResNet on three Fashion-MNIST classes (18,000 images:
seconds, where all ten take a minute; tests/ml/test_classes.py trains those), and its predictions of
uploaded Fashion-MNIST test images carry their class names; the model, its evaluation report and its
confusion-matrix figure are three-class. A K-means grid with fewer clusters than classes is refused."""

from __future__ import annotations

import io

import pytest
from api_helpers import assert_error, files_of, registry_counts, submit, wait_finished
from conftest import write_pngs
from PIL import Image

from ml.config import CLASS_NAMES

FASHION_JOB = {
    "kind": "train",
    "model": "resnet",
    "dataset": {"name": "fashion-mnist", "classes": [9, 1, 8], "image_size": 32},
    "training": {"preset": "fast", "epochs": 1, "batch_size": 128, "width": 0.0625},
}


@pytest.fixture(scope="module")
def fashion_model(client, fashion_data_dir) -> str:
    job = wait_finished(client, submit(client, FASHION_JOB)["id"], timeout=400)
    assert job["status"] == "succeeded", job
    return job["model_ids"][0]


@pytest.fixture(scope="module")
def fashion_pngs(fashion_data_dir, tmp_path_factory):
    return write_pngs(fashion_data_dir, tmp_path_factory.mktemp("fashion"), (1, 8, 9), 60, "FashionMNIST")


def test_predictions_carry_class_names(client, fashion_model, fashion_pngs):
    response = client.post(f"/v1/models/{fashion_model}/predict", files=files_of([p for p, _ in fashion_pngs]))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert all(p["name"] == CLASS_NAMES["fashion-mnist"][p["label"]] for p in predictions)
    assert all(set(p["probabilities"]) == {"9", "1", "8"} for p in predictions)
    correct = sum(p["label"] == label for p, (_, label) in zip(predictions, fashion_pngs))
    assert correct >= 54  # boots, trousers and bags are easy to tell apart
    assert {p["name"] for p in predictions} == {"ankle boot", "trouser", "bag"}
    assert all(p["class_index"] == [9, 1, 8].index(p["label"]) for p in predictions)


def test_model_and_reports_are_ten_class(client, fashion_model):
    model = client.get(f"/v1/models/{fashion_model}").json()
    assert model["classes"] == [9, 1, 8] and model["class_names"] == ["ankle boot", "trouser", "bag"]
    report = client.get(f"/v1/models/{fashion_model}/reports/evaluation", params={"condition": "vanilla"})
    assert report.status_code == 200, report.text
    body = report.json()
    assert [sum(row) for row in body["confusion_matrix"]] == [1000, 1000, 1000]  # every class's test images
    assert body["n_images"] == 3000 and body["class_names"] == ["ankle boot", "trouser", "bag"]
    assert abs(body["accuracy"] - model["final_metrics"]["val_accuracy"]) < 1e-9
    figure = client.get(f"/v1/models/{fashion_model}/figures/confusion-matrix.png")
    assert figure.status_code == 200, figure.text
    assert Image.open(io.BytesIO(figure.content)).format == "PNG"


def test_kmeans_grid_with_fewer_clusters_than_classes_is_refused(client):
    before = registry_counts(client)
    response = client.post("/v1/jobs", json={
        "kind": "experiment", "models": ["vae-kmeans"], "conditions": ["vanilla"],
        "dataset": {"name": "fashion-mnist", "classes": [0, 1, 2, 3], "image_size": 32},
        "training": {"epochs": 1, "n_clusters": 3},
    })
    assert_error(response, 422, "invalid_request", "n_clusters must be at least the number of classes (4)")
    assert registry_counts(client) == before
