"""A trained model scored on the validation split of another condition of its own data.

The paper's bracketed Table 1 values are VAEs trained on clean images and tested on noisy ones;
`condition_config` gives the data config of that test (the model's own classes, size and seed,
another condition), and `evaluate` the accuracy and confusion matrix there.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ml.config import DatasetConfig
from ml.data import Dataset
from ml.models import predict
from ml.train import EVAL_BATCH


def condition_config(trained_on: DatasetConfig, condition: str) -> DatasetConfig:
    """The dataset a model trained on `trained_on` is tested on under `condition`.

    Only the validation split matters, and only `noisy` changes it (imbalance resamples training
    images), so every other setting stays the model's own: a noisy test set is the same images,
    corrupted with the same seed, as a model trained under noisy was scored on.
    """
    return replace(trained_on, condition=condition)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> dict:
    """Accuracy and confusion matrix (rows: true class index, columns: predicted) on `data`'s
    validation split, on the model's device."""
    device = next(model.parameters()).device
    k = len(data.classes)
    confusion = torch.zeros(k, k, dtype=torch.long, device=device)
    for x, y in zip(data.x_val.split(EVAL_BATCH), data.y_val.split(EVAL_BATCH)):
        predicted = predict(model, x.to(device))["class_index"]
        confusion += torch.bincount(y.to(device) * k + predicted, minlength=k**2).view_as(confusion)
    n = int(confusion.sum())
    return {
        "accuracy": confusion.diag().sum().item() / n,
        "confusion_matrix": confusion.tolist(),
        "n_images": n,
        "classes": list(data.classes),
        "class_names": list(data.class_names),
    }
