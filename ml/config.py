"""Run configuration as plain data.

One `RunConfig` describes a training run completely: it is what the CLI builds from flags, what
the REST API accepts as a job body (pydantic validates these dataclasses directly, so there is
one schema, not two), and what `config.json` stores next to the weights so a model can be
rebuilt and its inputs preprocessed exactly as in training.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

ModelName = Literal[
    "vgg", "resnet", "unet", "unet-pretrained", "vae-svm", "vae-kmeans", "conv-vae-svm", "conv-vae-kmeans"
]
DatasetName = Literal["mnist", "fashion-mnist", "gaussian"]
DATASET_NAMES: tuple[str, ...] = DatasetName.__args__
Condition = Literal["vanilla", "imbalance", "noisy"]
CONDITIONS: tuple[str, ...] = Condition.__args__
ImbalanceProfile = Literal["one", "geometric"]
IMBALANCE_PROFILES: tuple[str, ...] = ImbalanceProfile.__args__
PresetName = Literal["paper", "fast", "paper-error-analysis"]

MODEL_NAMES: tuple[str, ...] = ModelName.__args__
PAPER_MODELS = MODEL_NAMES[:6]  # the paper's; the convolutional VAEs go beyond it
SVM_MODELS = ("vae-svm", "conv-vae-svm")  # trained in two phases: the VAE, then the hinge head
KMEANS_MODELS = ("vae-kmeans", "conv-vae-kmeans")
# torch's generators take seeds below 2**64; this bound leaves room for the offsets runs add to a seed
# (seed + 1 for the noisy validation images, seed + repeat in the error analysis).
SEED_LIMIT = 2**63


def _number(x: float) -> str:
    return str(int(x)) if isinstance(x, int) or (x.is_integer() and abs(x) < 1e6) else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """The bounds of a numeric field, written once beside it: `check_fields` enforces them, and the
    API's JSON Schema shows them (pydantic calls `__get_pydantic_json_schema__` on annotations; nothing
    here imports it)."""

    low: float
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        low = _number(self.low)
        if self.high is None:
            return f"{'above' if self.open_low else 'at least'} {low}"
        high = _number(self.high)
        if self.open_low or self.open_high:
            return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        return f"between {low} and {high}"

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = handler(core_schema)
        schema["exclusiveMinimum" if self.open_low else "minimum"] = self.low
        if self.high is not None:
            schema["exclusiveMaximum" if self.open_high else "maximum"] = self.high
        return schema


Seed = Annotated[int, Range(0, SEED_LIMIT, open_high=True)]
Fraction = Annotated[float, Range(0.0, 1.0, open_low=True, open_high=True)]


def _range_of(hint: Any) -> Range | None:
    """The Range annotating a field's type, also inside `X | None`."""
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Range)), None)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(filter(None, map(_range_of, typing.get_args(hint))), None)
    return None


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, list) and any(map(_non_finite, value))


def check_fields(config: Any) -> None:
    """Rules every config with numbers shares: each field within its Range, and no NaN or infinity
    anywhere (Python's JSON parser reads `NaN`, `Infinity` and `1e400` as floats, and every comparison
    with NaN is false, so range checks alone let it through)."""
    hints = typing.get_type_hints(type(config), include_extras=True)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if _non_finite(value):
            raise ValueError(f"{f.name} must be finite: NaN and infinity are not accepted")
        bounds = _range_of(hints[f.name])
        if bounds is not None and value is not None and value not in bounds:
            raise ValueError(f"{f.name} must be {bounds}, got {value}")


DATASET_TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST", "gaussian": "Gaussian images"}
# Each dataset's class names by label: the images' own labels 0-9 (the Gaussian images have two).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                      "ankle boot"),
    "gaussian": ("0", "1"),
}


@dataclass
class DatasetConfig:
    """Which images, at which size, under which of the paper's conditions.

    `classes` are the labels kept, 2 to 10 of the dataset's (MNIST digits, Fashion-MNIST articles by
    label 0-9); class index i stands for label classes[i]. The Gaussian images have two, [0, 1].

    `imbalance` (under the imbalance condition) and `noisy_imbalance` (under noisy; None: no
    resampling) set the training split's class sizes. For two classes each is the share of
    `imbalance_class` (a label; by default the last of `classes`), as in the paper: 0.9 of ones.
    For K classes the share f becomes a ratio, r = f / (1 - f) (0.9: 9 to 1), kept between the named
    class and the smallest one; `imbalance_profile` says how the others fall in between:
      one        the named class is r times the size of each other class, which are equal;
      geometric  sizes fall by r**(1/(K-1)) per class, from the named class on in the order of
                 `classes` (wrapping round), so the last is r times smaller (a long-tailed split).
    With two classes the profiles agree. Resampling keeps as many training images as it can.

    `mean` and `std` describe the synthetic Gaussian classes: one entry per class, each a scalar
    (the same on every pixel) or a flat list of image_size**2 per-pixel values. The paper's case
    is mean -1 / +1 and std 3 at 32x32.
    """

    name: DatasetName = "mnist"
    classes: list[Annotated[int, Range(0, 9)]] = field(default_factory=lambda: [0, 1])
    image_size: Annotated[int, Range(8, 256)] = 64
    condition: Condition = "vanilla"
    imbalance: Fraction = 0.9
    noisy_imbalance: Fraction | None = 0.6
    imbalance_class: Annotated[int, Range(0, 9)] | None = None
    imbalance_profile: ImbalanceProfile = "one"
    mean: list[float | list[float]] = field(default_factory=lambda: [-1.0, 1.0])
    std: list[float | list[float]] = field(default_factory=lambda: [3.0, 3.0])
    n_train: Annotated[int, Range(2)] = 1000
    n_val: Annotated[int, Range(2)] = 1000
    seed: Seed = 0

    def __post_init__(self) -> None:
        check_fields(self)
        known = range(len(CLASS_NAMES[self.name]))
        if not 2 <= len(self.classes) <= len(known) or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be 2 to {len(known)} different labels of {self.name}")
        if not all(c in known for c in self.classes):
            raise ValueError(f"{self.name} has the labels {known.start} to {known.stop - 1}, got classes {self.classes}")
        if self.name == "gaussian" and self.classes != [0, 1]:
            raise ValueError("the gaussian images have two classes, [0, 1], set apart by mean and std")
        if self.imbalance_class is not None and self.imbalance_class not in self.classes:
            raise ValueError(f"imbalance_class must be one of classes {self.classes}, got {self.imbalance_class}")
        n_pixels = self.image_size**2
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 2:
                raise ValueError(f"{name} needs one entry per class (two)")
            for v in values:
                if isinstance(v, list) and len(v) != n_pixels:
                    raise ValueError(f"a per-pixel {name} needs image_size**2 = {n_pixels} values, got {len(v)}")
        for v in self.std:
            if min(v if isinstance(v, list) else [v]) <= 0:
                raise ValueError("std must be positive")

    @property
    def class_names(self) -> list[str]:
        return [CLASS_NAMES[self.name][c] for c in self.classes]

    @property
    def is_papers(self) -> bool:
        """Whether these are the paper's images, MNIST 0 vs 1, whose numbers it reports."""
        return self.name == "mnist" and self.classes == [0, 1]

    @property
    def description(self) -> str:
        """The images in words: "MNIST 0 vs 1", "Fashion-MNIST, 10 classes", "Gaussian images"."""
        title = DATASET_TITLES[self.name]
        if self.name == "gaussian":
            return title
        if len(self.classes) == 2:
            return f"{title} {self.class_names[0]} vs {self.class_names[1]}"
        return f"{title}, {len(self.classes)} classes" + ("" if len(self.classes) == 10 else f" ({', '.join(self.class_names)})")

    def train_weights(self) -> list[float] | None:
        """The relative class sizes (by class index) the training split is resampled to under this
        condition, or None for none; for two classes exactly [1 - f, f] with f the share of class 1."""
        share = {"imbalance": self.imbalance, "noisy": self.noisy_imbalance}.get(self.condition)
        if share is None:
            return None
        k = len(self.classes)
        named = k - 1 if self.imbalance_class is None else self.classes.index(self.imbalance_class)
        if self.imbalance_profile == "one":
            return [share if i == named else 1 - share for i in range(k)]
        return [share * ((1 - share) / share) ** (((i - named) % k) / (k - 1)) for i in range(k)]


# The authors' settings (their notebooks): Adam 1e-3, batch 16, 10 epochs, the VAE's gradient norm
# clipped at 1.0 and the SVM head trained for as many epochs as the VAE; the error analysis trained
# 5 epochs at batch 4. A setting left unset in a TrainingConfig comes from its preset.
#
# `fast` is ours, for a GPU: batch 512 fills one (batch 16 leaves it idle between kernel launches) and
# takes 32 times fewer optimiser steps, so the learning rate follows the square-root rule for Adam
# (Malladi et al. 2022: lr x sqrt(batch ratio), 1e-3 x sqrt(32) = 5.7e-3), halved to 3e-3 because
# nothing warms it up. The SVM head is a linear map on 8 numbers: its 50 epochs cost less than one
# VAE epoch and make up for the steps the larger batch takes away. `compile` applies on CUDA only.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"epochs": 10, "batch_size": 16, "learning_rate": 1e-3, "vae_grad_clip": 1.0},
    "fast": {"epochs": 10, "batch_size": 512, "learning_rate": 3e-3, "vae_grad_clip": 1.0, "head_epochs": 50,
             "compile": True},
    "paper-error-analysis": {"epochs": 5, "batch_size": 4, "learning_rate": 1e-3, "vae_grad_clip": 1.0},
}


@dataclass
class TrainingConfig:
    """Optimisation and model-size settings.

    `epochs`, `batch_size`, `learning_rate`, `vae_grad_clip` (0: no clipping) and `compile` default to
    the values of `preset`; `head_epochs` (the SVM head's) defaults to the preset's or to `epochs`, as
    the authors had it. Any of them given explicitly overrides the preset. `compile` runs training
    through `torch.compile` on CUDA (the CPU ignores it). `finetune_encoder` lets a unet-pretrained
    train the encoder it starts from, which the authors kept frozen (other models ignore it).
    """

    preset: PresetName = "paper"
    epochs: Annotated[int, Range(1, 1000)] | None = None
    batch_size: Annotated[int, Range(1, 65536)] | None = None
    learning_rate: Annotated[float, Range(0.0, 1.0, open_low=True, open_high=True)] | None = None
    vae_grad_clip: Annotated[float, Range(0.0, 1e6)] | None = None  # 0: no clipping
    head_epochs: Annotated[int, Range(0, 1000)] | None = None
    seed: Seed = 0
    width: Annotated[float, Range(0.01, 4.0)] = 1.0
    latent_dim: Annotated[int, Range(1, 512)] = 8
    beta: Annotated[float, Range(0.0)] = 0.05
    n_clusters: Annotated[int, Range(2, 64)] | None = None  # None: one per class
    finetune_encoder: bool = False
    compile: bool | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.head_epochs is None:
            self.head_epochs = self.epochs
        if self.compile is None:
            self.compile = False
        check_fields(self)


def check_clusters(training: TrainingConfig, dataset: DatasetConfig) -> None:
    """K-means needs a cluster for every class."""
    k = len(dataset.classes)
    if training.n_clusters is not None and training.n_clusters < k:
        raise ValueError(f"n_clusters must be at least the number of classes ({k}), so every class gets a cluster")


@dataclass
class RunConfig:
    """A model to train on a dataset. `init_from` names the resnet whose encoder a
    `unet-pretrained` starts from: an artifact directory for the library, a model id for the API."""

    model: ModelName
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.model == "unet-pretrained" and not self.init_from:
            raise ValueError("init_from is required for unet-pretrained: the resnet to start the encoder from")
        if self.model != "unet-pretrained" and self.init_from:
            raise ValueError("init_from applies only to unet-pretrained")
        if self.model in KMEANS_MODELS:
            check_clusters(self.training, self.dataset)

    @property
    def n_clusters(self) -> int:
        """K-means's clusters: `training.n_clusters`, by default one per class."""
        return self.training.n_clusters or len(self.dataset.classes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from `to_dict` output (config.json); unknown keys are an error, not ignored."""
        data = dict(data)
        dataset = dict(data.pop("dataset", {}))
        if "digits" in dataset:  # config.json written before datasets had more than two classes
            dataset["classes"] = dataset.pop("digits")
        dataset = DatasetConfig(**dataset)
        training = TrainingConfig(**data.pop("training", {}))
        return cls(dataset=dataset, training=training, **data)
