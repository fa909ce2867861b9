"""Analysis reports: a VAE's sliced-Wasserstein report, any model's evaluation under another condition,
and the Bayes risk of two Gaussians.

All are blocking numerical work, so the routes are plain `def`s that FastAPI runs in its
threadpool. A model's reports never change, so each is computed once per set of parameters and
served from the model's artifact directory afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Query, Response
from pydantic import BaseModel
from torch import Tensor

from ml.analysis.bayes import BayesClassifier, GaussianClass, bayes_risk
from ml.analysis.wasserstein import sliced_wasserstein
from ml.config import Condition
from ml.evaluation import condition_config, evaluate
from service import derived, inference
from service.api.deps import ModelCacheDep, ModelRef, SessionDep, SettingsDep, get_model_or_404
from service.datasets import validation_data
from service.errors import ApiError
from service.schemas import (
    ERROR_RESPONSES,
    MODEL_ERROR_RESPONSES,
    WASSERSTEIN_REFERENCES,
    EvaluationReport,
    BayesRiskRequest,
    BayesRiskResponse,
    WassersteinReport,
)
from service.settings import Settings

router = APIRouter(tags=["reports"], responses=ERROR_RESPONSES)

MAX_PROJECTIONS = 5000
RECONSTRUCT_BATCH = 1024
DEFAULT_MONTE_CARLO_SAMPLES = 200_000
MIN_MONTE_CARLO_SAMPLES = 100


def cached_report(model_id: str, filename: str, schema: type[BaseModel], compute: Callable[[], dict]) -> Response:
    """The report in the model's artifacts, or `compute`d, validated against `schema` and stored there."""
    cached = derived.read(model_id, "reports", filename)
    if cached is not None:
        return Response(cached, media_type="application/json", headers={"X-Cache": "hit"})
    body = schema.model_validate(compute()).model_dump_json().encode()
    derived.write(model_id, "reports", filename, body)
    return Response(body, media_type="application/json", headers={"X-Cache": "miss"})


# Sliced Wasserstein


@torch.inference_mode()
def _reconstruct(vae: torch.nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Originals and the decodes of their latent means, both on the VAE's device, in [-1, 1]."""
    device = next(vae.parameters()).device
    originals = x.to(device)
    recon = torch.cat([vae.decode(vae.encode(chunk)[0]) for chunk in originals.split(RECONSTRUCT_BATCH)])
    return originals.float(), recon.float()


def wasserstein_report(loaded, model_id: str, projections: int, seed: int, normalize: bool) -> dict:
    vae = inference.vae(loaded)
    data = validation_data(loaded.config.dataset)
    originals, recon = _reconstruct(vae, data.x_val)
    y = data.y_val.to(originals.device)
    classes = []
    for index, label in enumerate(data.classes):
        members = y == index
        sw = sliced_wasserstein(originals[members], recon[members], projections, seed, normalize)
        classes.append({"label": label, "wasserstein": sw.mean, "std_error": sw.std_error,
                        "n_images": int(members.sum())})
    reference = sliced_wasserstein(originals[y == 0], originals[y == 1], projections, seed, normalize)
    return {
        "model_id": model_id,
        "projections": projections,
        "seed": seed,
        "normalized": normalize,
        "split": "validation",
        "classes": classes,
        "reference": {"labels": list(data.classes[:2]), "wasserstein": reference.mean, "std_error": reference.std_error},
        "published": WASSERSTEIN_REFERENCES,
    }


@router.get(
    "/v1/models/{ref:model_ref}/reports/wasserstein",
    response_model=WassersteinReport,
    responses={410: MODEL_ERROR_RESPONSES[410]},
    summary="Sliced Wasserstein-1 between a VAE's validation images and their reconstructions",
    description=(
        "Per class, the sliced W1 distance (paper eq. 1-2) between the validation images of the model's own "
        "dataset and the VAE's reconstructions of them (decoded latent means), with its Monte-Carlo standard "
        "error; and class 0 against class 1 as the reference. Computed once per (projections, seed, normalize) "
        "and then served from the model's artifacts (header `X-Cache: hit`). 409 for a model without a VAE."
    ),
)
def get_wasserstein_report(
    ref: ModelRef,
    session: SessionDep,
    cache: ModelCacheDep,
    projections: Annotated[int, Query(ge=2, le=MAX_PROJECTIONS, description="random directions")] = 100,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="seed of the random directions")] = 0,
    normalize: Annotated[bool, Query(description="the paper's per-image min-max scaling to [0, 1] first")] = True,
) -> Response:
    model_id = get_model_or_404(session, ref).id
    return cached_report(
        model_id, f"wasserstein-{projections}-{seed}{'' if normalize else '-raw'}.json", WassersteinReport,
        lambda: wasserstein_report(cache.get(model_id), model_id, projections, seed, normalize),
    )


# Evaluation under another condition


@router.get(
    "/v1/models/{ref:model_ref}/reports/evaluation",
    response_model=EvaluationReport,
    responses={410: MODEL_ERROR_RESPONSES[410]},
    summary="Accuracy and confusion matrix on the validation images of another condition",
    description=(
        "The model scored on the validation split of its own digits, image size and seed under `condition`: "
        "`noisy` for a model trained on clean images is the paper's bracketed Table 1 value (trained clean, "
        "tested noisy). The noisy images are the same, corrupted with the same seed, as those a model trained "
        "under noisy was scored on; `imbalance` changes only training data, so it tests on clean images. "
        "Computed once per condition, then served from the model's artifacts (header `X-Cache: hit`)."
    ),
)
def get_evaluation_report(
    ref: ModelRef,
    session: SessionDep,
    cache: ModelCacheDep,
    condition: Annotated[Condition, Query(description="the condition of the test images")],
) -> Response:
    model_id = get_model_or_404(session, ref).id

    def report() -> dict:
        loaded = cache.get(model_id)
        data = validation_data(condition_config(loaded.config.dataset, condition))
        return {"model_id": model_id, "trained_condition": loaded.config.dataset.condition, "condition": condition,
                **evaluate(loaded.model, data)}

    return cached_report(model_id, f"evaluation-{condition}.json", EvaluationReport, report)


# Bayes risk


def _invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_request", message)


def _dimension(name: str, value: Any) -> tuple[int | None, bool]:
    """The dimension a mean or covariance implies (None for a scalar) and whether it is a full matrix,
    from the lengths alone: nothing is allocated before the sizes are known to be acceptable."""
    if not isinstance(value, list):
        return None, False
    if isinstance(value[0], list):
        rows = len(value)
        for i, row in enumerate(value):
            if len(row) != rows:
                raise _invalid(f"{name}: a full covariance matrix must be square; it has {rows} rows but row {i} "
                               f"has {len(row)} entries")
        return rows, True
    return len(value), False


def _resolve_dimension(body: BayesRiskRequest, settings: Settings) -> tuple[int, bool]:
    fields = {name: _dimension(name, getattr(body, name)) for name in ("mean0", "mean1", "cov0", "cov1")}
    given = {name: d for name, (d, _) in fields.items() if d is not None}
    if body.dim is not None:
        given["dim"] = body.dim
    if not given:
        raise _invalid("dim: required when every mean and covariance is a scalar")
    if len(set(given.values())) > 1:
        listed = ", ".join(f"{name} has {d}" for name, d in given.items())
        raise _invalid(f"inconsistent dimensions: {listed}")
    dim = next(iter(given.values()))
    full = [name for name, (_, is_full) in fields.items() if is_full]
    if dim > settings.bayes_max_dim:
        raise _invalid(f"{next(iter(given))}: dimension {dim} is over the limit of {settings.bayes_max_dim} "
                       "(CLASSCOMP_BAYES_MAX_DIM)")
    if full and dim > settings.bayes_max_full_dim:
        raise _invalid(f"{full[0]}: a full covariance matrix of dimension {dim} is over the limit of "
                       f"{settings.bayes_max_full_dim} (CLASSCOMP_BAYES_MAX_FULL_DIM); give a diagonal or a scalar")
    return dim, bool(full)


def _gaussian(body: BayesRiskRequest, c: int, dim: int) -> GaussianClass:
    mean, cov = getattr(body, f"mean{c}"), getattr(body, f"cov{c}")
    mean = np.full(dim, float(mean)) if not isinstance(mean, list) else np.asarray(mean, dtype=np.float64)
    try:
        return GaussianClass(mean, np.asarray(cov, dtype=np.float64), name=f"class {c}")
    except ValueError as exc:
        # Means are finite vectors of the right length by now: what is left to reject is the covariance.
        raise _invalid(f"cov{c}: {str(exc).removeprefix(f'class {c}: ')}") from exc


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def bayes_report(body: BayesRiskRequest, settings: Settings) -> dict:
    dim, _ = _resolve_dimension(body, settings)
    clf = BayesClassifier(_gaussian(body, 0, dim), _gaussian(body, 1, dim), body.prior1)
    shared = clf.shared_covariance
    if body.method == "closed_form" and not shared:
        raise _invalid("method: the closed form needs both classes to share one covariance (cov0 equal to cov1)")
    monte_carlo = body.method == "monte_carlo" or not shared
    n_samples = body.n_samples
    if monte_carlo:
        budget = settings.bayes_max_sample_entries
        if n_samples is None:
            n_samples = max(MIN_MONTE_CARLO_SAMPLES, min(DEFAULT_MONTE_CARLO_SAMPLES, budget // dim))
        if n_samples * dim > budget:
            raise _invalid(f"n_samples: {n_samples} draws of dimension {dim} are over the limit of {budget} entries "
                           f"(CLASSCOMP_BAYES_MAX_SAMPLE_ENTRIES); ask for at most {max(1, budget // dim)} samples")
    risk = bayes_risk(clf, n_samples or DEFAULT_MONTE_CARLO_SAMPLES, body.seed, body.confidence,
                      "monte_carlo" if monte_carlo else "closed_form")
    report = {
        "dim": dim,
        "rule": clf.rule(),
        "risk": risk.risk,
        "method": risk.method,
        "ci_low": risk.ci_low,
        "ci_high": risk.ci_high,
        "confidence": body.confidence,
        "n_samples": n_samples if monte_carlo else None,
        "mahalanobis": risk.mahalanobis,
    }
    if not _finite(report):
        raise _invalid("the means and covariances are too extreme for a finite rule and risk in float64; rescale them")
    return report


@router.post(
    "/v1/reports/bayes-risk",
    response_model=BayesRiskResponse,
    summary="The Bayes rule and its risk for two Gaussian classes",
    description=(
        "The optimal classifier of paper eq. 7-11 for N(mean0, cov0) against N(mean1, cov1) with P(Y=1) = prior1, "
        "and its risk: in closed form, Phi(-Delta/2) for equal priors, when the covariances are equal; by Monte "
        "Carlo with a Wilson interval otherwise. Means are vectors or scalars; covariances scalar variances, "
        "diagonals or full matrices. Dimensions are capped by CLASSCOMP_BAYES_MAX_DIM (scalar and diagonal) and "
        "CLASSCOMP_BAYES_MAX_FULL_DIM (full matrices)."
    ),
)
def post_bayes_risk(body: BayesRiskRequest, settings: SettingsDep) -> dict:
    # Overflow on extreme parameters is caught as a non-finite result, not logged as a warning per request.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        return bayes_report(body, settings)

