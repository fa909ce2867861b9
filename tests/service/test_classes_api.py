"""K classes through HTTP: a job trains a small ResNet on all ten Fashion-MNIST classes, and its
predictions of uploaded Fashion-MNIST test images carry their class names; the model, its
evaluation report and its confusion-matrix figure are ten-class."""

from __future__ import annotations

import io

import pytest
from api_helpers import files_of, submit, wait_finished
from conftest import write_pngs
from PIL import Image

from ml.config import CLASS_NAMES

FASHION_JOB = {
    "kind": "train",
    "model": "resnet",
    "dataset": {"name": "fashion-mnist", "classes": list(range(10)), "image_size": 32},
    "training": {"preset": "fast", "epochs": 1, "batch_size": 128, "width": 0.0625},
}


@pytest.fixture(scope="module")
def fashion_model(client, fashion_data_dir) -> str:
    job = wait_finished(client, submit(client, FASHION_JOB)["id"], timeout=400)
    assert job["status"] == "succeeded", job
    return job["model_ids"][0]


@pytest.fixture(scope="module")
def fashion_pngs(fashion_data_dir, tmp_path_factory):
    return write_pngs(fashion_data_dir, tmp_path_factory.mktemp("fashion"), tuple(range(10)), 100, "FashionMNIST")


def test_predictions_carry_class_names(client, fashion_model, fashion_pngs):
    response = client.post(f"/v1/models/{fashion_model}/predict", files=files_of([p for p, _ in fashion_pngs]))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert all(p["name"] == CLASS_NAMES["fashion-mnist"][p["label"]] for p in predictions)
    assert all(set(p["probabilities"]) == {str(c) for c in range(10)} for p in predictions)
    correct = sum(p["label"] == label for p, (_, label) in zip(predictions, fashion_pngs))
    assert correct >= 70  # one epoch reaches about 85% on the whole test split
    boot = next(p for p, (_, label) in zip(predictions, fashion_pngs) if label == 9 and p["label"] == 9)
    assert boot["name"] == "ankle boot"


def test_model_and_reports_are_ten_class(client, fashion_model):
    model = client.get(f"/v1/models/{fashion_model}").json()
    assert model["classes"] == list(range(10)) and model["class_names"] == list(CLASS_NAMES["fashion-mnist"])
    report = client.get(f"/v1/models/{fashion_model}/reports/evaluation", params={"condition": "vanilla"})
    assert report.status_code == 200, report.text
    body = report.json()
    assert len(body["confusion_matrix"]) == 10 and all(len(row) == 10 for row in body["confusion_matrix"])
    assert sum(map(sum, body["confusion_matrix"])) == body["n_images"] == 10_000
    assert body["class_names"][9] == "ankle boot"
    assert abs(body["accuracy"] - model["final_metrics"]["val_accuracy"]) < 1e-9
    figure = client.get(f"/v1/models/{fashion_model}/figures/confusion-matrix.png")
    assert figure.status_code == 200, figure.text
    assert Image.open(io.BytesIO(figure.content)).format == "PNG"
