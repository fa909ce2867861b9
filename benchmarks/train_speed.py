"""Seconds per training epoch for each model at the paper's preset (64x64, width 1), MNIST 0 vs 1.

On the CPU a full epoch of the paper-sized CNNs takes many minutes, so by default only a few
batches are timed and the epoch time is extrapolated from them. On a GPU full epochs run and
the second one (after cuDNN autotuning and allocator warm-up) is reported.

    PYTHONPATH=. python benchmarks/train_speed.py --data-dir ../shared/data            # CPU
    PYTHONPATH=. python benchmarks/train_speed.py --data-dir .mnist --device cuda      # GPU
"""

from __future__ import annotations

import argparse
import time

import torch

from ml.config import MODEL_NAMES, DatasetConfig, RunConfig, TrainingConfig
from ml.data import Dataset, load_dataset
from ml.models import build_model, parameter_count
from ml.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--batches", type=int, default=3, help="CPU: batches timed per model (0 = full epochs)")
    parser.add_argument("--condition", default="vanilla", choices=["vanilla", "imbalance", "noisy"])
    args = parser.parse_args()

    full = load_dataset(DatasetConfig(image_size=args.image_size, condition=args.condition), args.data_dir)
    n_full = len(full.x_train)
    sample = args.device == "cpu" and args.batches > 0
    # Timed subset: `batches` batches plus one warm-up batch, scored on a small validation slice.
    n = (args.batches + 1) * args.batch_size if sample else n_full
    data = Dataset(full.x_train[:n], full.y_train[:n], full.x_val[:512] if sample else full.x_val,
                   full.y_val[:512] if sample else full.y_val, full.classes, full.noisy)
    epochs = 1 if sample else 2
    steps_full = -(-n_full // args.batch_size)
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"images={n_full} batch={args.batch_size} size={args.image_size} width={args.width} "
          f"{'sampled ' + str(args.batches) + ' batches' if sample else 'full epochs'}")
    print(f"{'model':16s} {'params':>12s} {'s/epoch':>9s} {'val_acc':>8s}")
    resnet_state = None
    for name in args.models:
        cfg = RunConfig(
            model=name,
            dataset=DatasetConfig(image_size=args.image_size, condition=args.condition),
            # Sampled runs skip the SVM head so that only VAE batches are timed.
            training=TrainingConfig(epochs=epochs, batch_size=args.batch_size, width=args.width,
                                    head_epochs=0 if sample else TrainingConfig.head_epochs),
            init_from="resnet" if name == "unet-pretrained" else None,
        )
        if name == "unet-pretrained" and resnet_state is None:
            resnet_state = build_model(RunConfig(model="resnet", dataset=cfg.dataset, training=cfg.training)).state_dict()
        step_times: list[float] = []
        last = [0.0]

        def on_batch(step: int, steps: int) -> None:
            if args.device == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            if step > 1:  # the first batch carries one-off set-up costs
                step_times.append(now - last[0])
            last[0] = now

        result = train(cfg, data, device=args.device, init_state=resnet_state, on_batch=on_batch if sample else None)
        if name == "resnet":
            resnet_state = result.model.state_dict()
        if sample:
            seconds = sum(step_times) / len(step_times) * steps_full
        else:
            seconds = [r["epoch_seconds"] for r in result.history if r["phase"] in ("classifier", "vae")][-1]
        print(f"{name:16s} {parameter_count(result.model):>12,d} {seconds:>9.2f} {result.final.get('val_accuracy', float('nan')):>8.4f}")


if __name__ == "__main__":
    main()
