"""A trained model on disk: one directory, written atomically, read without pickle.

    weights.safetensors   every parameter and buffer (K-means centres, SVM head, label map too)
    config.json           the RunConfig, class labels and parameter count: enough to rebuild
                          the network and preprocess an input exactly as in training
    metrics.json          per-epoch history, final metrics, training seconds

The directory is assembled under a temporary name beside its destination and renamed into place,
so a crash never leaves a half-written model where a reader would find it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ml.config import RunConfig
from ml.models import build_model, parameter_count
from ml.train import TrainResult

WEIGHTS, CONFIG, METRICS = "weights.safetensors", "config.json", "metrics.json"


class ArtifactError(ValueError):
    """A model directory that is missing, incomplete or not in our format."""


@dataclass
class LoadedModel:
    model: nn.Module
    config: RunConfig
    classes: list[int]
    metrics: dict


def save(result: TrainResult, cfg: RunConfig, directory: str | Path) -> Path:
    """Write `result` as a model directory at `directory` (which must not exist yet)."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"{directory} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in result.model.state_dict().items()}
        save_file(state, staging / WEIGHTS, metadata={"format": "classcomp", "model": cfg.model})
        config = {"run": cfg.to_dict(), "classes": cfg.dataset.classes, "parameter_count": parameter_count(result.model)}
        metrics = {"history": result.history, "final": result.final, "train_seconds": result.seconds}
        for name, content in ((CONFIG, config), (METRICS, metrics)):
            (staging / name).write_text(json.dumps(content, indent=2))
        for path in staging.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def load_state(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file; anything else is refused with an ArtifactError."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"no weights file at {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a safetensors file; only safetensors weights are loaded ({exc})") from exc


def read_json(directory: str | Path, name: str) -> dict:
    path = Path(directory) / name
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc


def load(directory: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a saved model in eval mode; its predictions equal those it made before saving."""
    config = read_json(directory, CONFIG)
    cfg = RunConfig.from_dict(config["run"])
    model = build_model(cfg)
    try:
        model.load_state_dict(load_state(directory))
    except RuntimeError as exc:
        raise ArtifactError(f"the weights in {directory} do not fit its config: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(model, cfg, config["classes"], read_json(directory, METRICS))
