"""A model trained on clean images, tested on the noisy ones through HTTP (the paper's bracketed Table 1
values), checked against the library's own corruption and scikit-learn's confusion matrix."""

from __future__ import annotations

from dataclasses import replace

import pytest
from api_helpers import assert_error
from sklearn.metrics import confusion_matrix

from ml import artifacts as ml_artifacts
from ml.data import load_dataset
from ml.models import predict

UNKNOWN = "0123456789abcdef0123456789abcdef"


def evaluation_url(model_id: str) -> str:
    return f"/v1/models/{model_id}/reports/evaluation"


@pytest.fixture(scope="module")
def clean_vae(analysis_models) -> str:
    """A VAE + SVM trained on clean MNIST 0 vs 1."""
    return analysis_models["vae-svm"]


def test_trained_clean_tested_noisy(client, clean_vae, artifacts, data_dir):
    response = client.get(evaluation_url(clean_vae), params={"condition": "noisy"})
    assert response.status_code == 200, response.text
    assert response.headers["x-cache"] == "miss"
    report = response.json()
    assert report["trained_condition"] == "vanilla" and report["condition"] == "noisy"
    assert report["classes"] == [0, 1] and report["n_images"] == 980 + 1135  # MNIST's test 0s and 1s

    loaded = ml_artifacts.load(artifacts / clean_vae)
    noisy = load_dataset(replace(loaded.config.dataset, condition="noisy"), data_dir)
    predicted = predict(loaded.model, noisy.x_val)["class_index"].numpy()
    expected = confusion_matrix(noisy.y_val.numpy(), predicted, labels=[0, 1])
    assert report["confusion_matrix"] == expected.tolist()
    assert report["accuracy"] == pytest.approx(expected.trace() / expected.sum())

    clean = client.get(evaluation_url(clean_vae), params={"condition": "vanilla"}).json()
    trained = client.get(f"/v1/models/{clean_vae}").json()
    assert clean["accuracy"] == pytest.approx(trained["final_metrics"]["val_accuracy"])
    # The paper's finding: an MLP VAE trained on clean digits does far worse on the noisy ones.
    assert report["accuracy"] < clean["accuracy"] - 0.2, (report["accuracy"], clean["accuracy"])

    again = client.get(evaluation_url(clean_vae), params={"condition": "noisy"})
    assert again.headers["x-cache"] == "hit" and again.json() == report
    assert (artifacts / clean_vae / "reports" / "evaluation-noisy.json").is_file()


@pytest.mark.parametrize("params,status,code", [
    ({"condition": "foggy"}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
])
def test_evaluation_rejects_bad_conditions(client, clean_vae, params, status, code):
    assert_error(client.get(evaluation_url(clean_vae), params=params), status, code, "condition")


def test_evaluation_of_an_unknown_model_is_404(client):
    assert_error(client.get(evaluation_url(UNKNOWN), params={"condition": "noisy"}), 404, "model_not_found", UNKNOWN)
