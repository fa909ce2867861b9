"""Every request and response body of the HTTP API.

A job request is a union discriminated on `kind`. The train job *is* the library's RunConfig
plus its tag, so the API validates exactly what ml.config validates (field types here, value
rules in the dataclasses' __post_init__) and there is no second schema to keep in step. The other
kinds are built the same way: "error-analysis" is ml's ErrorAnalysisConfig and "experiment" ml's
ExperimentConfig, each plus its tag. A new kind is a class added to `JobRequest` and a handler added
to workers.tasks.HANDLERS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, with_config

from ml.analysis.excess_risk import ErrorAnalysisConfig
from ml.config import RunConfig
from ml.experiment import ExperimentConfig
from service.registry import MODEL_SORT_KEYS, JobStatus
from service.storage import MODEL_ID


def _not_an_id(name: str) -> str:
    if MODEL_ID.fullmatch(name):
        raise ValueError("a name cannot look like a model id (32 hex digits): refs would be ambiguous")
    return name


# No `/` or `@`, which separate a name from its version or alias in a model ref.
ModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", examples=["vgg-mnist-0v1-vanilla"]),
                      AfterValidator(_not_an_id)]
AliasName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$", examples=["champion"])]


@with_config(ConfigDict(extra="forbid"))  # also applies to the nested DatasetConfig and TrainingConfig
@dataclass
class TrainJob(RunConfig):
    """Train one model. `init_from` names a registered resnet (for unet-pretrained): its id, `name/version`,
    `name@alias` or name; the job records the id it named when submitted."""

    kind: Literal["train"] = dataclasses.field(kw_only=True)  # keyword-only: required after RunConfig's defaults
    name: ModelName | None = Field(
        default=None, kw_only=True,
        description="the registered name the model becomes the next version of; by default "
        "architecture-dataset-classes-condition, e.g. vgg-mnist-0v1-vanilla")

    def run_config(self) -> RunConfig:
        return RunConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(RunConfig)})


@with_config(ConfigDict(extra="forbid"))
@dataclass
class ErrorAnalysisJob(ErrorAnalysisConfig):
    """The excess-risk decomposition (paper figure 10): per model, estimation and approximation error
    against parameter count, on synthetic Gaussian images whose Bayes rule is known."""

    kind: Literal["error-analysis"] = dataclasses.field(kw_only=True)

    def analysis_config(self) -> ErrorAnalysisConfig:
        return ErrorAnalysisConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ErrorAnalysisConfig)})


@with_config(ConfigDict(extra="forbid"))
@dataclass
class ExperimentJob(ExperimentConfig):
    """Every model under every condition (paper tables 1 and 2); each cell is trained and registered."""

    kind: Literal["experiment"] = dataclasses.field(kw_only=True)

    def experiment_config(self) -> ExperimentConfig:
        return ExperimentConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ExperimentConfig)})


JobRequest = Annotated[Union[TrainJob, ErrorAnalysisJob, ExperimentJob], Field(discriminator="kind")]
job_request_adapter: TypeAdapter[TrainJob | ErrorAnalysisJob | ExperimentJob] = TypeAdapter(JobRequest)

JOB_EXAMPLES = {
    "vgg": {
        "summary": "a small VGG on MNIST 0 vs 1",
        "value": {
            "kind": "train",
            "model": "vgg",
            "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32},
            "training": {"epochs": 2, "width": 0.125},
        },
    },
    "fashion-mnist": {
        "summary": "beyond the paper: a small ResNet on all ten Fashion-MNIST classes",
        "value": {
            "kind": "train",
            "model": "resnet",
            "dataset": {"name": "fashion-mnist", "classes": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "image_size": 32},
            "training": {"preset": "fast", "epochs": 3, "batch_size": 128, "width": 0.125},
        },
    },
    "vae-kmeans": {
        "summary": "the paper's VAE + K-means, noisy condition",
        "value": {
            "kind": "train",
            "model": "vae-kmeans",
            "dataset": {"name": "mnist", "classes": [3, 8], "image_size": 64, "condition": "noisy"},
            "training": {"epochs": 10},
        },
    },
    "conv-vae-kmeans": {
        "summary": "beyond the paper: a convolutional, denoising VAE + K-means on the noisy condition",
        "value": {
            "kind": "train",
            "model": "conv-vae-kmeans",
            "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32, "condition": "noisy"},
            "training": {"epochs": 4, "batch_size": 32, "width": 0.25},
        },
    },
    # An experiment, so that the example runs as it is: a train job's init_from must be the id of a resnet
    # registered on this deployment, which no example can know.
    "unet-pretrained": {
        "summary": "a UNet whose encoder starts from the resnet trained just before it",
        "description": "To start from a resnet already registered, submit instead `kind: train` with "
        "`model: unet-pretrained`, `init_from` set to that resnet's model id and `training.width` equal to its width.",
        "value": {
            "kind": "experiment",
            "models": ["resnet", "unet-pretrained"],
            "conditions": ["vanilla"],
            "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32},
            "training": {"epochs": 2, "width": 0.125},
        },
    },
    "error-analysis": {
        "summary": "the paper's excess-risk decomposition (figure 10)",
        "value": {
            "kind": "error-analysis",
            "models": ["vgg", "resnet", "unet", "vae-svm", "vae-kmeans"],
            "dataset": {"name": "gaussian", "image_size": 32, "mean": [-1.0, 1.0], "std": [3.0, 3.0]},
            "n_train": 10,
            "n_eval": 1000,
            "repeats": 10,
        },
    },
    "experiment": {
        "summary": "the paper's tables 1 and 2 at a CPU-sized width",
        "value": {
            "kind": "experiment",
            "models": ["vgg", "resnet", "unet", "unet-pretrained", "vae-svm", "vae-kmeans"],
            "conditions": ["vanilla", "imbalance", "noisy"],
            "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32},
            "training": {"epochs": 2, "width": 0.125},
        },
    },
}


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class Progress(BaseModel):
    """Units of work done and in all: epochs for `train`; epochs over the whole grid for `experiment`;
    (model, repeat) pairs, each two trainings, for `error-analysis`."""

    epoch: int
    epochs: int | None = Field(description="known once the first unit is done")


class CellOut(BaseModel):
    """One (model, condition) training of an experiment, run by its own task on any worker."""

    model_config = ConfigDict(from_attributes=True)

    position: int = Field(description="its place in the grid, from 1 (the `cell` of its metrics records)")
    model: str
    condition: str
    after: int | None = Field(description="the cell whose model it starts from (a unet-pretrained's resnet)")
    status: JobStatus
    epoch: int = Field(description="epoch records made so far")
    epochs: int
    worker: str | None = Field(description="the worker that trained it (its Celery hostname)")
    model_id: str | None
    error: str | None
    error_code: str | None = Field(description="as the job's; dependency_failed when the cell it starts from failed")
    started_at: datetime | None
    finished_at: datetime | None


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: JobStatus
    progress: Progress
    metrics: list[dict[str, Any]] = Field(description="one record per finished epoch")
    error: str | None
    error_code: str | None = Field(
        description="why a failed job failed: the user error's code (e.g. data_missing), internal_error, "
        "worker_lost or time_limit; for an experiment, its failed cells' code, or cells_failed when they differ")
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    model_ids: list[str]
    model_refs: list[str] = Field(description="the same models as `name/version`, in the same order")
    request: dict[str, Any]
    cells: list[CellOut] = Field(description="an experiment's cells, in grid order; empty for other jobs")


class ArtifactStatus(BaseModel):
    """What this API process last found in a model's weights file (see service/integrity.py)."""

    status: Literal["ok", "corrupt", "missing", "unverified", "unchecked"] = Field(
        description="ok: the weights hash to the recorded SHA-256; corrupt: they do not, or cannot be read "
        "(409 artifact_corrupt); missing: the directory or weights file is gone (410 artifact_missing); "
        "unverified: registered before checksums were recorded, so they cannot be checked; unchecked: not "
        "hashed since the API started or since the file last changed (listings never hash; GET of the model does)")
    detail: str
    checked_at: datetime | None = Field(description="when that was found; null if this API process has not "
                                       "read the file as it is now")


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str | None
    name: str = Field(description="the registered name this model is a version of")
    version: int = Field(description="its version of that name: `name/version` names it")
    aliases: list[str] = Field(description="the aliases of its name that point at it: `name@alias` names it")
    model: str = Field(validation_alias="architecture", description="the architecture")
    config: dict[str, Any] = Field(description="the RunConfig it was trained with")
    classes: list[int] = Field(description="the label each class index stands for")
    class_names: list[str] = Field(description="the name of each class, in the order of `classes`")
    parameter_count: int
    train_seconds: float
    final_metrics: dict[str, Any]
    created_at: datetime
    weights_sha256: str | None = Field(description="SHA-256 (hex) of the weights file when the model was registered; "
                                       "null for models registered before checksums were recorded")
    artifact: ArtifactStatus

    @classmethod
    def of(cls, model: Any, artifact: ArtifactStatus) -> ModelOut:
        """A registry row with the status of its files, which the row does not hold."""
        names = [field.validation_alias or name for name, field in cls.model_fields.items()
                 if name not in ("artifact", "class_names")]
        class_names = RunConfig.from_dict(model.config).dataset.class_names
        return cls.model_validate({**{name: getattr(model, name) for name in names}, "class_names": class_names,
                                   "artifact": artifact})


class RegisteredModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    created_at: datetime
    versions: list[int] = Field(description="the versions registered and not deleted, oldest first")
    latest_version: int | None = Field(description="what `name` alone and `name@latest` name; null when every "
                                       "version was deleted")
    aliases: dict[str, int] = Field(description="each alias and the version it points at")


class AliasRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="the version of the name the alias is to point at")


ModelSort = Literal[*[order for key in MODEL_SORT_KEYS for order in (key, f"-{key}")]]


class ModelMetrics(BaseModel):
    model_id: str
    epochs: list[int]
    phases: list[str]
    series: dict[str, list[float | None]] = Field(description="each metric per epoch, null where its phase has none")


def _rectangular(image: list[list[float]]) -> list[list[float]]:
    if len({len(row) for row in image}) != 1:
        raise ValueError("every row of an image must have the same length")
    return image


# Strict: JSON true/false and strings such as "0.5" are not pixel values (ints still are); finite, since
# NaN and Infinity, which the JSON parser accepts, are not either.
Pixel = Annotated[float, Field(ge=0.0, le=1.0, strict=True, allow_inf_nan=False)]
Image2D = Annotated[list[Annotated[list[Pixel], Field(min_length=1)]], Field(min_length=1), AfterValidator(_rectangular)]


class PixelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pixels: list[Image2D] = Field(
        min_length=1, description="grayscale images as 2-D arrays of numbers in [0, 1], any size within the pixel "
        "limits (CLASSCOMP_MAX_IMAGE_PIXELS per image, CLASSCOMP_MAX_REQUEST_PIXELS in all)")


class Prediction(BaseModel):
    label: int = Field(description="the dataset's own label (0-9) of the predicted class")
    name: str = Field(description="that class's name: the digit for MNIST, the article for Fashion-MNIST "
                      "(\"ankle boot\")")
    class_index: int
    probabilities: dict[str, float] = Field(description="keyed by label")
    cluster: int | None = Field(None, description="VAE + K-means: the nearest cluster")
    distance: float | None = Field(None, description="VAE + K-means: distance to that cluster's centre")
    margin: float | None = Field(None, description="two-class VAE + SVM: signed margin, positive for the second class")


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[Prediction]


class ReconstructResponse(BaseModel):
    model_id: str
    image_size: int
    reconstructions: list[list[list[float]]] = Field(description="at the model's image size, values in [0, 1]")


class Embedding(BaseModel):
    mean: list[float]
    logvar: list[float]


class EmbedResponse(BaseModel):
    model_id: str
    embeddings: list[Embedding]


# Image endpoints read their body themselves (multipart or JSON), so their OpenAPI request body is
# declared here rather than derived from a parameter.
IMAGES_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                             "minItems": 1}},
                    "required": ["files"],
                },
                "encoding": {"files": {"contentType": "image/png, image/jpeg"}},
            },
            "application/json": {
                "schema": PixelsRequest.model_json_schema(),
                "examples": {
                    "pixels": {
                        "summary": "one 4x4 image",
                        "value": {"pixels": [[[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]]},
                    }
                },
            },
        },
    }
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 409, 413, 415, 422)
}
# Routes that read a model's files: 410 artifact_missing when they are gone (409 covers artifact_corrupt).
MODEL_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 410: {"model": ErrorResponse}}


# Reports (service/api/reports.py) and figures (service/api/figures.py)

# What the paper printed, and what the authors' own code (ClassComp/utils/wasserstein.py, their
# notebook III) gives: per class for their trained VAE (their notebook's output), and class 0 against
# class 1 on MNIST's test 0s and 1s at 64x64, min-max normalised (no model involved, so anyone can
# recompute it: we did, with their function).
WASSERSTEIN_REFERENCES = {
    "paper": {"0": 0.065, "1": 0.0395, "reference": 0.152},
    "authors_code": {"0": 0.0754, "1": 0.0435, "reference": 0.2307},
    "note": (
        "The paper's class 0 vs class 1 figure (0.152) is not what the authors' code computes on the same images "
        "(0.2307, their quantile-sampling estimator of the same sliced W1), nor what ours does (about 0.23 at 64x64); "
        "compare a model's classes with this report's own reference, not with the paper's."
    ),
}


class WassersteinClass(BaseModel):
    label: int = Field(description="the original label (digit) of the class")
    wasserstein: float = Field(description="sliced W1 between the class's validation images and their reconstructions")
    std_error: float = Field(description="Monte-Carlo standard error of that estimate over the projections")
    n_images: int


class WassersteinReference(BaseModel):
    labels: list[int] = Field(description="the two classes compared: the model's first two")
    wasserstein: float = Field(description="sliced W1 between the validation images of the two classes")
    std_error: float


class WassersteinReferences(BaseModel):
    paper: dict[str, float] = Field(description="the figures printed in the paper (section 3.2)")
    authors_code: dict[str, float] = Field(description="what the authors' code gives: per class for their VAE, "
                                           "and class 0 against class 1 on the same images as the paper")
    note: str


class WassersteinReport(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model_id": "3f2c9a7e5b1d4c8f9e0a1b2c3d4e5f60", "projections": 100, "seed": 0, "normalized": True,
        "split": "validation",
        "classes": [{"label": 0, "wasserstein": 0.061, "std_error": 0.004, "n_images": 980},
                    {"label": 1, "wasserstein": 0.041, "std_error": 0.003, "n_images": 1135}],
        "reference": {"labels": [0, 1], "wasserstein": 0.231, "std_error": 0.005},
        "published": WASSERSTEIN_REFERENCES,
    }]})

    model_id: str
    projections: int = Field(description="random directions of the sliced distance")
    seed: int = Field(description="seed of the directions: the same seed gives the same directions")
    normalized: bool = Field(description="whether every image was min-max scaled to [0, 1] first, as in the paper")
    split: Literal["validation"] = Field("validation", description="the split of the model's own dataset config")
    classes: list[WassersteinClass] = Field(description="per class: originals against the VAE's reconstructions "
                                            "(decoded latent means)")
    reference: WassersteinReference = Field(description="class index 0 against class index 1 originals")
    published: WassersteinReferences = Field(description="the paper's figures and what the authors' code gives")


class EvaluationReport(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "model_id": "3f2c9a7e5b1d4c8f9e0a1b2c3d4e5f60", "trained_condition": "vanilla", "condition": "noisy",
        "accuracy": 0.6137, "confusion_matrix": [[812, 168], [650, 485]], "n_images": 2115, "classes": [0, 1],
        "class_names": ["0", "1"],
    }]})

    model_id: str
    trained_condition: str = Field(description="the condition the model was trained under")
    condition: str = Field(description="the condition of the validation images it was tested on")
    accuracy: float
    confusion_matrix: list[list[int]] = Field(description="rows: true class, columns: predicted class, "
                                              "in the order of `classes`")
    n_images: int
    classes: list[int] = Field(description="the label (0-9) of each class index")
    class_names: list[str] = Field(description="the name of each class, in the order of `classes`")


FloatVector = Annotated[list[float], Field(min_length=1)]
# Positive (definite) is the route's check, which names the field: a schema union's errors would not.
Covariance = float | FloatVector | Annotated[list[FloatVector], Field(min_length=1)]


# Scalars alone carry no dimension, and guessing one (1?) would answer a different question than the one
# meant, so the schema states the rule the route enforces: `dim`, or at least one vector or matrix.
_DIMENSION_GIVEN = [{"required": ["dim"], "properties": {"dim": {"type": "integer"}}}] + [
    {"required": [name], "properties": {name: {"type": "array"}}} for name in ("mean0", "mean1", "cov0", "cov1")
]


class BayesRiskRequest(BaseModel):
    # strict: a JSON true is not the number 1 here
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, json_schema_extra={"anyOf": _DIMENSION_GIVEN, "examples": [
        {"mean0": -1, "mean1": 1, "cov0": 9, "cov1": 9, "dim": 1024},
        {"mean0": [0, 0], "mean1": [1, 1], "cov0": [[1, 0.5], [0.5, 1]], "cov1": [2, 0.5], "prior1": 0.3,
         "n_samples": 200000, "seed": 0},
    ]})

    mean0: float | FloatVector = Field(description="mean of class 0: a vector, or a scalar repeated on every coordinate")
    mean1: float | FloatVector = Field(description="mean of class 1: a vector, or a scalar repeated on every coordinate")
    cov0: Covariance = Field(
        description="covariance of class 0: a scalar variance (isotropic), a diagonal, or a full symmetric matrix")
    cov1: Covariance = Field(
        description="covariance of class 1: a scalar variance (isotropic), a diagonal, or a full symmetric matrix")
    dim: int | None = Field(None, ge=1, description="the dimension; required when every mean and covariance is a scalar")
    prior1: float = Field(0.5, gt=0, lt=1, description="P(Y = 1)")
    n_samples: int | None = Field(
        None, ge=100, le=10_000_000,
        description="Monte-Carlo draws when no closed form exists; by default 200000, fewer in high dimension "
        "(n_samples x dimension is capped by CLASSCOMP_BAYES_MAX_SAMPLE_ENTRIES)")
    seed: int | None = Field(0, ge=0, strict=True, description="Monte-Carlo seed; null for a fresh one")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the Monte-Carlo (Wilson) interval")
    method: Literal["auto", "closed_form", "monte_carlo"] = Field(
        "auto", description="auto: the closed form when the covariances are equal, Monte Carlo otherwise")


class BayesRiskResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "dim": 2, "rule": {"kind": "linear", "predict_1_if": "w . x + b >= 0", "w": [1.0, 1.0], "b": -1.0,
                           "priors": [0.5, 0.5]},
        "risk": 0.2398, "method": "closed_form", "ci_low": 0.2398, "ci_high": 0.2398, "confidence": 0.95,
        "n_samples": None, "mahalanobis": 1.4142,
    }]})

    dim: int
    rule: dict[str, Any] = Field(description="the Bayes rule: `linear` (w, b) for a shared covariance, else "
                                 "`quadratic` (eq. 11), with the inequality that predicts class 1")
    risk: float = Field(description="R(h*), the misclassification rate of the Bayes rule")
    method: Literal["closed_form", "monte_carlo"]
    ci_low: float = Field(description="equal to risk for the closed form")
    ci_high: float
    confidence: float
    n_samples: int | None = Field(description="Monte-Carlo draws; null for the closed form")
    mahalanobis: float | None = Field(description="Mahalanobis distance between the means (shared covariance only)")
