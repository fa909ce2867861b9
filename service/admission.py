"""Admission control: what this deployment lets a job ask for, decided before the job is queued.

The job's dataclasses (ml/config.py and the analysis and experiment configs) refuse what is invalid in
itself: NaN, a negative size, an unknown model. This module refuses what is valid but more than this
deployment affords, each with the setting that decides it:

- sizes over the CLASSCOMP_JOB_MAX_* caps: 422 naming the field;
- an estimated memory need over CLASSCOMP_WORKER_MEMORY_BYTES: 422 with the estimate and the budget;
- a submission while CLASSCOMP_MAX_QUEUED_JOBS jobs wait: 429 with Retry-After.

Building each network on the meta device for the estimate is also what checks that it can be built at
all (its image size fits its poolings). How long a job may run is enforced by the worker, from the
time limits the job's message carries (service.queue.send_job).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from sqlalchemy.orm import Session
from torch import nn

from ml.config import RunConfig
from ml.models import VAEKMeans, VAESVM, build_model
from service import registry
from service.errors import ApiError
from service.registry import JobStatus
from service.schemas import ErrorAnalysisJob, ExperimentJob, TrainJob
from service.settings import Settings

# What a client is told to wait when the queue is full: jobs take minutes, and how many minutes this
# one waits for is not known here.
RETRY_AFTER_SECONDS = 60

FLOAT_BYTES = 4
# Adam keeps, for every trained parameter, the weight, its gradient and two moments.
TRAINED_PARAMETER_COPIES = 4
# The backward pass keeps every module's output and makes a gradient as large for each.
BACKWARD_FACTOR = 2
# Images of each label in the training and test splits: the data sets are fixed, so a job's image
# count is known without reading them.
IMAGES_PER_CLASS = {
    "mnist": ((5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
              (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)),
    "fashion-mnist": ((6000,) * 10, (1000,) * 10),
}
# Stands in for the resnet an experiment's unet-pretrained will start from: it does not exist yet.
PLACEHOLDER_ID = "0" * 32

Job = TrainJob | ErrorAnalysisJob | ExperimentJob


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a worker holds at the peak of training one network (the validation pass, without
    gradients and in chunks, is not counted)."""

    parameters: int  # every parameter as a float32, and three more copies of those trained (gradient, Adam's moments)
    activations: int  # every module's output at the training batch size, times BACKWARD_FACTOR
    images: int  # the training and validation images, resident as float32 for the whole training

    @property
    def total(self) -> int:
        return self.parameters + self.activations + self.images


def network_memory(cfg: RunConfig) -> tuple[int, int]:
    """(parameter bytes, activation bytes) of training `cfg`'s network, from its shapes: it is built and
    run on the meta device, where tensors have sizes but no memory. A ValueError if it cannot be built."""
    with torch.device("meta"), torch.no_grad():
        model = build_model(cfg)
        parameters = sum(p.numel() * (TRAINED_PARAMETER_COPIES if p.requires_grad else 1) for p in model.parameters())
        # A VAE classifier trains its VAE on images; its head then trains on latent means, which cost next to nothing.
        trained: nn.Module = model.vae if isinstance(model, (VAESVM, VAEKMeans)) else model
        outputs = 0

        def count(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            nonlocal outputs
            outputs += output.numel()

        # Leaves only: a container's output is its last child's, already counted.
        hooks = [m.register_forward_hook(count) for m in trained.modules() if next(m.children(), None) is None]
        size = cfg.dataset.image_size
        # In eval mode the shapes are those of training, without batch statistics to update.
        trained.eval()(torch.empty(cfg.training.batch_size, 1, size, size))
        for hook in hooks:
            hook.remove()
    return parameters * FLOAT_BYTES, outputs * FLOAT_BYTES * BACKWARD_FACTOR


def image_memory(cfg: RunConfig) -> int:
    """Bytes of the training and validation images of `cfg`, as ml.data.load_dataset keeps them."""
    d = cfg.dataset
    if d.name in IMAGES_PER_CLASS:
        train_images, test_images = IMAGES_PER_CLASS[d.name]
        n_train = sum(train_images[label] for label in d.classes)
        n_val = sum(test_images[label] for label in d.classes)
    else:
        n_train, n_val = d.n_train, d.n_val
    # Under noisy, a VAE's latent classifier reads a corrupted copy of the training images.
    copies = 2 if d.condition == "noisy" and "vae" in cfg.model else 1
    return (copies * n_train + n_val) * d.image_size**2 * FLOAT_BYTES


def estimate(cfg: RunConfig) -> MemoryEstimate:
    return MemoryEstimate(*network_memory(cfg), image_memory(cfg))


def runs(job: Job) -> list[RunConfig]:
    """Every training the job does, one after the other (an error analysis's repeats differ only in seeds)."""
    if isinstance(job, TrainJob):
        return [job.run_config()]
    if isinstance(job, ExperimentJob):
        return [job.run_config(model, condition, init_from=PLACEHOLDER_ID if model == "unet-pretrained" else None)
                for model, condition in job.cells()]
    data = replace(job.dataset, n_train=job.n_train, n_val=job.n_eval)
    return [RunConfig(model=model, dataset=data, training=job.training) for model in job.models]


def check_caps(job: Job, settings: Settings) -> None:
    t, d = job.training, job.dataset
    caps = [
        ("training.epochs", t.epochs, "job_max_epochs"),
        ("training.head_epochs", t.head_epochs, "job_max_epochs"),
        ("training.batch_size", t.batch_size, "job_max_batch_size"),
        ("training.width", t.width, "job_max_width"),
        ("dataset.image_size", d.image_size, "job_max_image_size"),
    ]
    # Only the sizes used: an error analysis draws n_train and n_eval images, not its dataset's, and MNIST
    # has the images it has.
    if isinstance(job, ErrorAnalysisJob):
        caps += [("n_train", job.n_train, "job_max_samples"), ("n_eval", job.n_eval, "job_max_samples"),
                 ("repeats", job.repeats, "job_max_repeats")]
    elif d.name == "gaussian":
        caps += [("dataset.n_train", d.n_train, "job_max_samples"), ("dataset.n_val", d.n_val, "job_max_samples")]
    for field, value, setting in caps:
        limit = getattr(settings, setting)
        if value > limit:
            raise ApiError(422, "invalid_request",
                           f"{field}: {value} is over this deployment's limit of {limit} (CLASSCOMP_{setting.upper()})")


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def check_memory(job: Job, settings: Settings) -> None:
    """Each training's estimated memory fits the worker's budget; the message names the field to lower
    for the largest part of the estimate."""
    networks: dict[str, tuple[int, int]] = {}  # an experiment's conditions share each model's network
    for cfg in runs(job):
        try:
            if cfg.model not in networks:
                networks[cfg.model] = network_memory(cfg)
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from exc
        need = MemoryEstimate(*networks[cfg.model], image_memory(cfg))
        budget = settings.worker_memory_bytes
        if need.total <= budget:
            continue
        parts = {"training.width": need.parameters, "training.batch_size": need.activations,
                 "dataset.image_size": need.images}
        field = max(parts, key=parts.get)
        where = f" under {cfg.dataset.condition}" if isinstance(job, ExperimentJob) else ""
        raise ApiError(
            422, "invalid_request",
            f"{field}: training {cfg.model}{where} needs an estimated {_size(need.total)} ({need.total} bytes: "
            f"{_size(need.parameters)} of weights, gradients and Adam's moments, {_size(need.activations)} of "
            f"activations at batch size {cfg.training.batch_size}, {_size(need.images)} of images), over the "
            f"worker memory budget of {_size(budget)} ({budget} bytes, CLASSCOMP_WORKER_MEMORY_BYTES); lower "
            "training.batch_size, training.width, dataset.image_size or the number of images",
        )


def check_queue(session: Session, settings: Settings) -> None:
    """Counted, not reserved: submissions racing for the last free place may all get it."""
    queued = registry.count_jobs_by_status(session).get(JobStatus.queued, 0)
    if queued >= settings.max_queued_jobs:
        raise ApiError(429, "queue_full",
                       f"{queued} jobs are queued, this deployment's limit (CLASSCOMP_MAX_QUEUED_JOBS); "
                       f"submit again once some have started", headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def admit(session: Session, job: Job, settings: Settings) -> None:
    """Refuse the job (ApiError) unless this deployment affords it: caps, then memory, then queue room,
    so a job that could never run is told so rather than to retry."""
    check_caps(job, settings)
    check_memory(job, settings)
    check_queue(session, settings)
