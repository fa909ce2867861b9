"""The paper's MNIST experiment (tables 1 and 2): every model under every condition.

The grid is plain data; whoever runs it (the worker) trains each cell with `ml.train.train` and
collects one row per cell, from which `markdown_tables` prints the paper's two tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ml.config import CONDITIONS, MODEL_NAMES, PAPER_MODELS, DatasetConfig, RunConfig, TrainingConfig
from ml.train import epochs_of


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

    def cells(self) -> list[tuple[str, str]]:
        """(model, condition) in training order: each condition's resnet before its unet-pretrained."""
        order = sorted(self.models, key=lambda m: m == "unet-pretrained")
        return [(model, condition) for condition in self.conditions for model in order]

    def run_config(self, model: str, condition: str, init_from: str | None = None) -> RunConfig:
        return RunConfig(model=model, dataset=replace(self.dataset, condition=condition),
                         training=self.training, init_from=init_from)

    def total_epochs(self) -> int:
        """How many epoch records training the whole grid emits: the sum of `epochs_of` over cells."""
        return sum(epochs_of(model, self.training) for model, _ in self.cells())


def markdown_tables(rows: list[dict]) -> str:
    """Validation accuracy (%) and training time (s), models down and conditions across, as in
    the paper. Each row holds model, condition, val_accuracy and train_seconds; a vanilla row's
    `noisy_val_accuracy` (trained clean, tested noisy) is shown in brackets in the noisy column,
    where the paper put it."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    cell = {(r["model"], r["condition"]): r for r in rows}
    percent = lambda v: "-" if v is None else f"{100 * v:.2f}"  # noqa: E731

    def accuracy(m: str, c: str) -> str:
        text = percent(cell.get((m, c), {}).get("val_accuracy"))
        tested_noisy = cell.get((m, "vanilla"), {}).get("noisy_val_accuracy")
        return f"{text} ({percent(tested_noisy)})" if c == "noisy" and tested_noisy is not None else text

    def seconds(m: str, c: str) -> str:
        value = cell.get((m, c), {}).get("train_seconds")
        return "-" if value is None else f"{value:.1f}"

    def table(title: str, value) -> str:
        lines = [f"### {title}", "", "| model | " + " | ".join(conditions) + " |",
                 "|---|" + "---:|" * len(conditions)]
        lines += [f"| {m} | " + " | ".join(value(m, c) for c in conditions) + " |" for m in models]
        return "\n".join(lines)

    note = ("\nIn brackets: the model trained on clean (vanilla) images, tested on the noisy validation images.\n"
            if any(r.get("noisy_val_accuracy") is not None for r in rows) else "")
    return (table("Validation accuracy (%)", accuracy) + "\n" + note + "\n"
            + table("Training time (seconds)", seconds) + "\n")
