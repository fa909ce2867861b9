"""A trained model on disk: one directory, written atomically, read without pickle.

    weights.safetensors   every parameter and buffer (K-means centres, SVM head, label map too)
    config.json           the RunConfig, class labels and parameter count: enough to rebuild
                          the network and preprocess an input exactly as in training
    metrics.json          per-epoch history, final metrics, training seconds

The directory is assembled under a temporary name beside its destination and renamed into place,
so a crash never leaves a half-written model where a reader would find it.

Whoever registers a model records `weights_sha256` of its directory; given that checksum, `load`
and `verify` refuse weights that were changed or damaged since (ArtifactCorrupt) and tell a gone
directory or file (ArtifactMissing) from one that is there but unreadable.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as deserialize
from safetensors.torch import save_file
from torch import Tensor, nn

from ml.config import RunConfig
from ml.models import build_model, parameter_count
from ml.train import TrainResult

WEIGHTS, CONFIG, METRICS = "weights.safetensors", "config.json", "metrics.json"


def json_safe(value: Any) -> Any:
    """NaN and infinity (a diverged run) as null: JSON files, columns and responses reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


class ArtifactError(ValueError):
    """A model directory that is missing, incomplete or not in our format."""


class ArtifactMissing(ArtifactError):
    """The model directory, or a file it must hold, is not there."""


class ArtifactCorrupt(ArtifactError):
    """The files are there but not as they were saved: weights that do not match their checksum, or
    weights or config that cannot be read."""


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
            (staging / name).write_text(json.dumps(json_safe(content), indent=2, allow_nan=False))
        for path in staging.iterdir():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _weights_file(path: str | Path) -> Path:
    path = Path(path)
    return path / WEIGHTS if path.is_dir() else path


def _check_sha256(path: Path, actual: str, expected: str) -> None:
    if actual != expected:
        raise ArtifactCorrupt(f"{path} was changed or damaged after it was saved: its SHA-256 is {actual}, "
                              f"not the {expected} recorded for it")


def weights_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of a weights file or of a model directory's, read in chunks."""
    path = _weights_file(path)
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ArtifactMissing(f"no weights file at {path}") from exc
    except OSError as exc:
        raise ArtifactCorrupt(f"cannot read {path}: {exc}") from exc


def verify(path: str | Path, sha256: str) -> None:
    """Raise ArtifactMissing or ArtifactCorrupt unless the weights (a file or a model directory's) hash to `sha256`."""
    _check_sha256(_weights_file(path), weights_sha256(path), sha256)


def load_state(path: str | Path, sha256: str | None = None) -> dict[str, Tensor]:
    """The tensors of a safetensors file (or a model directory's), checked against `sha256` when given;
    anything else is refused with an ArtifactError."""
    path = _weights_file(path)
    # Read once, so the bytes deserialised are the bytes hashed even if the file changes meanwhile.
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ArtifactMissing(f"no weights file at {path}") from exc
    except OSError as exc:
        raise ArtifactCorrupt(f"cannot read {path}: {exc}") from exc
    if sha256 is not None:
        _check_sha256(path, hashlib.sha256(data).hexdigest(), sha256)
    try:
        return deserialize(data)
    except (SafetensorError, ValueError) as exc:
        raise ArtifactCorrupt(f"{path} is not a safetensors file; only safetensors weights are loaded ({exc})") from exc


def read_json(directory: str | Path, name: str) -> dict:
    path = Path(directory) / name
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ArtifactMissing(f"cannot read {path}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactCorrupt(f"cannot read {path}: {exc}") from exc


def load(directory: str | Path, device: str | torch.device = "cpu", sha256: str | None = None) -> LoadedModel:
    """Rebuild a saved model in eval mode; its predictions equal those it made before saving.

    With `sha256` (the checksum recorded at registration), weights that differ from those saved are refused.
    """
    config = read_json(directory, CONFIG)
    try:
        cfg = RunConfig.from_dict(config["run"])
        classes = config["classes"]
        model = build_model(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactCorrupt(f"{Path(directory) / CONFIG} does not describe a model: {exc!r}") from exc
    try:
        model.load_state_dict(load_state(directory, sha256))
    except RuntimeError as exc:
        raise ArtifactCorrupt(f"the weights in {directory} do not fit its config: {exc}") from exc
    model.to(device).eval()
    return LoadedModel(model, cfg, classes, read_json(directory, METRICS))
