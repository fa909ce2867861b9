"""The convolutional VAEs (beyond the paper) work wherever the paper's VAEs do: a job trains one on
MNIST 0 vs 1, and it predicts, reconstructs, embeds, reports and draws through HTTP."""

from __future__ import annotations

import io

import numpy as np
import pytest
from api_helpers import files_of, small_train_job, submit, wait_finished
from PIL import Image


@pytest.fixture(scope="module")
def conv_vae(client) -> str:
    job = wait_finished(client, submit(client, small_train_job("conv-vae-svm", epochs=1, head_epochs=3))["id"])
    assert job["status"] == "succeeded", job
    assert [r["phase"] for r in job["metrics"]] == ["vae", "head", "head", "head"]
    return job["model_ids"][0]


def test_predicts_real_digits(client, conv_vae, mnist_pngs):
    sample = mnist_pngs[:60]
    response = client.post(f"/v1/models/{conv_vae}/predict", files=files_of([p for p, _ in sample]))
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    correct = sum(p["label"] == label for p, (_, label) in zip(predictions, sample))
    assert correct / len(sample) >= 0.9
    assert all((p["margin"] > 0) == (p["class_index"] == 1) for p in predictions)


def test_reconstructs_and_embeds(client, conv_vae, mnist_pngs):
    paths = [p for p, _ in mnist_pngs[:2]]
    response = client.post(f"/v1/models/{conv_vae}/reconstruct", files=files_of(paths[:1]),
                           headers={"Accept": "image/png"})
    assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).size == (28, 28)
    images = np.array(client.post(f"/v1/models/{conv_vae}/reconstruct", files=files_of(paths)).json()["reconstructions"])
    assert images.shape == (2, 32, 32) and images.std() > 0.05
    embeddings = client.post(f"/v1/models/{conv_vae}/embed", files=files_of(paths)).json()["embeddings"]
    assert [len(e["mean"]) for e in embeddings] == [8, 8]


def test_wasserstein_report_and_figures(client, conv_vae):
    report = client.get(f"/v1/models/{conv_vae}/reports/wasserstein", params={"projections": 20})
    assert report.status_code == 200, report.text
    assert all(c["wasserstein"] > 0 for c in report.json()["classes"])
    # A convolutional VAE has both kinds of figure: its encoder's kernels and its latent space.
    for name in ("kernels", "feature-maps", "latent-classifiers"):
        response = client.get(f"/v1/models/{conv_vae}/figures/{name}.png")
        assert response.status_code == 200, (name, response.text)
        assert Image.open(io.BytesIO(response.content)).format == "PNG"
