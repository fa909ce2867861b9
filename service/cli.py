"""The `classcomp` command. Each subcommand imports what it needs, so `train` works without the web stack loaded."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.config import (
    CLASS_NAMES, CONDITIONS, DATASET_NAMES, IMBALANCE_PROFILES, MODEL_NAMES, PRESETS, DatasetConfig, RunConfig,
    TrainingConfig,
)

if TYPE_CHECKING:
    from classcomp.client import Client

logger = logging.getLogger(__name__)


def add_dataset_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Flags that choose the images and their classes (`train`, `submit` and `reproduce`)."""
    p.add_argument("--dataset", default="mnist", choices=DATASET_NAMES)
    p.add_argument("--classes", nargs="+", default=["0", "1"], metavar="LABEL",
                   help="the labels to tell apart: 2 to 10 of the dataset's 0-9, or 'all' (default: 0 1)")
    p.add_argument("--imbalance", type=float, default=0.9,
                   help="imbalance condition: share of the named class with two classes, ratio f/(1-f) to the "
                        "smallest with more (DatasetConfig)")
    p.add_argument("--noisy-imbalance", type=float, default=0.6,
                   help="the same under noisy, as the authors ran it; 0 for none")
    p.add_argument("--imbalance-class", type=int, default=None, help="the class made larger (default: the last of --classes)")
    p.add_argument("--imbalance-profile", default="one", choices=IMBALANCE_PROFILES,
                   help="one: the named class against equal others; geometric: sizes falling class by class")


def dataset_from_args(args: argparse.Namespace, **fields: Any) -> DatasetConfig:
    """The DatasetConfig of `add_dataset_arguments`' flags and `fields`; a ValueError if they do not make one."""
    if args.classes == ["all"]:
        classes = list(range(len(CLASS_NAMES[args.dataset])))
    else:
        try:
            classes = [int(c) for c in args.classes]
        except ValueError:
            raise ValueError(f"--classes takes labels 0-9 or 'all', got {' '.join(args.classes)}") from None
    return DatasetConfig(name=args.dataset, classes=classes, imbalance=args.imbalance,
                         noisy_imbalance=args.noisy_imbalance or None, imbalance_class=args.imbalance_class,
                         imbalance_profile=args.imbalance_profile, **fields)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that describe a training run (shared by `train` and `submit`). Optimisation flags left
    out take the preset's value."""
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    add_dataset_arguments(p)
    p.add_argument("--condition", default="vanilla", choices=CONDITIONS)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--preset", default="paper", choices=list(PRESETS), help="where unset optimisation flags come from")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--head-epochs", type=int, default=None, help="the SVM head's epochs (default: the preset's, else --epochs)")
    p.add_argument("--vae-grad-clip", type=float, default=None, help="VAE gradient-norm clip; 0 for none")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier; 1 is the paper's size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init-from", default=None, help="resnet to start a unet-pretrained encoder from")
    p.add_argument("--finetune-encoder", action="store_true",
                   help="unet-pretrained: train the resnet encoder too (the authors froze it)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train through torch.compile on CUDA (default: the preset's; the CPU ignores it)")


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    try:
        return RunConfig(
            model=args.model,
            dataset=dataset_from_args(args, image_size=args.image_size, condition=args.condition, seed=args.seed),
            training=TrainingConfig(
                preset=args.preset, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                head_epochs=args.head_epochs, vae_grad_clip=args.vae_grad_clip, seed=args.seed, width=args.width,
                finetune_encoder=args.finetune_encoder, compile=args.compile,
            ),
            init_from=args.init_from,
        )
    except ValueError as exc:
        sys.exit(f"classcomp: {exc}")


def batch_bar() -> tuple[Any, Callable[[int, int], None]]:
    """A progress bar of the batches of the current epoch, and the on_batch callback that drives it."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="batch", leave=False, file=sys.stderr)

    def on_batch(step: int, steps: int) -> None:
        if step == 1:
            bar.reset(total=steps)
        bar.update(1)

    return bar, on_batch


def cmd_train(args: argparse.Namespace) -> None:

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
    bar, on_batch = batch_bar()

    def on_epoch(record: dict) -> None:
        bar.clear()
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        print(shown, file=sys.stderr)

    result = train(cfg, data, device=args.device or settings.device, init_state=init_state,
                   on_epoch=on_epoch, on_batch=on_batch)
    bar.close()
    artifacts.save(result, cfg, args.out)
    print(json.dumps({"out": str(args.out), "train_seconds": round(result.seconds, 3), **result.final}))


def cmd_reproduce(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from ml.data import MissingDataError
    from ml.experiment import preset_grid, report_markdown, reproduce
    from ml.train import pick_device
    from service.settings import get_settings

    settings = get_settings()
    try:
        grid = preset_grid(
            args.preset, models=args.models, conditions=args.conditions, image_size=args.image_size, seed=args.seed,
            dataset=dataset_from_args(args), width=args.width, epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
            head_epochs=args.head_epochs, compile=args.compile,
        )
        device = pick_device(args.device or settings.device)
    except (ValueError, RuntimeError) as exc:
        sys.exit(f"classcomp: {exc}")
    out = args.out or f"runs/reproduce-{args.preset}"
    progress = tqdm(total=grid.total_epochs(), unit="epoch", desc="grid", file=sys.stderr)
    batches, on_batch = batch_bar()

    def on_epoch(record: dict) -> None:
        progress.update(1)
        progress.set_postfix_str(f"cell {record['cell']}/{record['cells']}: {record['model']}, {record['condition']}")

    def on_cell(row: dict, *_) -> None:
        tqdm.write(json.dumps(row), file=sys.stdout)

    try:
        report = reproduce(grid, args.data_dir or settings.mnist_dir, out, preset=args.preset,
                           download=settings.download, device=device, draw=not args.no_figures,
                           on_epoch=on_epoch, on_batch=on_batch, on_cell=on_cell)
    except MissingDataError as exc:
        sys.exit(f"classcomp: {exc}")
    finally:
        batches.close()
        progress.close()
    print("\n" + report_markdown(report))
    print(f"wrote {out}/tables.md, tables.json" + ("" if args.no_figures else " and figures/"), file=sys.stderr)


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
    from service.auth import warn_if_open
    from service.settings import get_settings

    settings = get_settings()
    warn_if_open(args.host or settings.host)
    # uvicorn stops gracefully on SIGTERM, then raises it again; as an exception rather than the
    # default sudden exit, it lets the `finally` below stop the worker.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    if args.workers < 0:
        sys.exit("classcomp: --workers must be 0 or more")
    supervisor = WorkerSupervisor(0 if args.no_worker else args.workers)
    try:
        uvicorn.run(create_app(), host=args.host or settings.host, port=args.port or settings.port)
    finally:
        supervisor.stop()


def _die_with_parent() -> None:
    # Linux: if `serve` is killed outright, its worker gets SIGTERM instead of living on.
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_worker_process(env: dict[str, str] | None = None) -> subprocess.Popen:
    """`classcomp worker` as a child in its own process group (the worker and its pool process),
    with `env` added to this process's environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker"],
        env={**os.environ, **(env or {})},
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def worker_share(index: int, count: int) -> dict[str, str]:
    """What the index-th of `count` embedded workers may use, so that they share one machine rather
    than fight over it: an equal share of the cores (each would otherwise start a thread per core),
    and with several GPUs visible, one of them each, in turn. Settings the user made are kept."""
    import torch

    share: dict[str, str] = {}
    if count > 1 and "OMP_NUM_THREADS" not in os.environ:
        share["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // count))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if count > 1 and len(gpus) > 1:
        share["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return share


def _kill_group(worker: subprocess.Popen) -> None:
    try:
        os.killpg(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    worker.wait()


def stop_worker_processes(workers: list[subprocess.Popen], grace_seconds: float = 10) -> None:
    """Warm shutdown of them all at once (a job about to finish may still finish), then kill the
    groups of those still running.

    A job killed here is left to the stale-job sweep, which fails it as "worker lost".
    """
    for worker in workers:
        worker.terminate()  # to the worker's main process, which stops its pool process itself
    deadline = time.monotonic() + grace_seconds
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_group(worker)


def worker_name(pid: int) -> str:
    """The Celery hostname of the `classcomp worker` with this process id: the name of its row in
    the registry's workers table and what the jobs it claims record as their worker."""
    return f"classcomp-{pid}@{socket.gethostname()}"


RESTART_DELAY_FIRST = 1.0
RESTART_DELAY_MAX = 30.0
# A child that lived this long died of something other than failing to start: restart it promptly.
RESTART_DELAY_RESET_AFTER = 60.0


@dataclass
class _Child:
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    started: float = 0.0
    delay: float = RESTART_DELAY_FIRST
    restart_at: float = 0.0

    def tend(self) -> None:
        """Start the child when due; notice that it died and schedule its restart."""
        moment = time.monotonic()
        if self.process is None:
            if moment >= self.restart_at:
                self.process, self.started = start_worker_process(self.env), moment
            return
        code = self.process.poll()
        if code is None:
            return
        _kill_group(self.process)  # its pool process may outlive it, training on with nobody to record it
        _forget(worker_name(self.process.pid))
        if moment - self.started >= RESTART_DELAY_RESET_AFTER:
            self.delay = RESTART_DELAY_FIRST
        cause = f"signal {-code}" if code < 0 else f"status {code}"
        logger.warning("classcomp serve: the worker %d exited (%s); restarting it in %g s; a job it was running "
                       "will be failed as worker lost", self.process.pid, cause, self.delay)
        self.process, self.restart_at = None, moment + self.delay
        self.delay = min(2 * self.delay, RESTART_DELAY_MAX)


def _forget(name: str) -> None:
    """Drop a dead worker's row at once, so /readyz stops counting it before it goes stale."""
    from service import registry

    try:
        registry.forget_worker(name)
    except Exception:
        logger.warning("classcomp serve: could not remove worker %s from the registry; it goes stale instead",
                       name, exc_info=True)


class WorkerSupervisor:
    """Keeps `count` embedded `classcomp worker` children running, from a thread of `serve`.

    A child that exits, whatever the cause (a crash, the OOM killer, a kill), is started again
    after a delay: 1 s, doubling up to 30 s while its replacements keep dying, and 1 s again once
    one has lived a minute. Only this thread starts and stops children: Linux sends a child's
    parent-death signal when the *thread* that started it ends, and this one ends after stopping them.
    """

    POLL_SECONDS = 0.5

    def __init__(self, count: int) -> None:
        self.children = [_Child(worker_share(i, count)) for i in range(count)]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while True:
                for child in self.children:
                    child.tend()
                if self.stopping.wait(self.POLL_SECONDS):
                    return
        finally:
            stop_worker_processes([child.process for child in self.children if child.process is not None])

    def stop(self) -> None:
        """Stop the children (warm, then killed after a grace period) and the supervision."""
        self.stopping.set()
        self.thread.join()


def check_device(device: str) -> None:
    """Exit now, with pick_device's reason, if `device` is not usable here (a worker told to use CUDA
    without a usable GPU would otherwise fail every job it takes).

    CUDA is asked in a spawned process: querying it in this one would keep the pool process that
    Celery forks from it from ever using CUDA ("Cannot re-initialize CUDA in forked subprocess").
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ml.train import pick_device

    try:
        if not device.startswith("cuda"):
            pick_device(device)  # asks CUDA nothing, and names a mistyped device
            return
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            child.submit(pick_device, device).result()
    except RuntimeError as exc:
        sys.exit(f"classcomp: {exc}")


def cmd_worker(args: argparse.Namespace) -> None:
    from celery.utils.imports import symbol_by_name

    from service.settings import get_settings

    if get_settings().device:
        check_device(get_settings().device)
    # By name: the command line starts every part, but nothing under service/ imports workers/.
    app = symbol_by_name("workers.app:app")
    app.worker_main([
        "worker",
        f"--queues={get_settings().queue}",
        "--concurrency=1",  # one training at a time per process: it uses every core (or the GPU)
        f"--hostname={worker_name(os.getpid())}",
        f"--loglevel={args.loglevel}",
        "--without-gossip",
        "--without-mingle",
    ])


def client_command(command: Callable[[argparse.Namespace, Client], None]) -> Callable[[argparse.Namespace], None]:
    """A command against a running service: it is handed a Client of --url (classcomp.client), and an
    error answer, no answer, or a missing image file ends it with one line."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> None:
        from classcomp.client import ClassCompError, Client

        try:
            with Client(args.url) as client:
                command(args, client)
        except ClassCompError as exc:
            hint = "; start it with `classcomp serve`" if exc.code == "unreachable" else ""
            sys.exit(f"classcomp: {exc}{hint}")
        except FileNotFoundError as exc:
            sys.exit(f"classcomp: {exc}")

    return run


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _wrote(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    print(f"wrote {path} ({len(content)} bytes)", file=sys.stderr)


def _finished(job: dict) -> None:
    """Print a job followed to its end; a job that did not succeed fails the command."""
    _print_json(job)
    if job["status"] != "succeeded":
        sys.exit(1)


@client_command
def cmd_submit(args: argparse.Namespace, client: Client) -> None:
    body = {"kind": "train", **run_config_from_args(args).to_dict(), **({"name": args.name} if args.name else {})}
    job = client.submit(body)
    if args.wait:
        _finished(client.wait(job["id"]))
    else:
        _print_json(job)


@client_command
def cmd_wait(args: argparse.Namespace, client: Client) -> None:
    _finished(client.wait(args.job_id))


@client_command
def cmd_jobs(args: argparse.Namespace, client: Client) -> None:
    page = client.jobs(status=args.status, limit=args.limit, offset=args.offset)
    print(f"{'id':32s}  {'kind':14s}  {'status':9s}  {'epoch':>7s}  {'created':25s}  models")
    for job in page["items"]:
        progress = job["progress"]
        epochs = f"{progress['epoch']}/{progress['epochs'] or '?'}"
        print(f"{job['id']:32s}  {job['kind']:14s}  {job['status']:9s}  {epochs:>7s}  {job['created_at']:25s}  "
              f"{' '.join(job['model_ids'])}")
    print(f"({len(page['items'])} of {page['total']})", file=sys.stderr)


@client_command
def cmd_cancel(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.cancel(args.job_id))


@client_command
def cmd_report(args: argparse.Namespace, client: Client) -> None:
    """JSON and Markdown go to stdout (or -o); the error analysis's PNG plot goes to a file."""
    report = client.report(args.job_id, format=args.format)
    if args.format == "png":
        _wrote(Path(args.output or f"{args.job_id}.png"), report)
        return
    text = json.dumps(report, indent=2) if args.format == "json" else report
    if args.output:
        _wrote(Path(args.output), text.encode())
    else:
        print(text)


@client_command
def cmd_predict(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.predict(args.model, args.images))


@client_command
def cmd_reconstruct(args: argparse.Namespace, client: Client) -> None:
    """JSON arrays at the model's size to stdout, or with --out-dir one PNG per image at that image's size."""
    if not args.out_dir:
        _print_json(client.reconstruct(args.model, args.images))
        return
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for image in args.images:
        _wrote(out / f"{Path(image).stem}.png", client.reconstruct(args.model, image, format="png"))


@client_command
def cmd_embed(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.embed(args.model, args.images))


@client_command
def cmd_export(args: argparse.Namespace, client: Client) -> None:
    suffix = "" if args.part == "classifier" else f"-{args.part}"
    _wrote(Path(args.output or f"{_file_stem(args.model)}{suffix}.onnx"), client.export(args.model, part=args.part))


def _file_stem(ref: str) -> str:
    """A model ref as a file name: name/3 becomes name-3."""
    return ref.replace("/", "-")


@client_command
def cmd_model_list(args: argparse.Namespace, client: Client) -> None:
    page = client.models(name=args.name, architecture=args.architecture, dataset=args.dataset,
                         condition=args.condition, sort=args.sort, limit=args.limit, offset=args.offset)
    print(f"{'id':32s}  {'name/version':36s}  {'architecture':15s}  {'dataset':13s}  {'condition':9s}  "
          f"{'accuracy':>8s}  {'created':25s}  aliases")
    for model in page["items"]:
        dataset = model["config"]["dataset"]
        accuracy = model["final_metrics"].get("val_accuracy")
        shown = "" if accuracy is None else f"{accuracy:.4f}"
        print(f"{model['id']:32s}  {model['name'] + '/' + str(model['version']):36s}  {model['model']:15s}  "
              f"{dataset['name']:13s}  {dataset['condition']:9s}  {shown:>8s}  {model['created_at']:25s}  "
              f"{' '.join(model['aliases'])}")
    print(f"({len(page['items'])} of {page['total']})", file=sys.stderr)


@client_command
def cmd_model_show(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.model(args.model))


@client_command
def cmd_model_metrics(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.metrics(args.model))


@client_command
def cmd_model_weights(args: argparse.Namespace, client: Client) -> None:
    _wrote(Path(args.output or f"{_file_stem(args.model)}.safetensors"), client.weights(args.model))


@client_command
def cmd_model_figure(args: argparse.Namespace, client: Client) -> None:
    _wrote(Path(args.output or f"{_file_stem(args.model)}-{args.figure}.png"),
           client.figure(args.model, args.figure, index=args.index, image=args.image))


@client_command
def cmd_model_wasserstein(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.wasserstein(args.model, projections=args.projections, seed=args.seed,
                                   normalize=not args.raw))


@client_command
def cmd_model_delete(args: argparse.Namespace, client: Client) -> None:
    client.delete(args.model)
    print(f"deleted {args.model}", file=sys.stderr)


@client_command
def cmd_model_names(args: argparse.Namespace, client: Client) -> None:
    if args.registered_name:
        _print_json(client.registered_model(args.registered_name))
        return
    page = client.registered_models(limit=args.limit, offset=args.offset)
    print(f"{'name':40s}  {'latest':>6s}  {'versions':20s}  aliases")
    for registered in page["items"]:
        versions = " ".join(map(str, registered["versions"]))
        aliases = " ".join(f"{alias}={version}" for alias, version in registered["aliases"].items())
        latest = registered["latest_version"] or "-"  # null once every version is deleted
        print(f"{registered['name']:40s}  {latest:>6}  {versions:20s}  {aliases}")
    print(f"({len(page['items'])} of {page['total']})", file=sys.stderr)


@client_command
def cmd_model_alias(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.set_alias(args.registered_name, args.alias, args.version))


@client_command
def cmd_model_unalias(args: argparse.Namespace, client: Client) -> None:
    client.delete_alias(args.registered_name, args.alias)
    print(f"removed {args.registered_name}@{args.alias}", file=sys.stderr)


@client_command
def _evaluate_on_service(args: argparse.Namespace, client: Client) -> None:
    _print_json(client.evaluate(args.model, args.condition))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """A model directory is scored here; anything else is a model of the service."""
    if not Path(args.model).is_dir():
        _evaluate_on_service(args)
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
    _print_json(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="classcomp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model here and write its artifact directory")
    add_run_arguments(p)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("reproduce", help="train the paper's grid (models x conditions) here and write its Tables 1 "
                       "and 2 beside the paper's, and figures")
    p.add_argument("--preset", default="paper", choices=["paper", "fast", "quick"],
                   help="paper: the paper's settings (64x64, width 1, batch 16); fast: 64x64, width 1, the fast "
                   "training preset (for a GPU); quick: 32x32, width 0.03125, 2 epochs (minutes on a CPU)")
    p.add_argument("--out", default=None, help="directory for tables.md, tables.json and figures/ "
                   "(default: runs/reproduce-PRESET)")
    p.add_argument("--models", nargs="+", default=None, choices=MODEL_NAMES, help="default: the paper's six")
    p.add_argument("--conditions", nargs="+", default=None, choices=CONDITIONS, help="default: all three")
    p.add_argument("--device", default=None, help="cuda or cpu (default: CLASSCOMP_DEVICE, else cuda when available)")
    p.add_argument("--data-dir", default=None, help="where MNIST/raw/ and FashionMNIST/raw/ are "
                   "(default: CLASSCOMP_DATA_DIR)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    add_dataset_arguments(p.add_argument_group("the images (default: MNIST 0 vs 1, as the paper)"))
    overrides = p.add_argument_group("overrides of the preset")
    overrides.add_argument("--image-size", type=int, default=None)
    overrides.add_argument("--width", type=float, default=None)
    overrides.add_argument("--epochs", type=int, default=None)
    overrides.add_argument("--batch-size", type=int, default=None)
    overrides.add_argument("--lr", type=float, default=None)
    overrides.add_argument("--head-epochs", type=int, default=None)
    overrides.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None)
    overrides.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("evaluate", help="accuracy and confusion matrix of a model on another condition's "
                       "validation images")
    p.add_argument("model", help="a model directory (from `train --out`), or a model of the service: its id, "
                   "NAME/VERSION, NAME@ALIAS or NAME")
    p.add_argument("--condition", required=True, choices=CONDITIONS)
    p.add_argument("--device", default=None, help="cuda or cpu, for a model directory (default: cuda when available)")
    p.add_argument("--url", default=None, help="the service, for a model of the service (default: CLASSCOMP_URL "
                   "or http://127.0.0.1:8000)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the architectures with their parameter counts (here; `classcomp model "
                       "list` lists a service's trained models)")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--image-size", type=int, default=64)
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("serve", help="run the API here, with a worker it restarts should it die, unless --no-worker "
                       "(embedded mode by default)")
    p.add_argument("--host", default=None, help="default: CLASSCOMP_HOST or 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="default: CLASSCOMP_PORT or 8000")
    p.add_argument("--no-worker", action="store_true", help="API only; jobs run on `classcomp worker` processes")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes to run and keep running, each one job or experiment cell at a time, "
                   "sharing the cores and, with several GPUs, one GPU each (default 1)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker for training jobs (one at a time)")
    p.add_argument("--loglevel", default="INFO")
    p.set_defaults(func=cmd_worker)

    # The commands below talk to a running service through classcomp.client.
    def client_parser(subparsers: Any, name: str, help: str) -> argparse.ArgumentParser:
        p = subparsers.add_parser(name, help=help)
        p.add_argument("--url", default=None, help="the service (default: CLASSCOMP_URL or http://127.0.0.1:8000); "
                       "CLASSCOMP_API_TOKEN is sent as its bearer token")
        return p

    ref_help = "a model of the service: its id, NAME/VERSION, NAME@ALIAS or NAME (its latest version)"

    p = client_parser(sub, "submit", "submit a training job to a running service")
    add_run_arguments(p)
    p.add_argument("--name", default=None, help="the registered name its model becomes a version of "
                   "(default: derived from the run, e.g. vgg-mnist-0v1-vanilla)")
    p.add_argument("--wait", action="store_true", help="follow the job to its end and print it")
    p.set_defaults(func=cmd_submit)

    p = client_parser(sub, "wait", "follow a job of a running service to its end with a progress bar, and print it")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_wait)

    p = client_parser(sub, "jobs", "list the jobs of a running service, newest first")
    p.add_argument("--status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=cmd_jobs)

    p = client_parser(sub, "cancel", "cancel a job of a running service (a running one stops after its epoch)")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)

    p = client_parser(sub, "report", "the report of an experiment or error-analysis job of a running service")
    p.add_argument("job_id")
    p.add_argument("--format", default="md", choices=["md", "json", "png"],
                   help="Markdown tables (default), JSON, or the error analysis's PNG plot")
    p.add_argument("-o", "--output", default=None, help="the file to write (default: stdout; JOB_ID.png for png)")
    p.set_defaults(func=cmd_report)

    p = client_parser(sub, "predict", "classify image files with a model of a running service")
    p.add_argument("model", help=ref_help)
    p.add_argument("images", nargs="+", help="PNG or JPEG files")
    p.set_defaults(func=cmd_predict)

    p = client_parser(sub, "reconstruct", "a VAE's reconstructions of image files")
    p.add_argument("model", help=ref_help)
    p.add_argument("images", nargs="+", help="PNG or JPEG files")
    p.add_argument("-o", "--out-dir", default=None, help="write each reconstruction as DIR/STEM.png at its "
                   "image's size (default: JSON arrays at the model's size to stdout)")
    p.set_defaults(func=cmd_reconstruct)

    p = client_parser(sub, "embed", "a VAE's latent mean and log-variance of image files")
    p.add_argument("model", help=ref_help)
    p.add_argument("images", nargs="+", help="PNG or JPEG files")
    p.set_defaults(func=cmd_embed)

    p = client_parser(sub, "export", "download a model of a running service as an ONNX file")
    p.add_argument("model", help=ref_help)
    p.add_argument("--part", default="classifier", choices=["classifier", "encoder", "decoder"],
                   help="the classifier (default), or a VAE's encoder or decoder")
    p.add_argument("-o", "--output", default=None, help="the file to write (default: MODEL[-PART].onnx, "
                   "a slash of the model written as -)")
    p.set_defaults(func=cmd_export)

    # `models` (above) lists the architectures this package builds; `model` is the service's registry.
    model = sub.add_parser("model", help="the trained models of a running service: list, show, metrics, weights, "
                           "figure, wasserstein, delete, and their registered names and aliases")
    model_sub = model.add_subparsers(dest="model_command", required=True)

    p = client_parser(model_sub, "list", "list the models, newest first unless --sort")
    p.add_argument("--name", default=None, help="a registered name")
    p.add_argument("--architecture", default=None, choices=MODEL_NAMES)
    p.add_argument("--dataset", default=None, choices=DATASET_NAMES)
    p.add_argument("--condition", default=None, choices=CONDITIONS)
    p.add_argument("--sort", default=None, help="date, accuracy, name, architecture, dataset or condition; a leading "
                   "- sorts descending, written --sort=-accuracy (default: -date)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=cmd_model_list)

    p = client_parser(model_sub, "show", "a model's config, size, training time, final metrics, name, version "
                      "and aliases")
    p.add_argument("model", help=ref_help)
    p.set_defaults(func=cmd_model_show)

    p = client_parser(model_sub, "metrics", "a model's per-epoch metric series")
    p.add_argument("model", help=ref_help)
    p.set_defaults(func=cmd_model_metrics)

    p = client_parser(model_sub, "weights", "download a model's weights (safetensors)")
    p.add_argument("model", help=ref_help)
    p.add_argument("-o", "--output", default=None, help="the file to write (default: MODEL.safetensors)")
    p.set_defaults(func=cmd_model_weights)

    p = client_parser(model_sub, "figure", "one of the paper's figures of a model, as PNG")
    p.add_argument("model", help=ref_help)
    p.add_argument("figure", help="training-curves, kernels, feature-maps, latent-tsne, latent-classifiers, "
                   "reconstructions or confusion-matrix")
    p.add_argument("--index", type=int, default=0, help="feature-maps: the validation image drawn")
    p.add_argument("--image", default=None, help="feature-maps: an image file of your own instead")
    p.add_argument("-o", "--output", default=None, help="the file to write (default: MODEL-FIGURE.png)")
    p.set_defaults(func=cmd_model_figure)

    p = client_parser(model_sub, "wasserstein", "a VAE's sliced Wasserstein-1 report: each class's validation "
                      "images against their reconstructions")
    p.add_argument("model", help=ref_help)
    p.add_argument("--projections", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="skip the paper's per-image min-max scaling")
    p.set_defaults(func=cmd_model_wasserstein)

    p = client_parser(model_sub, "delete", "delete a model and its files")
    p.add_argument("model", help=ref_help)
    p.set_defaults(func=cmd_model_delete)

    p = client_parser(model_sub, "names", "the registered names with their versions and aliases, or one of them")
    p.add_argument("registered_name", nargs="?", default=None, metavar="NAME")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=cmd_model_names)

    p = client_parser(model_sub, "alias", "point NAME@ALIAS at a version of NAME (creating or moving the alias)")
    p.add_argument("registered_name", metavar="NAME")
    p.add_argument("alias")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_model_alias)

    p = client_parser(model_sub, "unalias", "remove NAME@ALIAS (the version it pointed at stays)")
    p.add_argument("registered_name", metavar="NAME")
    p.add_argument("alias")
    p.set_defaults(func=cmd_model_unalias)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
