"""The analysis reports through HTTP: the sliced-Wasserstein report of a VAE, checked against independent
recomputations (the library at the same seed, and POT), and the Bayes risk against scipy."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
from api_helpers import TINY_GAUSSIAN, assert_error, submit, wait_finished
from scipy import stats

from ml import artifacts as ml_artifacts
from ml.analysis.wasserstein import sliced_wasserstein
from ml.data import load_dataset

UNKNOWN = "0123456789abcdef0123456789abcdef"
BAYES = "/v1/reports/bayes-risk"


@pytest.fixture(scope="module")
def vae_id(analysis_models) -> str:
    return analysis_models["vae-svm"]


def report_url(model_id: str) -> str:
    return f"/v1/models/{model_id}/reports/wasserstein"


@pytest.fixture(scope="module")
def report(client, vae_id) -> dict:
    response = client.get(report_url(vae_id))
    assert response.status_code == 200, response.text
    assert response.headers["x-cache"] == "miss"
    return response.json()


@pytest.fixture(scope="module")
def reconstructed(artifacts, vae_id, data_dir) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The validation images of the model's dataset, their reconstructions and labels, computed here."""
    loaded = ml_artifacts.load(artifacts / vae_id)
    data = load_dataset(loaded.config.dataset, data_dir)
    with torch.no_grad():
        recon = loaded.model.vae.decode(loaded.model.vae.encode(data.x_val)[0])
    return data.x_val, recon, data.y_val


# Sliced Wasserstein


def test_wasserstein_report_has_both_classes_and_the_reference(report, vae_id):
    assert report["model_id"] == vae_id
    assert report["projections"] == 100 and report["seed"] == 0 and report["normalized"] is True
    assert [c["label"] for c in report["classes"]] == [0, 1]
    assert [c["n_images"] for c in report["classes"]] == [980, 1135]  # MNIST's test 0s and 1s
    assert report["reference"]["labels"] == [0, 1]
    published = report["published"]
    assert published["paper"] == {"0": 0.065, "1": 0.0395, "reference": 0.152}
    assert published["authors_code"]["reference"] == 0.2307 and "not what the authors' code" in published["note"]
    for entry in [*report["classes"], report["reference"]]:
        assert entry["wasserstein"] > 0 and 0 < entry["std_error"] < entry["wasserstein"]
    assert all(report["reference"]["wasserstein"] > c["wasserstein"] for c in report["classes"])


def test_wasserstein_equals_the_library_at_the_same_seed(report, reconstructed):
    x, recon, y = reconstructed
    for index, entry in enumerate(report["classes"]):
        expected = sliced_wasserstein(x[y == index], recon[y == index], 100, seed=0, normalize=True)
        assert entry["wasserstein"] == pytest.approx(expected.mean, rel=1e-4)
        assert entry["std_error"] == pytest.approx(expected.std_error, rel=1e-3)
    reference = sliced_wasserstein(x[y == 0], x[y == 1], 100, seed=0, normalize=True)
    assert report["reference"]["wasserstein"] == pytest.approx(reference.mean, rel=1e-6)


def min_max(images: torch.Tensor) -> np.ndarray:
    rows = images.reshape(len(images), -1).double().numpy()
    low, high = rows.min(1, keepdims=True), rows.max(1, keepdims=True)
    return (rows - low) / (high - low)


def test_wasserstein_agrees_with_pot(client, vae_id, reconstructed):
    x, recon, y = reconstructed
    response = client.get(report_url(vae_id), params={"projections": 1000, "seed": 7})
    assert response.status_code == 200, response.text
    served = response.json()
    assert served["projections"] == 1000 and served["seed"] == 7
    for index, entry in enumerate(served["classes"]):
        pot = ot.sliced_wasserstein_distance(min_max(x[y == index]), min_max(recon[y == index]),
                                             n_projections=1000, p=1, seed=1)
        assert entry["wasserstein"] == pytest.approx(float(pot), rel=0.05)
    pot = ot.sliced_wasserstein_distance(min_max(x[y == 0]), min_max(x[y == 1]), n_projections=1000, p=1, seed=1)
    assert served["reference"]["wasserstein"] == pytest.approx(float(pot), rel=0.05)


def test_wasserstein_is_served_from_the_cache(client, report, vae_id, artifacts):
    assert (artifacts / vae_id / "reports" / "wasserstein-100-0.json").is_file()
    again = client.get(report_url(vae_id))
    assert again.status_code == 200 and again.headers["x-cache"] == "hit"
    assert again.json() == report
    raw = client.get(report_url(vae_id), params={"normalize": "false"})
    assert raw.status_code == 200 and raw.json()["normalized"] is False
    assert raw.json()["classes"][0]["wasserstein"] != report["classes"][0]["wasserstein"]


def test_deleting_a_model_deletes_its_cached_reports(client, artifacts):
    job = wait_finished(client, submit(client, {"kind": "train", "model": "vae-kmeans", "dataset": TINY_GAUSSIAN,
                                                "training": {"epochs": 1, "width": 0.125}})["id"])
    model_id = job["model_ids"][0]
    assert client.get(report_url(model_id), params={"projections": 10}).status_code == 200
    assert (artifacts / model_id / "reports" / "wasserstein-10-0.json").is_file()
    assert client.delete(f"/v1/models/{model_id}").status_code == 204
    assert not (artifacts / model_id).exists()
    assert_error(client.get(report_url(model_id), params={"projections": 10}), 404, "model_not_found")


def test_wasserstein_of_a_cnn_is_409(client, analysis_models):
    assert_error(client.get(report_url(analysis_models["vgg"])), 409, "not_a_vae", "CNN")


@pytest.mark.parametrize("params", [{"projections": 1}, {"projections": 5001}, {"seed": -1}, {"normalize": "maybe"}])
def test_wasserstein_parameters_out_of_bounds_are_422(client, vae_id, params):
    assert_error(client.get(report_url(vae_id), params=params), 422, "invalid_request", next(iter(params)))


def test_wasserstein_of_an_unknown_model_is_404(client):
    assert_error(client.get(report_url(UNKNOWN)), 404, "model_not_found")


# Bayes risk


def bayes(client, **body) -> dict:
    response = client.post(BAYES, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_shared_covariance_risk_is_the_closed_form(client):
    cov = [[2.0, 0.3, 0.0], [0.3, 1.0, -0.2], [0.0, -0.2, 0.5]]
    mean0, mean1 = np.array([0.0, 1.0, -1.0]), np.array([1.0, 2.0, 0.0])
    result = bayes(client, mean0=mean0.tolist(), mean1=mean1.tolist(), cov0=cov, cov1=cov)
    diff = mean1 - mean0
    delta = float(np.sqrt(diff @ np.linalg.solve(np.array(cov), diff)))
    assert result["method"] == "closed_form" and result["dim"] == 3 and result["n_samples"] is None
    assert result["risk"] == pytest.approx(stats.norm.cdf(-delta / 2), rel=1e-9)
    assert result["ci_low"] == result["ci_high"] == result["risk"]
    assert result["mahalanobis"] == pytest.approx(delta, rel=1e-9)
    assert result["rule"]["kind"] == "linear"
    assert result["rule"]["w"] == pytest.approx(np.linalg.solve(np.array(cov), diff).tolist(), rel=1e-9)


def test_scalar_parameters_need_a_dimension_and_give_the_papers_case(client):
    # The paper's synthetic case at 4x4: means -1 / +1 on every pixel, variance 9.
    result = bayes(client, mean0=-1, mean1=1, cov0=9, cov1=9, dim=16)
    assert result["dim"] == 16 and len(result["rule"]["w"]) == 16
    delta = np.sqrt(16 * 2.0**2 / 9)
    assert result["risk"] == pytest.approx(stats.norm.cdf(-delta / 2), rel=1e-9)
    assert result["mahalanobis"] == pytest.approx(delta, rel=1e-9)
    without_dim = client.post(BAYES, json={"mean0": -1, "mean1": 1, "cov0": 9, "cov1": 9})
    assert_error(without_dim, 422, "invalid_request", "dim")


def independent_monte_carlo(mean0, cov0, mean1, cov1, prior1: float, n: int, seed: int) -> float:
    """The error rate of the Bayes rule computed with scipy's densities on scipy's draws."""
    rng = np.random.default_rng(seed)
    g0, g1 = stats.multivariate_normal(mean0, cov0), stats.multivariate_normal(mean1, cov1)
    labels = rng.random(n) < prior1
    x = np.where(labels[:, None], g1.rvs(n, random_state=rng), g0.rvs(n, random_state=rng))
    predicted = g1.logpdf(x) + np.log(prior1) >= g0.logpdf(x) + np.log(1 - prior1)
    return float(np.mean(predicted != labels))


def test_unequal_priors_closed_form_matches_a_monte_carlo(client):
    mean0, mean1, var = [0.0, 0.0], [1.0, 0.5], [1.0, 0.25]
    result = bayes(client, mean0=mean0, mean1=mean1, cov0=var, cov1=var, prior1=0.2)
    assert result["method"] == "closed_form"
    n = 400_000
    estimate = independent_monte_carlo(mean0, np.diag(var), mean1, np.diag(var), 0.2, n, seed=1)
    standard_error = np.sqrt(estimate * (1 - estimate) / n)
    assert abs(result["risk"] - estimate) < 4 * standard_error
    # The unequal prior moves the threshold: the risk is below that of equal priors.
    assert result["risk"] < bayes(client, mean0=mean0, mean1=mean1, cov0=var, cov1=var)["risk"]


def test_unequal_covariances_use_monte_carlo_with_an_interval(client):
    mean0, mean1 = [0.0, 0.0, 0.0], [1.0, 0.0, 0.5]
    cov0 = [[1.0, 0.4, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 1.0]]
    cov1 = [[2.0, 0.0, 0.3], [0.0, 0.5, 0.0], [0.3, 0.0, 1.0]]
    result = bayes(client, mean0=mean0, mean1=mean1, cov0=cov0, cov1=cov1, prior1=0.4,
                   n_samples=200_000, seed=3, confidence=0.999)
    assert result["method"] == "monte_carlo" and result["n_samples"] == 200_000
    assert result["rule"]["kind"] == "quadratic" and result["mahalanobis"] is None
    assert result["ci_low"] < result["risk"] < result["ci_high"]
    estimate = independent_monte_carlo(mean0, cov0, mean1, cov1, 0.4, 2_000_000, seed=11)
    assert result["ci_low"] <= estimate <= result["ci_high"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mean0": [0, 0], "mean1": [1, 1], "cov0": [[1, 2], [2, 1]], "cov1": 1}, "cov0"),
        ({"mean0": [0, 0], "mean1": [1, 1], "cov0": 1, "cov1": [1, -1]}, "cov1"),
        ({"mean0": [0, 0], "mean1": [1, 1], "cov0": 1, "cov1": [[1, 0], [1, 1]]}, "cov1"),  # not symmetric
        ({"mean0": 0, "mean1": 1, "cov0": 0, "cov1": 1, "dim": 2}, "cov0"),
    ],
)
def test_covariance_that_is_not_positive_definite_is_422_naming_it(client, body, field):
    response = client.post(BAYES, json=body)
    assert_error(response, 422, "invalid_request")
    assert response.json()["error"]["message"].startswith(f"{field}:")


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"mean0": [0, 0], "mean1": [1, 1, 1], "cov0": 1, "cov1": 1}, ("mean0 has 2", "mean1 has 3")),
        ({"mean0": [0, 0], "mean1": [1, 1], "cov0": [1, 1, 1], "cov1": 1}, ("cov0 has 3",)),
        ({"mean0": [0, 0], "mean1": [1, 1], "cov0": 1, "cov1": 1, "dim": 3}, ("dim has 3",)),
        ({"mean0": [0, 0], "mean1": [1, 1], "cov0": [[1, 0], [0]], "cov1": 1}, ("cov0", "square")),
        ({"mean0": [], "mean1": [1], "cov0": 1, "cov1": 1}, ("mean0",)),
    ],
)
def test_inconsistent_dimensions_are_422(client, body, fragments):
    assert_error(client.post(BAYES, json=body), 422, "invalid_request", *fragments)


def test_dimension_over_the_cap_is_422(client):
    scalar = {"mean0": 0, "mean1": 1, "cov0": 1, "cov1": 1}
    assert_error(client.post(BAYES, json={**scalar, "dim": 10**9}), 422, "invalid_request",
                 "CLASSCOMP_BAYES_MAX_DIM")
    assert_error(client.post(BAYES, json={**scalar, "mean0": [0] * 4097}), 422, "invalid_request", "mean0", "4096")
    identity = np.eye(513, dtype=int).tolist()
    assert_error(client.post(BAYES, json={**scalar, "cov1": identity}), 422, "invalid_request",
                 "cov1", "CLASSCOMP_BAYES_MAX_FULL_DIM")


def test_monte_carlo_draws_are_capped(client):
    body = {"mean0": 0, "mean1": 1, "cov0": 1, "cov1": 2, "dim": 4096}
    assert_error(client.post(BAYES, json={**body, "n_samples": 1_000_000}), 422, "invalid_request", "n_samples")
    assert_error(client.post(BAYES, json={**body, "prior1": 1}), 422, "invalid_request", "prior1")
