"""The `classcomp` command. Each subcommand imports what it needs, so `train` works without the web stack loaded."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

from ml.config import CONDITIONS, MODEL_NAMES, PRESETS, DatasetConfig, RunConfig, TrainingConfig


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that describe a training run (shared by `train` and `submit`). Optimisation flags left
    out take the preset's value."""
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "gaussian"])
    p.add_argument("--digits", type=int, nargs=2, default=[0, 1], metavar=("A", "B"))
    p.add_argument("--condition", default="vanilla", choices=CONDITIONS)
    p.add_argument("--imbalance", type=float, default=0.9, help="fraction of class 1 in training (imbalance)")
    p.add_argument("--noisy-imbalance", type=float, default=0.6,
                   help="fraction of class 1 in training under noisy, as the authors ran it; 0 for none")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--preset", default="paper", choices=list(PRESETS), help="where unset optimisation flags come from")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--head-epochs", type=int, default=None, help="the SVM head's epochs (default: --epochs)")
    p.add_argument("--vae-grad-clip", type=float, default=None, help="VAE gradient-norm clip; 0 for none")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier; 1 is the paper's size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="resnet to start a unet-pretrained encoder from")
    p.add_argument("--finetune-encoder", action="store_true",
                   help="unet-pretrained: train the resnet encoder too (the authors froze it)")


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    try:
        return RunConfig(
            model=args.model,
            dataset=DatasetConfig(
                name=args.dataset, digits=args.digits, image_size=args.image_size, condition=args.condition,
                imbalance=args.imbalance, noisy_imbalance=args.noisy_imbalance or None, seed=args.seed,
            ),
            training=TrainingConfig(
                preset=args.preset, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                head_epochs=args.head_epochs, vae_grad_clip=args.vae_grad_clip, seed=args.seed, width=args.width,
                finetune_encoder=args.finetune_encoder,
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


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    from service.app import create_app
    from service.settings import get_settings

    settings = get_settings()
    # uvicorn stops gracefully on SIGTERM, then raises it again; as an exception rather than the
    # default sudden exit, it lets the `finally` below stop the worker.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    worker = None if args.no_worker else start_worker_process()
    try:
        uvicorn.run(create_app(), host=args.host or settings.host, port=args.port or settings.port)
    finally:
        if worker is not None:
            stop_worker_process(worker)


def _die_with_parent() -> None:
    # Linux: if `serve` is killed outright, its worker gets SIGTERM instead of living on.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_worker_process() -> subprocess.Popen:
    """`classcomp worker` as a child in its own process group (the worker and its pool process)."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def stop_worker_process(worker: subprocess.Popen, grace_seconds: float = 10) -> None:
    """Warm shutdown (a job about to finish may still finish), then kill the whole group.

    A job killed here is left to the stale-job sweep, which fails it as "worker lost".
    """
    worker.terminate()  # to the worker's main process, which stops its pool process itself
    try:
        worker.wait(grace_seconds)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    worker.wait()


def cmd_worker(args: argparse.Namespace) -> None:
    from service.settings import get_settings
    from workers.app import app

    app.worker_main([
        "worker",
        f"--queues={get_settings().queue}",
        "--concurrency=1",  # one training at a time per process: it uses every core (or the GPU)
        f"--hostname=classcomp-{os.getpid()}@%h",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ])


def _client(args: argparse.Namespace):
    import httpx

    from service.settings import get_settings

    return httpx.Client(base_url=args.url or get_settings().url, timeout=60)


def _call(client, method: str, path: str, **kwargs) -> dict:
    """One API call; an error answer or an unreachable service ends the command with its message."""
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        sys.exit(f"classcomp: cannot reach the service at {client.base_url} ({exc}); start it with `classcomp serve`")
    if response.is_error:
        try:
            error = response.json()["error"]
            sys.exit(f"classcomp: {error['message']} ({response.status_code} {error['code']})")
        except (ValueError, KeyError, TypeError):
            sys.exit(f"classcomp: {response.status_code} {response.text}")
    return response.json()


def cmd_submit(args: argparse.Namespace) -> None:
    cfg = run_config_from_args(args)
    with _client(args) as client:
        job = _call(client, "POST", "/v1/jobs", json={"kind": "train", **cfg.to_dict()})
        if args.wait:
            job = wait_for_job(client, job)
    print(json.dumps(job, indent=2))
    if args.wait and job["status"] != "succeeded":
        sys.exit(1)


def wait_for_job(client, job: dict, poll_seconds: float = 1.0) -> dict:
    from tqdm import tqdm

    with tqdm(total=None, unit="epoch", desc=f"job {job['id'][:8]}", file=sys.stderr) as bar:
        while job["status"] in ("queued", "running"):
            time.sleep(poll_seconds)
            job = _call(client, "GET", f"/v1/jobs/{job['id']}")
            progress = job["progress"]
            if progress["epochs"] and bar.total != progress["epochs"]:
                bar.reset(total=progress["epochs"])
            bar.update(progress["epoch"] - bar.n)
            bar.set_postfix_str(job["status"])
    return job


def cmd_jobs(args: argparse.Namespace) -> None:
    params = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    with _client(args) as client:
        page = _call(client, "GET", "/v1/jobs", params=params)
    print(f"{'id':32s}  {'kind':14s}  {'status':9s}  {'epoch':>7s}  {'created':25s}  models")
    for job in page["items"]:
        progress = job["progress"]
        epochs = f"{progress['epoch']}/{progress['epochs'] or '?'}"
        print(f"{job['id']:32s}  {job['kind']:14s}  {job['status']:9s}  {epochs:>7s}  {job['created_at']:25s}  "
              f"{' '.join(job['model_ids'])}")
    print(f"({len(page['items'])} of {page['total']})", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    import mimetypes
    from pathlib import Path

    files = []
    for name in args.images:
        path = Path(name)
        if not path.is_file():
            sys.exit(f"classcomp: no such file: {name}")
        files.append(("files", (path.name, path.read_bytes(), mimetypes.guess_type(path.name)[0] or "application/octet-stream")))
    with _client(args) as client:
        print(json.dumps(_call(client, "POST", f"/v1/models/{args.model_id}/predict", files=files), indent=2))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """A model directory is scored here; anything else is a model id of the service."""
    from pathlib import Path

    if not Path(args.model).is_dir():
        with _client(args) as client:
            report = _call(client, "GET", f"/v1/models/{args.model}/reports/evaluation",
                           params={"condition": args.condition})
        print(json.dumps(report, indent=2))
        return

    from ml import artifacts
    from ml.data import MissingDataError, load_dataset
    from ml.evaluation import condition_config, evaluate
    from service.settings import get_settings

    settings = get_settings()
    try:
        loaded = artifacts.load(args.model, args.device or settings.device)
        data = load_dataset(condition_config(loaded.config.dataset, args.condition), settings.mnist_dir,
                            settings.download)
    except (artifacts.ArtifactError, MissingDataError) as exc:
        sys.exit(f"classcomp: {exc}")
    report = {"model": args.model, "trained_condition": loaded.config.dataset.condition,
              "condition": args.condition, **evaluate(loaded.model, data)}
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model here and write its artifact directory")
    add_run_arguments(p)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy and confusion matrix of a model on another condition's "
                       "validation images")
    p.add_argument("model", help="a model directory (from `train --out`), or the id of a model of the service")
    p.add_argument("--condition", required=True, choices=CONDITIONS)
    p.add_argument("--device", default=None, help="cuda or cpu, for a model directory (default: cuda when available)")
    p.add_argument("--url", default=None, help="the service, for a model id (default: CLASSCOMP_URL or "
                   "http://127.0.0.1:8000)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the models with their parameter counts")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=64)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="run the API here, with a worker unless --no-worker (embedded mode by default)")
    p.add_argument("--host", default=None, help="default: CLASSCOMP_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: CLASSCOMP_PORT or 8000")
    p.add_argument("--no-worker", action="store_true", help="API only; jobs run on `classcomp worker` processes")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker for training jobs (one at a time)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    url_help = "the service (default: CLASSCOMP_URL or http://127.0.0.1:8000)"
    p = sub.add_parser("submit", help="submit a training job to a running service")
    add_run_arguments(p)
    p.add_argument("--wait", action="store_true", help="follow the job to its end and print it")
    p.add_argument("--url", default=None, help=url_help)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list the jobs of a running service, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--url", default=None, help=url_help)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("predict", help="classify image files with a model of a running service")
    p.add_argument("model_id")
    p.add_argument("images", nargs="+", help="PNG or JPEG files")
    p.add_argument("--url", default=None, help=url_help)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
