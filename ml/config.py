"""Run configuration as plain data.

One `RunConfig` describes a training run completely: it is what the CLI builds from flags, what
the REST API accepts as a job body (pydantic validates these dataclasses directly, so there is
one schema, not two), and what `config.json` stores next to the weights so a model can be
rebuilt and its inputs preprocessed exactly as in training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

ModelName = Literal[
    "vgg", "resnet", "unet", "unet-pretrained", "vae-svm", "vae-kmeans", "conv-vae-svm", "conv-vae-kmeans"
]
DatasetName = Literal["mnist", "gaussian"]
Condition = Literal["vanilla", "imbalance", "noisy"]
CONDITIONS: tuple[str, ...] = Condition.__args__
PresetName = Literal["paper", "paper-error-analysis"]

MODEL_NAMES: tuple[str, ...] = ModelName.__args__
PAPER_MODELS = MODEL_NAMES[:6]  # the paper's; the convolutional VAEs go beyond it
SVM_MODELS = ("vae-svm", "conv-vae-svm")  # trained in two phases: the VAE, then the hinge head


@dataclass
class DatasetConfig:
    """Which images, at which size, under which of the paper's conditions.

    `mean` and `std` describe the synthetic Gaussian classes: one entry per class, each a scalar
    (the same on every pixel) or a flat list of image_size**2 per-pixel values. The paper's case
    is mean -1 / +1 and std 3 at 32x32.
    """

    name: DatasetName = "mnist"
    digits: list[int] = field(default_factory=lambda: [0, 1])
    image_size: int = 64
    condition: Condition = "vanilla"
    imbalance: float = 0.9
    noisy_imbalance: float | None = 0.6
    mean: list[float | list[float]] = field(default_factory=lambda: [-1.0, 1.0])
    std: list[float | list[float]] = field(default_factory=lambda: [3.0, 3.0])
    n_train: int = 1000
    n_val: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.digits) != 2 or len(set(self.digits)) != 2 or not all(0 <= d <= 9 for d in self.digits):
            raise ValueError("digits must be two different digits between 0 and 9")
        if not 8 <= self.image_size <= 256:
            raise ValueError("image_size must be between 8 and 256")
        for name in ("imbalance", "noisy_imbalance"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{name} is the fraction of class 1 and must be strictly between 0 and 1")
        if self.n_train < 2 or self.n_val < 2:
            raise ValueError("n_train and n_val must be at least 2")
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
    def train_imbalance(self) -> float | None:
        """The fraction of class 1 the training split is resampled to under this condition, if any."""
        return {"imbalance": self.imbalance, "noisy": self.noisy_imbalance}.get(self.condition)

    @property
    def classes(self) -> list[int]:
        """The label each class index stands for: the original digits, or 0/1 for synthetic data."""
        return list(self.digits) if self.name == "mnist" else [0, 1]


# The authors' settings (their notebooks): Adam 1e-3, batch 16, 10 epochs, the VAE's gradient norm
# clipped at 1.0 and the SVM head trained for as many epochs as the VAE; the error analysis trained
# 5 epochs at batch 4. A setting left unset in a TrainingConfig comes from its preset.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"epochs": 10, "batch_size": 16, "learning_rate": 1e-3, "vae_grad_clip": 1.0},
    "paper-error-analysis": {"epochs": 5, "batch_size": 4, "learning_rate": 1e-3, "vae_grad_clip": 1.0},
}


@dataclass
class TrainingConfig:
    """Optimisation and model-size settings.

    `epochs`, `batch_size`, `learning_rate` and `vae_grad_clip` (0: no clipping) default to the
    values of `preset`; `head_epochs` (the SVM head's) defaults to `epochs`, as the authors had it.
    Any of them given explicitly overrides the preset. `finetune_encoder` lets a unet-pretrained
    train the encoder it starts from, which the authors kept frozen (other models ignore it).
    """

    preset: PresetName = "paper"
    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    vae_grad_clip: float | None = None
    head_epochs: int | None = None
    seed: int = 0
    width: float = 1.0
    latent_dim: int = 8
    beta: float = 0.05
    n_clusters: int = 2
    finetune_encoder: bool = False

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.head_epochs is None:
            self.head_epochs = self.epochs
        if not 1 <= self.epochs <= 1000:
            raise ValueError("epochs must be between 1 and 1000")
        if not 1 <= self.batch_size <= 65536:
            raise ValueError("batch_size must be between 1 and 65536")
        if not 0.0 < self.learning_rate < 1.0:
            raise ValueError("learning_rate must be in (0, 1)")
        if not 0.0 <= self.vae_grad_clip <= 1e6:
            raise ValueError("vae_grad_clip must be between 0 (no clipping) and 1e6")
        if not 0.01 <= self.width <= 4.0:
            raise ValueError("width must be between 0.01 and 4")
        if not 1 <= self.latent_dim <= 512:
            raise ValueError("latent_dim must be between 1 and 512")
        if self.beta < 0:
            raise ValueError("beta must be non-negative")
        if not 0 <= self.head_epochs <= 1000:
            raise ValueError("head_epochs must be between 0 and 1000")
        if not 2 <= self.n_clusters <= 64:
            raise ValueError("n_clusters must be between 2 and 64")


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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Rebuild from `to_dict` output (config.json); unknown keys are an error, not ignored."""
        data = dict(data)
        dataset = DatasetConfig(**data.pop("dataset", {}))
        training = TrainingConfig(**data.pop("training", {}))
        return cls(dataset=dataset, training=training, **data)
