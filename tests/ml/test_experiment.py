"""The experiment grid as plain data (cell order, how many epochs training it emits), and run here."""

from __future__ import annotations

import json

import pytest

from ml.config import DatasetConfig, TrainingConfig
from ml.experiment import ExperimentConfig, markdown_tables, reproduce
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


def test_a_grid_stopped_by_on_epoch_writes_what_it_trained(tmp_path):
    grid = ExperimentConfig(
        models=["vgg", "vae-svm"], conditions=["vanilla", "noisy"],
        dataset=DatasetConfig(name="gaussian", image_size=32, n_train=64, n_val=64),
        training=TrainingConfig(epochs=1, batch_size=32, head_epochs=2, width=0.03125),
    )
    records = []

    def on_epoch(record: dict) -> bool:
        records.append(record)
        return record["cell"] == 2 and record["cell_epoch"] == 2  # in the middle of vae-svm's head

    report = reproduce(grid, None, tmp_path, preset="quick", device="cpu", draw=False, on_epoch=on_epoch)
    assert [(r["cell"], r["model"], r["epoch"], r["epochs"], r["cell_epoch"]) for r in records] == [
        (1, "vgg", 1, 8, 1), (2, "vae-svm", 2, 8, 1), (2, "vae-svm", 3, 8, 2)]
    assert [(r["model"], r["condition"]) for r in report["rows"]] == [("vgg", "vanilla")]
    assert not report["complete"] and report["cells_planned"] == 4
    assert json.loads((tmp_path / "tables.json").read_text()) == report
    markdown = (tmp_path / "tables.md").read_text()
    assert "1 of 4 cells (stopped early" in markdown and "| vgg | " in markdown and "vae-svm" not in markdown
