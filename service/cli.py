"""The `classcomp` command. Each subcommand imports what it needs, so `train` works without the web stack loaded."""

from __future__ import annotations

import argparse
import json
import sys

from ml.config import MODEL_NAMES, DatasetConfig, RunConfig, TrainingConfig


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that describe a training run (shared by `train` and `submit`)."""
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "gaussian"])
    p.add_argument("--digits", type=int, nargs=2, default=[0, 1], metavar=("A", "B"))
    p.add_argument("--condition", default="vanilla", choices=["vanilla", "imbalance", "noisy"])
    p.add_argument("--imbalance", type=float, default=0.9, help="fraction of class 1 in training (imbalance)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier; 1 is the paper's size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="resnet to start a unet-pretrained encoder from")


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    try:
        return RunConfig(
            model=args.model,
            dataset=DatasetConfig(
                name=args.dataset, digits=args.digits, image_size=args.image_size,
                condition=args.condition, imbalance=args.imbalance, seed=args.seed,
            ),
            training=TrainingConfig(
                epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed, width=args.width,
            ),
            init_from=args.init_from,
        )
    except ValueError as exc:
        sys.exit(f"classcomp: {exc}")


def cmd_train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ml import artifacts
    from ml.data import MissingDataError, load_dataset
    from ml.train import train
    from service.settings import get_settings

    settings = get_settings()
    cfg = run_config_from_args(args)
    try:
        data = load_dataset(cfg.dataset, settings.mnist_dir, settings.download)
    except MissingDataError as exc:
        sys.exit(f"classcomp: {exc}")
    init_state = artifacts.load_state(cfg.init_from) if cfg.init_from else None
    bar = tqdm(total=0, unit="batch", leave=False, file=sys.stderr)

    def on_batch(step: int, steps: int) -> None:
        if step == 1:
            bar.reset(total=steps)
        bar.update(1)

    def on_epoch(record: dict) -> None:
        bar.clear()
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        print(shown, file=sys.stderr)

    result = train(cfg, data, device=args.device or settings.device, init_state=init_state,
                   on_epoch=on_epoch, on_batch=on_batch)
    bar.close()
    artifacts.save(result, cfg, args.out)
    print(json.dumps({"out": str(args.out), "train_seconds": round(result.seconds, 3), **result.final}))


def cmd_models(args: argparse.Namespace) -> None:
    from ml.models import build_model, parameter_count

    for name in MODEL_NAMES:
        cfg = RunConfig(
            model=name,
            dataset=DatasetConfig(image_size=args.image_size),
            training=TrainingConfig(width=args.width),
            init_from="-" if name == "unet-pretrained" else None,
        )
        print(f"{name:16s} {parameter_count(build_model(cfg)):>12,d}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model here and write its artifact directory")
    add_run_arguments(p)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("models", help="list the models with their parameter counts")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=64)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
