"""The paper's Tables 1 and 2 at a chosen size, in this process (no service): every model under
every condition, each clean-trained model also tested on the noisy images (the brackets).

    PYTHONPATH=. .venv/bin/python benchmarks/paper_table.py --data-dir ../shared/data \
        --image-size 32 --width 0.125 --epochs 2 --batch-size 128 --head-epochs 10

prints each cell as it lands, then the two tables in Markdown beside the paper's.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ml.config import CONDITIONS, MODEL_NAMES, PAPER_MODELS, DatasetConfig, TrainingConfig
from ml.data import load_dataset
from ml.evaluation import condition_config, evaluate
from ml.experiment import ExperimentConfig, markdown_tables
from ml.train import train

PAPER_TABLE_1 = {  # validation accuracy (%); the brackets are the noisy column's
    "vgg": (99.91, 96.50, 93.62, None), "resnet": (99.95, 99.90, 96.88, None),
    "unet": (100.00, 99.90, 96.97, None), "unet-pretrained": (99.95, 99.90, 97.26, None),
    "vae-svm": (98.16, 97.31, 51.06, 65.90), "vae-kmeans": (99.05, 99.38, 50.49, 61.37),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--models", nargs="+", default=list(PAPER_MODELS), choices=MODEL_NAMES)
    p.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--epochs", type=int, default=None, help="default: the paper preset's")
    p.add_argument("--batch-size", type=int, default=None, help="default: the paper preset's")
    p.add_argument("--head-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    args = p.parse_args()

    grid = ExperimentConfig(
        models=args.models, conditions=args.conditions,
        dataset=DatasetConfig(image_size=args.image_size, seed=args.seed),
        training=TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, head_epochs=args.head_epochs,
                                width=args.width, seed=args.seed),
    )
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"# device {device} ({torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}), "
          f"training {json.dumps(grid.training.__dict__)}", flush=True)
    resnets, rows, started = {}, [], time.perf_counter()
    for model, condition in grid.cells():
        cfg = grid.run_config(model, condition, init_from="resnet" if model == "unet-pretrained" else None)
        data = load_dataset(cfg.dataset, args.data_dir)
        result = train(cfg, data, device=device, init_state=resnets.get(condition) if model == "unet-pretrained" else None)
        if model == "resnet":
            resnets[condition] = result.model.state_dict()
        row = {"model": model, "condition": condition, "val_accuracy": result.final["val_accuracy"],
               "train_seconds": result.seconds}
        if condition == "vanilla":
            noisy = load_dataset(condition_config(cfg.dataset, "noisy"), args.data_dir)
            row["noisy_val_accuracy"] = evaluate(result.model, noisy)["accuracy"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n# {time.perf_counter() - started:.0f} s in all\n")
    print(markdown_tables(rows))
    print("### The paper's Table 1 (%)\n\n| model | vanilla | imbalance | noisy |\n|---|---:|---:|---:|")
    for model, (vanilla, imbalance, noisy, bracket) in PAPER_TABLE_1.items():
        print(f"| {model} | {vanilla:.2f} | {imbalance:.2f} | {noisy:.2f}" + (f" ({bracket:.2f})" if bracket else "")
              + " |")


if __name__ == "__main__":
    main()
