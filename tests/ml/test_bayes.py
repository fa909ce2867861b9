"""The Gaussian Bayes rule and its risk against independent scipy / numpy computations."""

import json
import tracemalloc

import numpy as np
import pytest
import scipy.stats
from scipy.spatial.distance import mahalanobis

from ml.analysis import BayesClassifier, GaussianClass, bayes_risk, empirical_risk


def _random_spd(dim: int, rng: np.random.Generator) -> np.ndarray:
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.5 * np.eye(dim)


def _mahalanobis(mean0: np.ndarray, mean1: np.ndarray, cov: np.ndarray) -> float:
    diff = mean1 - mean0
    return float(np.sqrt(diff @ np.linalg.solve(cov, diff)))


def _shared_cases() -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, mean0, mean1, covariance as given, dense covariance) for each compact form."""
    rng = np.random.default_rng(0)
    dim = 6
    mean0, mean1 = rng.normal(size=dim), rng.normal(size=dim)
    diagonal = rng.uniform(0.5, 3.0, size=dim)
    full = _random_spd(dim, rng)
    return [
        ("isotropic", mean0, mean1, np.array(3.0), 3.0 * np.eye(dim)),
        ("diagonal", mean0, mean1, diagonal, np.diag(diagonal)),
        ("full", mean0, mean1, full, full),
    ]


@pytest.mark.parametrize("case", _shared_cases(), ids=lambda case: case[0])
def test_closed_form_is_phi_of_half_mahalanobis(case: tuple) -> None:
    _, mean0, mean1, cov, dense = case
    clf = BayesClassifier.from_parameters(mean0, cov, mean1, cov)
    result = bayes_risk(clf)
    delta = _mahalanobis(mean0, mean1, dense)
    assert result.method == "closed_form"
    assert result.mahalanobis == pytest.approx(delta, rel=1e-10)
    assert result.risk == pytest.approx(scipy.stats.norm.cdf(-delta / 2), rel=1e-10)


@pytest.mark.parametrize("case", _shared_cases(), ids=lambda case: case[0])
def test_closed_form_agrees_with_forced_monte_carlo(case: tuple) -> None:
    _, mean0, mean1, cov, _ = case
    clf = BayesClassifier.from_parameters(mean0, cov, mean1, cov)
    exact = bayes_risk(clf).risk
    estimate = bayes_risk(clf, n_samples=200_000, seed=1, method="monte_carlo")
    assert estimate.method == "monte_carlo"
    assert estimate.ci_low <= exact <= estimate.ci_high


@pytest.mark.parametrize("prior1", [0.1, 0.3, 0.9])
def test_unequal_priors_closed_form_matches_monte_carlo(prior1: float) -> None:
    """Large Monte Carlo check of the prior-weighted formula; swapped signs miss by far."""
    dim = 3
    clf = BayesClassifier.from_parameters(np.zeros(dim), 2.0, np.full(dim, 1.2), 2.0, prior1)
    exact = bayes_risk(clf)
    estimate = bayes_risk(clf, n_samples=400_000, seed=2, method="monte_carlo")
    assert exact.risk < min(prior1, 1 - prior1)
    assert estimate.ci_low <= exact.risk <= estimate.ci_high


def test_identical_classes_risk_is_the_smaller_prior() -> None:
    clf = BayesClassifier.from_parameters(np.ones(2), 1.0, np.ones(2), 1.0, prior1=0.3)
    assert bayes_risk(clf).risk == pytest.approx(0.3)


def test_empirical_risk_of_bayes_rule_is_close_to_closed_form() -> None:
    rng = np.random.default_rng(3)
    dim, n = 5, 100_000
    cov = _random_spd(dim, rng)
    mean0, mean1 = np.zeros(dim), rng.normal(size=dim) * 0.7
    clf = BayesClassifier.from_parameters(mean0, cov, mean1, cov)
    labels = rng.integers(0, 2, size=n)
    x = np.where(
        labels[:, None] == 1,
        rng.multivariate_normal(mean1, cov, size=n),
        rng.multivariate_normal(mean0, cov, size=n),
    )
    exact = bayes_risk(clf).risk
    tolerance = 4 * np.sqrt(exact * (1 - exact) / n)
    assert abs(empirical_risk(clf.predict(x), labels) - exact) < tolerance


def _unequal_full_classifier(
    prior1: float = 0.5,
) -> tuple[BayesClassifier, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    dim = 4
    means = rng.normal(size=(2, dim))
    covs = np.stack([_random_spd(dim, rng), 2.5 * _random_spd(dim, rng)])
    clf = BayesClassifier.from_parameters(means[0], covs[0], means[1], covs[1], prior1)
    return clf, means, covs


def test_log_densities_match_scipy_for_unequal_full_covariances() -> None:
    clf, means, covs = _unequal_full_classifier()
    x = np.random.default_rng(5).normal(size=(50, 4)) * 2
    expected = np.column_stack(
        [scipy.stats.multivariate_normal(means[c], covs[c]).logpdf(x) for c in (0, 1)]
    )
    np.testing.assert_allclose(clf.log_densities(x), expected, rtol=1e-10)


@pytest.mark.parametrize(
    "cov", [np.array(0.7), np.array([0.5, 1.0, 2.0, 4.0])], ids=["isotropic", "diagonal"]
)
def test_log_densities_match_scipy_for_compact_covariances(cov: np.ndarray) -> None:
    mean = np.arange(4.0)
    clf = BayesClassifier.from_parameters(mean, cov, -mean, 2 * cov)
    x = np.random.default_rng(6).normal(size=(20, 4))
    dense = np.diag(np.broadcast_to(cov, (4,)))
    expected = scipy.stats.multivariate_normal(mean, dense).logpdf(x)
    np.testing.assert_allclose(clf.log_densities(x)[:, 0], expected, rtol=1e-10)


def test_predictions_follow_eq_11() -> None:
    clf, means, covs = _unequal_full_classifier()
    x = np.random.default_rng(7).normal(size=(2000, 4)) * 3
    squared = [
        np.array([mahalanobis(row, means[c], np.linalg.inv(covs[c])) ** 2 for row in x])
        for c in (0, 1)
    ]
    log_det_ratio = np.linalg.slogdet(covs[1])[1] - np.linalg.slogdet(covs[0])[1]
    class0 = squared[0] - squared[1] < log_det_ratio
    predictions = clf.predict(x)
    assert 0 < predictions.mean() < 1
    np.testing.assert_array_equal(predictions, np.where(class0, 0, 1))


def test_quadratic_rule_describes_eq_11_with_prior_term() -> None:
    clf, _, covs = _unequal_full_classifier(prior1=0.2)
    rule = json.loads(json.dumps(clf.rule()))
    log_det_ratio = np.linalg.slogdet(covs[1])[1] - np.linalg.slogdet(covs[0])[1]
    assert rule["kind"] == "quadratic"
    assert rule["log_det_ratio"] == pytest.approx(log_det_ratio)
    assert rule["threshold"] == pytest.approx(log_det_ratio + 2 * np.log(0.8 / 0.2))
    np.testing.assert_allclose(rule["sigma1"], covs[1])


def test_linear_rule_reproduces_predictions() -> None:
    rng = np.random.default_rng(8)
    cov = _random_spd(3, rng)
    mean0, mean1 = rng.normal(size=3), rng.normal(size=3)
    clf = BayesClassifier.from_parameters(mean0, cov, mean1, cov, prior1=0.7)
    rule = json.loads(json.dumps(clf.rule()))
    assert rule["kind"] == "linear"
    np.testing.assert_allclose(rule["w"], np.linalg.solve(cov, mean1 - mean0), rtol=1e-10)
    x = rng.normal(size=(1000, 3)) * 2
    linear = (x @ np.array(rule["w"]) + rule["b"] >= 0).astype(int)
    np.testing.assert_array_equal(clf.predict(x), linear)


def test_shared_covariance_is_recognised_across_forms() -> None:
    mean = np.zeros(3)
    clf = BayesClassifier(GaussianClass(mean, 2.0), GaussianClass(mean + 1, np.full(3, 2.0)))
    assert clf.shared_covariance
    assert bayes_risk(clf).risk == pytest.approx(scipy.stats.norm.cdf(-np.sqrt(3 / 2) / 2))


@pytest.mark.parametrize(
    "bad_cov",
    [np.array(-1.0), np.array([1.0, 0.0, 2.0]), np.diag([1.0, -2.0, 3.0]), np.ones((3, 3))],
    ids=["scalar", "diagonal", "indefinite", "singular"],
)
def test_non_positive_definite_covariance_names_the_class(bad_cov: np.ndarray) -> None:
    with pytest.raises(ValueError, match="class 1.*positive definite"):
        BayesClassifier.from_parameters(np.zeros(3), 1.0, np.zeros(3), bad_cov)


def test_mismatched_dimensions_are_rejected() -> None:
    with pytest.raises(ValueError, match="class 0"):
        BayesClassifier.from_parameters(np.zeros(3), np.ones(4), np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="dimensions differ"):
        BayesClassifier.from_parameters(np.zeros(3), 1.0, np.zeros(4), 1.0)


def test_closed_form_is_refused_for_unequal_covariances() -> None:
    clf, _, _ = _unequal_full_classifier()
    assert bayes_risk(clf, n_samples=1000).method == "monte_carlo"
    with pytest.raises(ValueError, match="share"):
        bayes_risk(clf, method="closed_form")


def test_high_dimensional_diagonal_never_builds_a_dense_matrix() -> None:
    """The paper's 3 I_{32x32} setting: a 4096 x 4096 float64 matrix alone would be 128 MiB."""
    dim = 4096
    clf = BayesClassifier.from_parameters(-np.ones(dim), np.full(dim, 3.0), np.ones(dim), 3.0)
    x = np.random.default_rng(9).normal(size=(10, dim))
    tracemalloc.start()
    try:
        clf.predict(x)
        clf.rule()
        risk = bayes_risk(clf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20
    assert risk.mahalanobis == pytest.approx(np.sqrt(4 * dim / 3))


def test_empirical_risk_counts_mistakes() -> None:
    assert empirical_risk(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 1])) == 0.5
    with pytest.raises(ValueError):
        empirical_risk(np.array([0, 1]), np.array([0, 1, 1]))
