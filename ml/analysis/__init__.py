"""The paper's analyses: sliced Wasserstein (eq. 1-2) and the Gaussian Bayes rule (eq. 7-11)."""

from ml.analysis.bayes import (
    BayesClassifier,
    BayesRisk,
    GaussianClass,
    bayes_risk,
    empirical_risk,
)
from ml.analysis.wasserstein import SlicedWasserstein, sliced_wasserstein, wasserstein_1d

__all__ = [
    "BayesClassifier",
    "BayesRisk",
    "GaussianClass",
    "SlicedWasserstein",
    "bayes_risk",
    "empirical_risk",
    "sliced_wasserstein",
    "wasserstein_1d",
]
