"""One prepared device run: how fast our training loop is per model and batch size, the `fast` grid end
to end, and the same models in a loop written the authors' way, so that the speed-up is a ratio
measured in one run. On one H100/H200 it stays under 8 minutes (`--budget`):

    PYTHONPATH=. python benchmarks/gpu.py --data-dir .mnist --out $OUT

It needs torch, torchvision, scikit-learn, matplotlib and safetensors, nothing of the service. `--tiny`
shrinks everything (32x32, width 0.125, a few steps, the `quick` grid) to run on a CPU in minutes:

    PYTHONPATH=. .venv/bin/python benchmarks/gpu.py --data-dir ../shared/data --out /tmp/gpu --tiny

Three parts, in order; each ends at its share of the budget (PARTS): a measurement that would start
later is skipped, and the grid stops at the end of the epoch that crosses it. Whatever was measured is
printed and written either way, to OUT/gpu.json and OUT/summary.txt.

1. epochs: seconds per epoch of our loop (`ml.train.train`: data resident on the device, the noisy
   corruption batched there, bf16 on CUDA), per model at batch 16, 128 and 512, clean and noisy, with
   the peak GPU memory. After warm-up steps (cuDNN's autotuning, the allocator) a bounded number of
   steps is timed and extrapolated to an epoch of the condition's training images. For a VAE model it
   is the VAE's epoch: the SVM head and K-means work on 8-d latents, and the grid's times include
   them. VGG at batch 512 is also timed through torch.compile, as the `fast` preset trains on CUDA.
2. authors: the paper's six models in a loop written the way the authors' code (Stepleo/
   ML_Model_Comparison, ClassComp/) trains them: torchvision's MNIST through a DataLoader at batch 16
   in one process, per-sample PIL Resize, ToTensor, Normalize and, noisy, their Compose of
   transforms and N(0, 1) noise, float32, Adam, and host syncs every step (loss, accuracy, each
   parameter's gradient norm). Timed and extrapolated the same way; ratios to our loop at the same
   batch and at the `fast` preset's.
3. grid: `classcomp reproduce --preset fast` through the same function, `ml.experiment.reproduce`
   (without figures): wall time and Tables 1 and 2 beside the paper's, in OUT/grid/.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ml.config import PAPER_MODELS, PRESETS, DatasetConfig, RunConfig, TrainingConfig
from ml.data import Dataset, authors_transforms, load_dataset
from ml.experiment import ExperimentConfig, device_name, markdown_tables, preset_grid, reproduce
from ml.models import VAEKMeans, VAESVM, build_model
from ml.train import cross_entropy_step, load_encoder, pick_device, train, vae_step

AUTHORS_BATCH = PRESETS["paper"]["batch_size"]
FAST_BATCH = PRESETS["fast"]["batch_size"]
BATCHES = (AUTHORS_BATCH, FAST_BATCH, 128)  # in this order, should time run out
CONDITIONS = ("vanilla", "noisy")
MODELS = (*PAPER_MODELS, "conv-vae-kmeans")
VAL_IMAGES = 256  # scored after each timed epoch, outside the timed steps
# Each part ends at this fraction of --budget; a part that ends early leaves its time to the next.
PARTS = {"epochs": 0.3, "authors": 0.5, "grid": 1.0}


@dataclass(frozen=True)
class Setup:
    image_size: int
    width: float
    warmup: int  # steps before the timed ones
    steps: int  # steps timed, at most
    grid: str  # the reproduce preset of part 3
    grid_width: float | None = None  # overrides the preset's


FULL = Setup(image_size=64, width=1.0, warmup=10, steps=50, grid="fast")
TINY = Setup(image_size=32, width=0.125, warmup=1, steps=3, grid="quick", grid_width=0.03125)


class Clock:
    """The run's budget: each part ends at its share of it."""

    def __init__(self, budget: float):
        self.started, self.budget = time.monotonic(), budget

    def left(self, part: str) -> float:
        return self.started + PARTS[part] * self.budget - time.monotonic()


def run_config(model: str, condition: str, setup: Setup, preset: str = "fast", **training) -> RunConfig:
    return RunConfig(model=model, dataset=DatasetConfig(image_size=setup.image_size, condition=condition),
                     training=TrainingConfig(preset=preset, width=setup.width, **training),
                     init_from="an untrained resnet" if model == "unet-pretrained" else None)


def untrained_resnet(setup: Setup) -> dict[str, torch.Tensor]:
    """A unet-pretrained's encoder for timing: trained or not, it costs the same."""
    return build_model(run_config("resnet", "vanilla", setup)).state_dict()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def time_our_epoch(model: str, data: Dataset, condition: str, batch: int, setup: Setup, device: torch.device,
                   compile: bool = False) -> dict:
    """Seconds per epoch of `ml.train.train`: steps timed after warm-up, on the first images of `data`."""
    n = len(data.x_train)
    steps = min(setup.warmup + setup.steps, n // batch)  # whole batches only: a last short one is another shape
    warmup = min(setup.warmup, steps - 1)
    subset = replace(data, x_train=data.x_train[: steps * batch], y_train=data.y_train[: steps * batch],
                     x_val=data.x_val[:VAL_IMAGES], y_val=data.y_val[:VAL_IMAGES])
    cfg = run_config(model, condition, setup, epochs=1, batch_size=batch, head_epochs=0, compile=compile)
    marks: dict[int, float] = {}

    def on_batch(step: int, _steps: int) -> None:
        if step in (warmup, steps):  # only here: a sync every step would serialise the host and the device
            synchronize(device)
            marks[step] = time.perf_counter()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    train(cfg, subset, device=device, init_state=untrained_resnet(setup) if cfg.init_from else None, on_batch=on_batch)
    per_step = (marks[steps] - marks[warmup]) / (steps - warmup)
    return {"model": model, "condition": condition, "batch_size": batch, "compiled": compile and device.type == "cuda",
            "seconds_per_epoch": per_step * math.ceil(n / batch), "images": n, "timed_steps": steps - warmup,
            "warmup_seconds": marks[warmup] - started, "peak_memory_bytes": peak_memory(device)}


def authors_loader(data_dir: Path, condition: str, setup: Setup):
    """MNIST 0 and 1 as the authors load it: PIL images transformed one at a time in a DataLoader."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms as T

    steps = [T.Resize((setup.image_size, setup.image_size)), T.ToTensor(), T.Normalize((0.5,), (0.5,))]
    if condition == "noisy":
        steps += [*authors_transforms(), T.Lambda(lambda x: x + torch.randn(x.size()))]
    mnist = datasets.MNIST(root=str(data_dir), train=True, download=False, transform=T.Compose(steps))
    keep = torch.nonzero((mnist.targets == 0) | (mnist.targets == 1)).flatten().tolist()
    return DataLoader(Subset(mnist, keep), batch_size=AUTHORS_BATCH, shuffle=True)


def time_authors_epoch(model: str, data_dir: Path, condition: str, n_images: int, setup: Setup,
                       device: torch.device) -> dict:
    """Seconds per epoch of the authors'-style loop, steps timed after warm-up as in `time_our_epoch`;
    extrapolated to `n_images`, the training images our loop has under the condition."""
    cfg = run_config(model, condition, setup, preset="paper")
    torch.manual_seed(0)
    built = build_model(cfg)
    if cfg.init_from:
        load_encoder(built, untrained_resnet(setup))
    vae = isinstance(built, (VAESVM, VAEKMeans))
    network = (built.vae if vae else built).to(device).train()
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.training.learning_rate)
    loss_of = vae_step(cfg.training.beta) if vae else cross_entropy_step
    total = setup.warmup + setup.steps
    sums: dict[str, float] = {}  # their running sums, each read from the device every step
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step, (images, labels) in enumerate(authors_loader(data_dir, condition, setup), start=1):
        if step == setup.warmup + 1:
            started = time.perf_counter()
        images, labels = images.to(device), labels.to(device)
        loss, parts, n_correct = loss_of(network, images, labels, images)
        optimizer.zero_grad()
        loss.backward()
        if vae:
            torch.nn.utils.clip_grad_norm_(params, cfg.training.vae_grad_clip)
        read = {"grad_norm": sum(p.grad.norm().item() for p in params if p.grad is not None), "loss": loss.item(),
                **{key: value.item() for key, value in parts.items()}}
        if n_correct is not None:
            read["correct"] = n_correct.item()
        optimizer.step()
        sums = {key: sums.get(key, 0.0) + value for key, value in read.items()}
        if step == total:
            break
    # The .item() calls wait for the device, so the clock needs no further sync.
    per_step = (time.perf_counter() - started) / setup.steps
    return {"model": model, "condition": condition, "batch_size": AUTHORS_BATCH,
            "seconds_per_epoch": per_step * math.ceil(n_images / AUTHORS_BATCH), "images": n_images,
            "timed_steps": setup.steps, "mean_loss": sums["loss"] / total, "peak_memory_bytes": peak_memory(device)}


def speedups(ours: list[dict], authors: list[dict]) -> list[dict]:
    """The authors'-style loop's epoch over ours, at the same batch and at the fast preset's (eager)."""
    by = {(r["model"], r["condition"], r["batch_size"]): r["seconds_per_epoch"] for r in ours if not r["compiled"]}
    rows = []
    for r in authors:
        same = by.get((r["model"], r["condition"], AUTHORS_BATCH))
        fast = by.get((r["model"], r["condition"], FAST_BATCH))
        rows.append({"model": r["model"], "condition": r["condition"], "authors_seconds": r["seconds_per_epoch"],
                     "ours_same_batch_seconds": same, "ours_fast_batch_seconds": fast,
                     "ratio_same_batch": same and r["seconds_per_epoch"] / same,
                     "ratio_fast_batch": fast and r["seconds_per_epoch"] / fast})
    return rows


def summary(result: dict) -> str:
    """The measurements as plain-text tables."""
    setup = ", ".join(f"{k} {v}" for k, v in result["setup"].items())
    lines = [f"{result['device']}, torch {result['torch']}; {setup}; {result['seconds']:.0f} s in all", ""]
    if result["epochs"]:
        by = {(r["model"], r["condition"], r["batch_size"], r["compiled"]): r for r in result["epochs"]}
        columns = [(c, b) for c in CONDITIONS for b in sorted({r["batch_size"] for r in result["epochs"]})]
        memory = " (peak GPU memory, MiB)" if result["cuda_used"] else ""
        lines += [f"Our loop: seconds per epoch{memory}",
                  f"{'model':16s}" + "".join(f"{c + ' ' + str(b):>22s}" for c, b in columns)]
        for model in dict.fromkeys(r["model"] for r in result["epochs"]):
            cells = []
            for c, b in columns:
                r = by.get((model, c, b, False))
                peak = f" ({r['peak_memory_bytes'] / 2**20:.0f})" if r and r["peak_memory_bytes"] else ""
                cells.append("-" if r is None else f"{r['seconds_per_epoch']:.2f}{peak}")
            lines.append(f"{model:16s}" + "".join(f"{cell:>22s}" for cell in cells))
        for r in result["epochs"]:
            if r["compiled"]:
                lines.append(f"{r['model']} compiled, batch {r['batch_size']}: {r['seconds_per_epoch']:.2f} s/epoch "
                             f"(compiling and warm-up: {r['warmup_seconds']:.1f} s)")
        lines.append("")
    if result["speedup"]:
        lines += [f"The authors'-style loop (batch {AUTHORS_BATCH}) against ours: seconds per epoch and ratio",
                  f"{'model':16s}{'condition':>10s}{'authors':>10s}{'ours b' + str(AUTHORS_BATCH):>10s}"
                  f"{'ratio':>8s}{'ours b' + str(FAST_BATCH):>10s}{'ratio':>8s}"]
        shown = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        for r in result["speedup"]:
            lines.append(f"{r['model']:16s}{r['condition']:>10s}{r['authors_seconds']:>10.2f}"
                         f"{shown(r['ours_same_batch_seconds'], '.2f'):>10s}{shown(r['ratio_same_batch'], '.1f'):>8s}"
                         f"{shown(r['ours_fast_batch_seconds'], '.2f'):>10s}{shown(r['ratio_fast_batch'], '.1f'):>8s}")
        lines.append("")
    if result["grid"]:
        grid = result["grid"]
        compiled = "" if grid["compile"] or not result["cuda_used"] else ", without torch.compile"
        lines += [f"The {grid['preset']} grid{compiled}: {grid['cells']} of {grid['cells_planned']} cells in "
                  f"{grid['seconds']:.0f} s (training {grid['train_seconds']:.0f} s)", "",
                  markdown_tables(grid["rows"], paper=True)]
    if any(result["skipped"].values()):
        lines += ["Skipped for lack of time: " + "; ".join(f"{part}: {len(whats)} ({whats[0]}, ...)"
                                                          for part, whats in result["skipped"].items() if whats)]
    lines += [f"Failed: {e['what']}: {e['error']}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


class Run:
    """The three parts on one device, in order, each within its share of the budget. A measurement that
    fails (say torch.compile without a C compiler) is recorded and the run goes on, and the results are
    written after every part: a device run is not repeated for free."""

    def __init__(self, args: argparse.Namespace, setup: Setup, device: torch.device):
        self.args, self.setup, self.device, self.clock = args, setup, device, Clock(args.budget)
        self.data = {c: load_dataset(DatasetConfig(image_size=setup.image_size, condition=c), args.data_dir)
                     for c in CONDITIONS}
        self.result = {
            "device": device_name(device), "cuda_used": device.type == "cuda",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv), "setup": asdict(setup), "budget_seconds": args.budget, "seconds": 0.0,
            "epochs": [], "authors": [], "speedup": [], "grid": None,
            "skipped": {part: [] for part in PARTS},  # what each part left out for lack of time
            "errors": [],
        }

    def attempt(self, part: str, what: str, measure: Callable[..., dict], *args) -> dict | None:
        """`measure(*args)` unless the part's time is up (then it is skipped) or it fails (then the error is kept)."""
        if self.clock.left(part) <= 0:
            self.result["skipped"][part].append(what)
            return None
        try:
            return measure(*args)
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not lose the others
            self.result["errors"].append({"what": what, "error": f"{type(exc).__name__}: {exc}"})
            print(f"{what}: failed ({type(exc).__name__}: {exc})", flush=True)
            return None

    def epochs(self, models: list[str]) -> None:
        runs = [(m, c, b, False) for b in self.args.batch_sizes for c in CONDITIONS for m in models]
        if self.device.type == "cuda" and "vgg" in models and FAST_BATCH in self.args.batch_sizes:
            runs.append(("vgg", "vanilla", FAST_BATCH, True))
        for model, condition, batch, compiled in runs:
            what = f"our loop: {model} {condition} batch {batch}{' compiled' if compiled else ''}"
            r = self.attempt("epochs", what, time_our_epoch, model, self.data[condition], condition, batch,
                             self.setup, self.device, compiled)
            if r:
                self.result["epochs"].append(r)
                print(f"{what}: {r['seconds_per_epoch']:.2f} s/epoch (warm-up {r['warmup_seconds']:.1f} s)", flush=True)

    def authors(self, models: list[str]) -> None:
        for model in models:
            for condition in CONDITIONS:
                what = f"authors' loop: {model} {condition}"
                r = self.attempt("authors", what, time_authors_epoch, model, self.args.data_dir, condition,
                                 len(self.data[condition].x_train), self.setup, self.device)
                if r:
                    self.result["authors"].append(r)
                    print(f"{what}: {r['seconds_per_epoch']:.2f} s/epoch", flush=True)

    def grid(self, models: list[str]) -> None:
        """The grid through `reproduce`; if it fails with torch.compile on (the fast preset's, on CUDA),
        once more without."""
        for compile in (None, False):
            grid = preset_grid(self.setup.grid, models=models, width=self.setup.grid_width, compile=compile)
            what = f"the {self.setup.grid} grid" + ("" if grid.training.compile else " without torch.compile")
            self.result["grid"] = self.attempt("grid", what, self.reproduce, grid)
            if self.result["grid"] or not grid.training.compile or self.device.type != "cuda":
                return

    def reproduce(self, grid: ExperimentConfig) -> dict:
        def on_cell(row: dict, *_) -> None:
            print(f"grid: {row['model']} {row['condition']}: val_accuracy {row['val_accuracy']:.4f}, "
                  f"{row['train_seconds']:.1f} s", flush=True)

        report = reproduce(grid, self.args.data_dir, self.args.out / "grid", preset=self.setup.grid,
                           device=self.device, draw=False, on_epoch=lambda _: self.clock.left("grid") <= 0,
                           on_cell=on_cell)
        if not report["complete"]:
            self.result["skipped"]["grid"].append(f"{report['cells_planned'] - report['cells']} cells of the grid")
        kept = ("preset", "seconds", "complete", "cells", "cells_planned", "rows", "table_1", "table_2")
        return {key: report[key] for key in kept} | {
            "compile": grid.training.compile, "train_seconds": sum(r["train_seconds"] for r in report["rows"])}

    def save(self) -> str:
        self.result["seconds"] = time.monotonic() - self.clock.started
        self.result["speedup"] = speedups(self.result["epochs"], self.result["authors"])
        text = summary(self.result)
        (self.args.out / "summary.txt").write_text(text)
        (self.args.out / "gpu.json").write_text(json.dumps(self.result, indent=2) + "\n")
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="holds MNIST/raw/")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--budget", type=float, default=400, help="seconds for the three parts together")
    parser.add_argument("--tiny", action="store_true", help="32x32, width 0.125, a few steps, the quick grid")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCHES), help="of the epochs part")
    parser.add_argument("--warmup", type=int, default=None, help="steps before the timed ones (default: 10, tiny 1)")
    parser.add_argument("--steps", type=int, default=None, help="steps timed, at most (default: 50, tiny 3)")
    args = parser.parse_args()
    setup = TINY if args.tiny else FULL
    setup = replace(setup, warmup=args.warmup or setup.warmup, steps=args.steps or setup.steps)
    device = pick_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{device_name(device)}; torch {torch.__version__}; {setup}; budget {args.budget:.0f} s", flush=True)
    run = Run(args, setup, device)
    # The authors had no convolutional VAE, and the paper's grid has none.
    paper_models = [m for m in args.models if m in PAPER_MODELS]
    for part, models in (("epochs", args.models), ("authors", paper_models), ("grid", paper_models)):
        if part in args.parts and models:
            getattr(run, part)(models)
            run.save()
    print("\n" + run.save())


if __name__ == "__main__":
    main()
