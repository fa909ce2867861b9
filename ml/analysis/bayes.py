"""Bayes classifier for two Gaussian classes (paper eq. 7-11) and its risk.

The synthetic experiment of the paper draws each class from a known Gaussian, so the optimal
rule h_* is known and the approximation error of a model can be measured against it. The
computations are in numpy float64: the log-determinant and Mahalanobis terms of eq. 11 are
large and nearly cancel in high dimension, where float32 would lose the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import cho_solve, solve_triangular

# Samples drawn at once by the Monte Carlo risk, counted in matrix entries (64 MiB of float64).
_MONTE_CARLO_BATCH_ELEMENTS = 2**23


@dataclass(frozen=True, eq=False)
class GaussianClass:
    """One class-conditional density N(mean, cov).

    `cov` is a scalar variance (isotropic), a (d,) diagonal or a (d, d) matrix; the compact
    forms keep d = 4096 cheap because no d x d matrix is ever built for them. `name` is used
    in error messages so the caller learns which class was rejected.
    """

    mean: np.ndarray
    cov: np.ndarray
    name: str = "Gaussian class"
    _cholesky: np.ndarray | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64)
        cov = np.asarray(self.cov, dtype=np.float64)
        if mean.ndim != 1 or mean.size == 0:
            raise ValueError(f"{self.name}: mean must be a non-empty vector, not {mean.shape}")
        dim = mean.size
        if cov.shape not in {(), (dim,), (dim, dim)}:
            raise ValueError(
                f"{self.name}: covariance of shape {cov.shape} does not fit a mean of "
                f"dimension {dim}; give a scalar, ({dim},) or ({dim}, {dim})"
            )
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
            raise ValueError(f"{self.name}: mean and covariance must be finite")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "_cholesky", self._factorise())

    def _factorise(self) -> np.ndarray | None:
        """Check positive definiteness; full matrices keep their Cholesky factor for solves."""
        if self.cov.ndim < 2:
            if np.any(self.cov <= 0):
                raise ValueError(f"{self.name}: covariance is not positive definite (variance<=0)")
            return None
        if not np.allclose(self.cov, self.cov.T):
            raise ValueError(f"{self.name}: covariance matrix is not symmetric")
        try:
            return np.linalg.cholesky(self.cov)
        except np.linalg.LinAlgError:
            raise ValueError(f"{self.name}: covariance matrix is not positive definite") from None

    @property
    def dim(self) -> int:
        return self.mean.size

    def log_det(self) -> float:
        """log |Sigma|, from the factor rather than det() which under/overflows in high d."""
        if self._cholesky is not None:
            return float(2.0 * np.log(np.diag(self._cholesky)).sum())
        return float(np.log(np.broadcast_to(self.cov, (self.dim,))).sum())

    def mahalanobis_sq(self, x: np.ndarray) -> np.ndarray:
        """(x - mu)^T Sigma^-1 (x - mu) for each row of x, the quadratic term of eq. 9."""
        centred = x - self.mean
        if self._cholesky is not None:
            whitened = solve_triangular(self._cholesky, centred.T, lower=True)
            return np.einsum("ij,ij->j", whitened, whitened)
        return np.einsum("ij,ij->i", centred / self.cov, centred)

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """Exact log density (eq. 9) of each row of x."""
        return -0.5 * (self.dim * math.log(2 * math.pi) + self.log_det() + self.mahalanobis_sq(x))

    def precision_dot(self, vector: np.ndarray) -> np.ndarray:
        """Sigma^-1 vector without forming the inverse."""
        if self._cholesky is not None:
            return cho_solve((self._cholesky, True), vector)
        return vector / self.cov

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Draw `count` rows from N(mean, cov)."""
        noise = rng.standard_normal((count, self.dim))
        if self._cholesky is not None:
            return self.mean + noise @ self._cholesky.T
        return self.mean + noise * np.sqrt(self.cov)

    def same_covariance(self, other: GaussianClass) -> bool:
        """Whether both classes share Sigma, whichever compact form each was given in."""
        if self.cov.ndim == 2 or other.cov.ndim == 2:
            return np.array_equal(_dense(self.cov, self.dim), _dense(other.cov, other.dim))
        return np.array_equal(
            np.broadcast_to(self.cov, (self.dim,)), np.broadcast_to(other.cov, (other.dim,))
        )


def _dense(cov: np.ndarray, dim: int) -> np.ndarray:
    """The (dim, dim) matrix of a covariance in any of the three forms."""
    if cov.ndim == 2:
        return cov
    return np.diag(np.broadcast_to(cov, (dim,)))


@dataclass(frozen=True, eq=False)
class BayesClassifier:
    """The optimal rule h_* of eq. 7 for two known Gaussian classes with prior P(Y=1)=prior1."""

    class0: GaussianClass
    class1: GaussianClass
    prior1: float = 0.5

    def __post_init__(self) -> None:
        if self.class0.dim != self.class1.dim:
            raise ValueError(
                f"class dimensions differ: class 0 has {self.class0.dim}, class 1 {self.class1.dim}"
            )
        if not 0.0 < self.prior1 < 1.0:
            raise ValueError(f"prior1 must lie strictly between 0 and 1, got {self.prior1}")

    @classmethod
    def from_parameters(
        cls,
        mean0: ArrayLike,
        cov0: ArrayLike,
        mean1: ArrayLike,
        cov1: ArrayLike,
        prior1: float = 0.5,
    ) -> BayesClassifier:
        """Build from raw parameters, naming the classes so errors say which one is wrong."""
        return cls(
            GaussianClass(np.asarray(mean0), np.asarray(cov0), name="class 0"),
            GaussianClass(np.asarray(mean1), np.asarray(cov1), name="class 1"),
            prior1,
        )

    @property
    def prior0(self) -> float:
        return 1.0 - self.prior1

    @property
    def shared_covariance(self) -> bool:
        """With a shared Sigma the rule is linear and its risk has a closed form."""
        return self.class0.same_covariance(self.class1)

    def log_densities(self, x: ArrayLike) -> np.ndarray:
        """(n, 2) log p(x | Y = c) for c = 0, 1."""
        rows = self._as_rows(x)
        return np.column_stack([self.class0.log_pdf(rows), self.class1.log_pdf(rows)])

    def decision_function(self, x: ArrayLike) -> np.ndarray:
        """log P(Y=1 | x) - log P(Y=0 | x): the log of eq. 8's ratio, positive means class 1."""
        log_densities = self.log_densities(x)
        return log_densities[:, 1] - log_densities[:, 0] + math.log(self.prior1 / self.prior0)

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Labels in {0, 1}; a tie goes to class 1, as eq. 10 requires a strict win for class 0."""
        return (self.decision_function(x) >= 0).astype(np.int64)

    def rule(self) -> dict[str, Any]:
        """JSON-able description of the rule: linear for a shared Sigma, else eq. 11."""
        priors = [self.prior0, self.prior1]
        if self.shared_covariance:
            w = self.class0.precision_dot(self.class1.mean - self.class0.mean)
            b = -0.5 * float((self.class0.mean + self.class1.mean) @ w)
            b += math.log(self.prior1 / self.prior0)
            return {
                "kind": "linear",
                "predict_1_if": "w . x + b >= 0",
                "w": w.tolist(),
                "b": b,
                "priors": priors,
            }
        log_det_ratio = self.class1.log_det() - self.class0.log_det()
        log_prior_ratio = math.log(self.prior0 / self.prior1)
        return {
            "kind": "quadratic",
            "predict_1_if": (
                "(x - mu0)^T Sigma0^-1 (x - mu0) - (x - mu1)^T Sigma1^-1 (x - mu1) >= threshold"
            ),
            "threshold": log_det_ratio + 2.0 * log_prior_ratio,
            "log_det_ratio": log_det_ratio,
            "log_prior_ratio": log_prior_ratio,
            "mu0": self.class0.mean.tolist(),
            "mu1": self.class1.mean.tolist(),
            "sigma0": self.class0.cov.tolist(),
            "sigma1": self.class1.cov.tolist(),
            "priors": priors,
        }

    def _as_rows(self, x: ArrayLike) -> np.ndarray:
        rows = np.asarray(x, dtype=np.float64)
        if rows.ndim != 2 or rows.shape[1] != self.class0.dim:
            raise ValueError(f"x must have shape (n, {self.class0.dim}), got {rows.shape}")
        return rows


@dataclass(frozen=True)
class BayesRisk:
    """R(h_*) with a confidence interval (degenerate for the closed form)."""

    risk: float
    method: Literal["closed_form", "monte_carlo"]
    ci_low: float
    ci_high: float
    mahalanobis: float | None


def empirical_risk(predictions: ArrayLike, labels: ArrayLike) -> float:
    """Misclassification rate R_n(h), the estimate behind every risk in eq. 4-5."""
    predicted = np.asarray(predictions)
    truth = np.asarray(labels)
    if predicted.shape != truth.shape or truth.size == 0:
        raise ValueError(
            f"predictions and labels must be non-empty and of one shape, "
            f"got {predicted.shape} and {truth.shape}"
        )
    return float(np.mean(predicted != truth))


def bayes_risk(
    clf: BayesClassifier,
    n_samples: int = 200_000,
    seed: int | None = 0,
    confidence: float = 0.95,
    method: Literal["auto", "closed_form", "monte_carlo"] = "auto",
) -> BayesRisk:
    """R(h_*): exact when the classes share Sigma ("auto" picks it), Monte Carlo otherwise.

    Forcing "monte_carlo" on a shared covariance is how the closed form is cross-checked.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    delta = _mahalanobis_between_means(clf) if clf.shared_covariance else None
    if method == "closed_form" and delta is None:
        raise ValueError("the closed-form risk needs both classes to share one covariance")
    if method == "monte_carlo" or delta is None:
        return _monte_carlo_risk(clf, n_samples, seed, confidence, delta)
    risk = _shared_covariance_risk(delta, clf.prior1)
    return BayesRisk(risk, "closed_form", risk, risk, delta)


def _mahalanobis_between_means(clf: BayesClassifier) -> float:
    return float(np.sqrt(clf.class0.mahalanobis_sq(clf.class1.mean[None, :])[0]))


def _shared_covariance_risk(delta: float, prior1: float) -> float:
    """Risk of the linear Bayes rule with means Delta apart in Mahalanobis distance.

    The decision function w.x + b is Gaussian with variance Delta^2 and mean
    +-Delta^2/2 - t, t = log(pi0/pi1), under class 1 / class 0, which gives
    pi1 Phi(-Delta/2 + t/Delta) + pi0 Phi(-Delta/2 - t/Delta); Phi(-Delta/2) for equal priors.
    """
    prior0 = 1.0 - prior1
    if delta == 0.0:
        return min(prior0, prior1)
    t = math.log(prior0 / prior1)
    class1_error = _normal_cdf(-delta / 2 + t / delta)
    class0_error = _normal_cdf(-delta / 2 - t / delta)
    return prior1 * class1_error + prior0 * class0_error


def _normal_cdf(z: float) -> float:
    """Phi through erfc, which stays accurate deep in the lower tail."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _monte_carlo_risk(
    clf: BayesClassifier,
    n_samples: int,
    seed: int | None,
    confidence: float,
    delta: float | None,
) -> BayesRisk:
    """Error rate of h_* on labelled draws of (X, Y), with a Wilson interval.

    Labels are i.i.d. Bernoulli(prior1), so the error count is binomial and Wilson's interval
    is valid even when the risk is near 0. Draws come in batches to bound memory in high d.
    """
    if n_samples < 1:
        raise ValueError("n_samples must be positive")
    rng = np.random.default_rng(seed)
    batch = max(1, _MONTE_CARLO_BATCH_ELEMENTS // clf.class0.dim)
    predictions, labels = [], []
    for start in range(0, n_samples, batch):
        x, y = _sample_labelled(clf, min(batch, n_samples - start), rng)
        predictions.append(clf.predict(x))
        labels.append(y)
    risk = empirical_risk(np.concatenate(predictions), np.concatenate(labels))
    low, high = _wilson_interval(risk, n_samples, confidence)
    return BayesRisk(risk, "monte_carlo", low, high, delta)


def _sample_labelled(
    clf: BayesClassifier, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`count` draws of (X, Y): Y ~ Bernoulli(prior1), then X from that class."""
    labels = (rng.random(count) < clf.prior1).astype(np.int64)
    x = np.empty((count, clf.class0.dim))
    for label, gaussian in enumerate((clf.class0, clf.class1)):
        rows = labels == label
        x[rows] = gaussian.sample(int(rows.sum()), rng)
    return x, labels


def _wilson_interval(rate: float, count: int, confidence: float) -> tuple[float, float]:
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    scale = 1.0 + z * z / count
    centre = (rate + z * z / (2 * count)) / scale
    half_width = z / scale * math.sqrt(rate * (1 - rate) / count + z * z / (4 * count * count))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)
