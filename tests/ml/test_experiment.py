"""The experiment grid as plain data: cell order and how many epochs training it emits."""

from __future__ import annotations

import pytest

from ml.config import TrainingConfig
from ml.experiment import ExperimentConfig, markdown_tables
from ml.train import epochs_of


def test_cells_put_each_conditions_resnet_before_its_unet_pretrained():
    grid = ExperimentConfig(models=["unet-pretrained", "vgg", "resnet"], conditions=["noisy", "vanilla"])
    assert grid.cells() == [("vgg", "noisy"), ("resnet", "noisy"), ("unet-pretrained", "noisy"),
                            ("vgg", "vanilla"), ("resnet", "vanilla"), ("unet-pretrained", "vanilla")]
    cfg = grid.run_config("unet-pretrained", "noisy", init_from="r" * 32)
    assert cfg.dataset.condition == "noisy" and cfg.init_from == "r" * 32


def test_total_epochs_counts_the_svm_head():
    training = TrainingConfig(epochs=3, head_epochs=5)
    assert [epochs_of(m, training) for m in ("vgg", "vae-kmeans", "vae-svm")] == [3, 3, 8]
    grid = ExperimentConfig(models=["vgg", "vae-svm"], conditions=["vanilla", "imbalance"], training=training)
    assert grid.total_epochs() == 2 * (3 + 8)


@pytest.mark.parametrize("change", [{"models": ["unet-pretrained"]}, {"conditions": ["foggy"]}, {"models": []}])
def test_invalid_grids_are_refused(change):
    with pytest.raises(ValueError):
        ExperimentConfig(**change)


def test_markdown_tables_mark_missing_cells():
    text = markdown_tables([{"model": "vgg", "condition": "vanilla", "val_accuracy": 0.9951, "train_seconds": 12.34},
                            {"model": "resnet", "condition": "noisy", "val_accuracy": None, "train_seconds": 1.0}])
    assert "| vgg | 99.51 | - |" in text and "| resnet | - | - |" in text and "| vgg | 12.3 | - |" in text
