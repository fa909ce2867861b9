"""The paper's MNIST experiment (tables 1 and 2): every model under every condition.

The grid is plain data. The worker trains its cells as jobs; `run_grid` trains them here, in one
process, and `reproduce` (what `classcomp reproduce` runs) also writes the two tables beside the
paper's numbers, and figures. Either way one row per cell comes out, from which `markdown_tables`
prints the paper's two tables.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from ml import figures
from ml.artifacts import json_safe
from ml.config import (
    CONDITIONS, KMEANS_MODELS, MODEL_NAMES, PAPER_MODELS, SVM_MODELS, DatasetConfig, RunConfig, TrainingConfig,
    check_clusters,
)
from ml.data import Dataset, load_dataset
from ml.evaluation import condition_config, evaluate
from ml.models import parameter_count
from ml.train import BatchCallback, TrainResult, epochs_of, pick_device, train

# The paper's Table 1 (validation accuracy, %) and Table 2 (training seconds), at 64x64, width 1,
# 10 epochs of batch 16 on the authors' GPU. Their brackets, for the VAEs only: trained on clean
# images, tested on the noisy ones.
PAPER_ACCURACY = {
    "vgg": {"vanilla": 99.91, "imbalance": 96.50, "noisy": 93.62},
    "resnet": {"vanilla": 99.95, "imbalance": 99.90, "noisy": 96.88},
    "unet": {"vanilla": 100.00, "imbalance": 99.90, "noisy": 96.97},
    "unet-pretrained": {"vanilla": 99.95, "imbalance": 99.90, "noisy": 97.26},
    "vae-svm": {"vanilla": 98.16, "imbalance": 97.31, "noisy": 51.06},
    "vae-kmeans": {"vanilla": 99.05, "imbalance": 99.38, "noisy": 50.49},
}
PAPER_TRAINED_CLEAN_TESTED_NOISY = {"vae-svm": 65.90, "vae-kmeans": 61.37}
PAPER_SECONDS = {
    "vgg": {"vanilla": 1000.81, "imbalance": 1026.58, "noisy": 1336.70},
    "resnet": {"vanilla": 1060.90, "imbalance": 1095.60, "noisy": 1416.24},
    "unet": {"vanilla": 1620.32, "imbalance": 1642.55, "noisy": 1961.61},
    "unet-pretrained": {"vanilla": 1459.54, "imbalance": 1460.88, "noisy": 1793.42},
    "vae-svm": {"vanilla": 381.66, "imbalance": 380.04, "noisy": 1265.36},
    "vae-kmeans": {"vanilla": 256.94, "imbalance": 270.36, "noisy": 707.78},
}
TRAINED_CLEAN_NOTE = "In brackets: the model trained on clean (vanilla) images, tested on the noisy validation images."


@dataclass(frozen=True)
class Cell:
    """One cell of a grid as `ExperimentConfig.plan` gives it: its position (from 1, in `cells()` order),
    model and condition, the position of the resnet a unet-pretrained starts from (`after`), and the
    epoch records training it emits."""

    position: int
    model: str
    condition: str
    after: int | None
    epochs: int


@dataclass
class ExperimentConfig:
    models: list[str] = field(default_factory=lambda: list(PAPER_MODELS))
    conditions: list[str] = field(default_factory=lambda: list(CONDITIONS))
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if not self.models or any(m not in MODEL_NAMES for m in self.models):
            raise ValueError(f"models must be a non-empty subset of {', '.join(MODEL_NAMES)}")
        if not self.conditions or any(c not in CONDITIONS for c in self.conditions):
            raise ValueError(f"conditions must be a non-empty subset of {', '.join(CONDITIONS)}")
        if len(set(self.models)) != len(self.models) or len(set(self.conditions)) != len(self.conditions):
            raise ValueError("models and conditions must not repeat")
        if "unet-pretrained" in self.models and "resnet" not in self.models:
            raise ValueError("unet-pretrained starts from the resnet of its condition: include resnet in models")
        if any(m in KMEANS_MODELS for m in self.models):
            check_clusters(self.training, self.dataset)

    def cells(self) -> list[tuple[str, str]]:
        """(model, condition) in training order: each condition's resnet before its unet-pretrained."""
        order = sorted(self.models, key=lambda m: m == "unet-pretrained")
        return [(model, condition) for condition in self.conditions for model in order]

    def run_config(self, model: str, condition: str, init_from: str | None = None) -> RunConfig:
        return RunConfig(model=model, dataset=replace(self.dataset, condition=condition),
                         training=self.training, init_from=init_from)

    def plan(self) -> list[Cell]:
        """The cells in `cells()` order, numbered from 1, each unet-pretrained after its condition's resnet."""
        cells = self.cells()
        resnet = {c: i for i, (m, c) in enumerate(cells, start=1) if m == "resnet"}
        return [Cell(i, m, c, resnet[c] if m == "unet-pretrained" else None, epochs_of(m, self.training))
                for i, (m, c) in enumerate(cells, start=1)]

    def total_epochs(self) -> int:
        """How many epoch records training the whole grid emits: the sum of `epochs_of` over cells."""
        return sum(epochs_of(model, self.training) for model, _ in self.cells())


def _layout(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """Models down and conditions across, in the paper's order, and the row of each cell."""
    models = sorted({r["model"] for r in rows}, key=MODEL_NAMES.index)
    conditions = sorted({r["condition"] for r in rows}, key=CONDITIONS.index)
    return models, conditions, {(r["model"], r["condition"]): r for r in rows}


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def paper_tables(rows: list[dict], paper: bool = True) -> dict:
    """Tables 1 and 2 as data, ours beside the paper's: `values[model][condition]` is {"ours", "paper"}
    (accuracy in % to two decimals, as the paper gives it, or seconds), None where a cell is missing
    and, without `paper` (a grid on other images than the paper's), for every paper value.
    Table 1's noisy column also holds `trained_clean`: {"ours", "paper"}, the bracketed accuracies of
    the model trained on clean images and tested on the noisy ones."""
    models, conditions, cell = _layout(rows)
    paper_accuracy, paper_clean, paper_seconds = (
        (PAPER_ACCURACY, PAPER_TRAINED_CLEAN_TESTED_NOISY, PAPER_SECONDS) if paper else ({}, {}, {}))

    def accuracy(m: str, c: str) -> dict:
        value = {"ours": _percent(cell.get((m, c), {}).get("val_accuracy")), "paper": paper_accuracy.get(m, {}).get(c)}
        if c == "noisy":
            value["trained_clean"] = {"ours": _percent(cell.get((m, "vanilla"), {}).get("noisy_val_accuracy")),
                                      "paper": paper_clean.get(m)}
        return value

    def seconds(m: str, c: str) -> dict:
        return {"ours": cell.get((m, c), {}).get("train_seconds"), "paper": paper_seconds.get(m, {}).get(c)}

    def table(title: str, value: Callable[[str, str], dict]) -> dict:
        return {"title": title, "models": models, "conditions": conditions,
                "values": {m: {c: value(m, c) for c in conditions} for m in models}}

    return {"table_1": table("Validation accuracy (%)", accuracy), "table_2": table("Training time (seconds)", seconds)}


def markdown_tables(rows: list[dict], paper: bool = False) -> str:
    """Validation accuracy (%) and training time (s), models down and conditions across, as in
    the paper. Each row holds model, condition, val_accuracy and train_seconds; a vanilla row's
    `noisy_val_accuracy` (trained clean, tested noisy) is shown in brackets in the noisy column,
    where the paper put it. With `paper`, each condition's column is followed by the paper's."""
    tables = paper_tables(rows, paper)
    conditions = tables["table_1"]["conditions"]
    columns = [(c, which) for c in conditions for which in (("ours", "paper") if paper else ("ours",))]

    def table(name: str, text: Callable[[dict, str], str]) -> str:
        header = [c if which == "ours" else f"{c}: paper" for c, which in columns]
        values = tables[name]["values"]
        lines = [f"### {tables[name]['title']}", "", "| model | " + " | ".join(header) + " |",
                 "|---|" + "---:|" * len(columns)]
        lines += [f"| {m} | " + " | ".join(text(values[m][c], which) for c, which in columns) + " |" for m in values]
        return "\n".join(lines)

    def accuracy_text(value: dict, which: str) -> str:
        text = "-" if value[which] is None else f"{value[which]:.2f}"
        bracket = value.get("trained_clean", {}).get(which)
        return f"{text} ({bracket:.2f})" if bracket is not None else text

    def seconds_text(value: dict, which: str) -> str:
        return "-" if value[which] is None else f"{value[which]:.1f}"

    bracketed = "noisy" in conditions and (paper or any(r.get("noisy_val_accuracy") is not None for r in rows))
    note = f"\n{TRAINED_CLEAN_NOTE}\n" if bracketed else ""
    return table("table_1", accuracy_text) + "\n" + note + "\n" + table("table_2", seconds_text) + "\n"


# `classcomp reproduce`'s presets: image size and training settings of the whole grid. `quick` is
# sized for a CPU: the 18 cells train on 2 cores in minutes (RESULTS.md), and say whether the code
# runs end to end, not what the paper's models reach.
GRID_PRESETS: dict[str, dict] = {
    "paper": {"image_size": 64, "training": {"preset": "paper", "width": 1.0}},
    "fast": {"image_size": 64, "training": {"preset": "fast", "width": 1.0}},
    "quick": {"image_size": 32, "training": {"preset": "fast", "width": 0.03125, "epochs": 2, "batch_size": 128,
                                             "head_epochs": 10}},
}


def preset_grid(name: str, *, models: list[str] | None = None, conditions: list[str] | None = None,
                image_size: int | None = None, seed: int = 0, dataset: DatasetConfig | None = None,
                **training) -> ExperimentConfig:
    """The grid of preset `name` over `models` x `conditions` (default: the paper's six and all three)
    on `dataset` (default: MNIST 0 vs 1); `image_size` and any TrainingConfig field given as a keyword
    (and not None) override the preset's, and `seed` is the dataset's and the training's."""
    preset = GRID_PRESETS[name]
    settings = {**preset["training"], **{k: v for k, v in training.items() if v is not None}}
    return ExperimentConfig(
        models=list(models or PAPER_MODELS), conditions=list(conditions or CONDITIONS),
        dataset=replace(dataset or DatasetConfig(), image_size=image_size or preset["image_size"], seed=seed),
        training=TrainingConfig(seed=seed, **settings),
    )


CellCallback = Callable[[dict, TrainResult, Dataset], None]


def grid_record(record: dict, cell: int, cells: int, model: str, condition: str, epoch: int, epochs: int) -> dict:
    """A cell's epoch record as the grid's: `epoch` / `epochs` count the whole grid, `cell`, `cells`,
    `model`, `condition` name the cell, and `cell_epoch` / `cell_epochs` keep where in it."""
    return {**record, "cell": cell, "cells": cells, "model": model, "condition": condition,
            "cell_epoch": record["epoch"], "cell_epochs": record["epochs"], "epoch": epoch, "epochs": epochs}


def cell_row(grid: ExperimentConfig, model: str, condition: str, result: TrainResult,
             noisy: Callable[[], Dataset]) -> dict:
    """A trained cell's row of the report: model, condition, val_accuracy, train_seconds and
    parameter_count, and for a vanilla cell of a grid with `noisy`, noisy_val_accuracy: the model
    tested on the noisy validation images (`noisy()` loads them), Table 1's brackets."""
    row = {"model": model, "condition": condition, "val_accuracy": result.final.get("val_accuracy"),
           "train_seconds": result.seconds, "parameter_count": parameter_count(result.model)}
    if condition == "vanilla" and "noisy" in grid.conditions:
        row["noisy_val_accuracy"] = evaluate(result.model, noisy())["accuracy"]
    return row


def run_grid(
    grid: ExperimentConfig,
    data_dir: str | Path | None,
    *,
    download: bool = False,
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict], bool | None] | None = None,
    on_batch: BatchCallback | None = None,
    on_cell: CellCallback | None = None,
) -> list[dict]:
    """Train the cells of `grid` here, in `cells()` order, and return one row per cell trained
    (`cell_row`). Each unet-pretrained starts from its condition's resnet, as in a job.
    `on_epoch` gets each epoch's record as a job records it (`grid_record`); if it
    returns True the grid stops at the end of that epoch, and the unfinished cell gives no row.
    `on_cell(row, result, data)` follows each cell, with its trained model and data.
    """
    device = pick_device(str(device) if device else None)
    cells, total = grid.cells(), grid.total_epochs()
    loaded: dict[str, Dataset] = {}

    def dataset(condition: str) -> Dataset:
        if condition not in loaded:
            loaded[condition] = load_dataset(condition_config(grid.dataset, condition), data_dir, download)
        return loaded[condition]

    rows: list[dict] = []
    resnets: dict[str, dict[str, torch.Tensor]] = {}
    done = 0  # epochs of the cells already trained
    for index, (name, condition) in enumerate(cells, start=1):
        # Cells come condition by condition: keep that condition's data, and the noisy validation
        # images the vanilla models are tested on.
        loaded = {c: d for c, d in loaded.items() if c in (condition, "noisy")}
        init_from = f"the {condition} resnet" if name == "unet-pretrained" else None
        cfg = grid.run_config(name, condition, init_from=init_from)

        def cell_epoch(record: dict, index: int = index, name: str = name, condition: str = condition,
                       offset: int = done) -> bool | None:
            return on_epoch(grid_record(record, index, len(cells), name, condition, offset + record["epoch"], total))

        result = train(cfg, dataset(condition), device=device, init_state=resnets.get(condition) if init_from else None,
                       on_epoch=cell_epoch if on_epoch else None, on_batch=on_batch)
        if result.stopped:
            break
        if name == "resnet":
            resnets[condition] = result.model.state_dict()
        done += epochs_of(name, grid.training)
        row = cell_row(grid, name, condition, result, lambda: dataset("noisy"))
        rows.append(row)
        if on_cell:
            on_cell(row, result, dataset(condition))
    return rows


def device_name(device: str | torch.device) -> str:
    """What a measurement ran on: the GPU's name, or the CPU's model and torch's thread count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    return f"CPU: {model or 'unknown'} (torch threads: {torch.get_num_threads()})"


# Per cell: its training curves (figures 1-3), its confusion matrix and, for a VAE, its
# reconstructions (figure 9) and the t-SNE of its latent space with the K-means labels or SVM
# hyperplane (figures 7-8). A figure the model kind lacks is skipped.
CELL_FIGURES = ("training-curves", "confusion-matrix", "reconstructions", "latent-classifiers")


def cell_figures(result: TrainResult, data: Dataset) -> dict[str, bytes]:
    """The CELL_FIGURES that exist for `result`'s model, as PNG bytes by name."""
    pngs = {}
    for name in CELL_FIGURES:
        try:
            pngs[name] = figures.render(name, result.model, data, result.history)
        except figures.FigureNotApplicable:
            continue
    return pngs


def reproduce(
    grid: ExperimentConfig,
    data_dir: str | Path | None,
    out: str | Path,
    *,
    preset: str,
    download: bool = False,
    device: str | torch.device | None = None,
    draw: bool = True,
    on_epoch: Callable[[dict], bool | None] | None = None,
    on_batch: BatchCallback | None = None,
    on_cell: CellCallback | None = None,
) -> dict:
    """Run `grid` (`run_grid`) and write into `out` the paper's Tables 1 and 2 with its numbers beside
    ours, as `tables.json` (what this returns) and `tables.md`, and with `draw`, `figures/`: each cell's
    CELL_FIGURES as CONDITION-MODEL-NAME.png and `accuracy.png`, Table 1 as bars.

    `seconds` is the wall time of it all, `figure_seconds` the part spent drawing; a grid stopped by
    `on_epoch` is written as far as it got (`complete` false, missing cells null).
    """
    out, figures_dir = Path(out), Path(out) / "figures"
    (figures_dir if draw else out).mkdir(parents=True, exist_ok=True)
    device = pick_device(str(device) if device else None)
    drawing = 0.0

    def cell_done(row: dict, result: TrainResult, data: Dataset) -> None:
        nonlocal drawing
        if draw:
            started = time.perf_counter()
            for name, png in cell_figures(result, data).items():
                (figures_dir / f"{row['condition']}-{row['model']}-{name}.png").write_bytes(png)
            drawing += time.perf_counter() - started
        if on_cell:
            on_cell(row, result, data)

    started = time.perf_counter()
    rows = run_grid(grid, data_dir, download=download, device=device, on_epoch=on_epoch, on_batch=on_batch,
                    on_cell=cell_done)
    report = {
        "preset": preset, "device": device_name(device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cells": len(rows), "cells_planned": len(grid.cells()), "complete": len(rows) == len(grid.cells()),
        "grid": dataclasses.asdict(grid), "rows": rows, **paper_tables(rows, paper=grid.dataset.is_papers),
    }
    if draw and rows:
        drawn = time.perf_counter()
        (figures_dir / "accuracy.png").write_bytes(figures.accuracy_bars(report["table_1"]))
        drawing += time.perf_counter() - drawn
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["figure_seconds"] = round(drawing, 1)
    report = json_safe(report)
    (out / "tables.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "tables.md").write_text(report_markdown(report))
    return report


def report_markdown(report: dict) -> str:
    """tables.md: what was run, where and how long, then the two tables beside the paper's."""
    grid, tc, dataset = report["grid"], report["grid"]["training"], DatasetConfig(**report["grid"]["dataset"])
    size = dataset.image_size
    head = f", SVM head {tc['head_epochs']} epochs" if any(m in SVM_MODELS for m in grid["models"]) else ""
    stopped = "" if report["complete"] else " (stopped early: cells not trained are left out or -)"
    return (
        f"# The paper's Tables 1 and 2, preset `{report['preset']}`\n\n"
        f"{dataset.description} at {size}x{size}, width {tc['width']:g}; training preset `{tc['preset']}`: "
        f"epochs {tc['epochs']}, batch {tc['batch_size']}, Adam lr {tc['learning_rate']:g}{head}; seed {tc['seed']}.\n"
        f"{report['device']}; {report['cells']} of {report['cells_planned']} cells{stopped} "
        f"in {report['seconds']:.0f} s (drawing figures: {report['figure_seconds']:.0f} s); {report['date']}.\n\n"
        + ("Beside ours (\"paper\" columns): the paper's Tables 1 and 2, at 64x64, width 1, 10 epochs of batch 16 "
           "on the authors' GPU.\n\n" if dataset.is_papers else "")
        + markdown_tables(report["rows"], paper=dataset.is_papers)
    )
