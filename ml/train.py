"""Training: one epoch loop shared by every phase of every model.

A CNN has one phase (cross-entropy). A VAE classifier has two: the VAE itself (MSE + beta KL),
then either a linear head trained with the hinge loss on the frozen latent means (vae-svm) or
K-means on them (vae-kmeans). Each epoch produces one metrics record, handed to `on_epoch`,
which may return True to stop training (the worker uses that for cancellation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.config import SVM_MODELS, RunConfig, TrainingConfig
from ml.data import Dataset, corrupt
from ml.errors import UserError
from ml.models import VAEBase, VAEKMeans, VAESVM, build_model, predict

EpochCallback = Callable[[dict], bool | None]
BatchCallback = Callable[[int, int], None]
EVAL_BATCH = 1024


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0
    stopped: bool = False


def epochs_of(model: str, training: TrainingConfig) -> int:
    """How many epoch records (`on_epoch` calls) training `model` emits: a VAE + SVM adds its
    head's epochs to the VAE's."""
    return training.epochs + (training.head_epochs if model in SVM_MODELS else 0)


def pick_device(requested: str | None = None) -> torch.device:
    """The requested device, or CUDA when usable and the CPU otherwise.

    A CUDA device asked for by name must be usable: training on the CPU instead, hours slower and
    unnoticed, is the failure this refuses.
    """
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type != "cuda":
        return device
    if torch.version.cuda is None:
        raise RuntimeError(
            f"device {requested!r} was requested, but this torch {torch.__version__} is a CPU-only build; "
            "install a CUDA build of torch (the Docker image's default TORCH_INDEX_URL) or use the CPU"
        )
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device {requested!r} was requested, but CUDA is not usable by this torch {torch.__version__} "
            f"(built for CUDA {torch.version.cuda}): either no GPU is visible to this process (in Docker: start "
            "it with docker-compose.gpu.yml and the NVIDIA container toolkit) or the NVIDIA driver is too old "
            "for this CUDA build (upgrade the driver, or build the image with an older CUDA's TORCH_INDEX_URL)"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(
            f"device {requested!r} was requested, but only {torch.cuda.device_count()} CUDA device(s) are visible "
            "to this process (numbered from 0; CUDA_VISIBLE_DEVICES and Docker's device_ids renumber them)"
        )
    return device


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


# A step gets the batch as the model sees it, its labels, and the same batch before the noisy
# condition's corruption (the target of a denoising VAE); it returns the loss, the loss's parts and
# the number of correct predictions (None where there are none).


def cross_entropy_step(
    model: nn.Module, x: Tensor, y: Tensor, _clean: Tensor
) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    logits = model(x)
    return F.cross_entropy(logits.float(), y), {}, (logits.argmax(1) == y).sum()


def vae_step(beta: float) -> Callable:
    def step(vae: VAEBase, x: Tensor, y: Tensor | None, clean: Tensor) -> tuple[Tensor, dict[str, Tensor], None]:
        recon, mu, logvar = vae(x)
        target = clean if vae.denoising else x
        # Summed over pixels and latent dims, averaged over images: with a per-pixel mean the
        # beta-weighted KL would dominate and collapse the latent space that the classifiers use.
        recon_loss = F.mse_loss(recon.float(), target.float(), reduction="sum") / len(x)
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()).float() / len(x)
        return recon_loss + beta * kl, {"recon_loss": recon_loss.detach(), "kl_loss": kl.detach()}, None

    return step


def hinge_step(head: nn.Module, z: Tensor, y: Tensor, _clean: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """One-vs-rest hinge loss: score c is pushed above +1 for class c and below -1 for the others.

    One-vs-rest rather than Crammer-Singer: with two classes it is the binary SVM the paper trains
    (Crammer-Singer's single margin between the true and the best other score is a different loss
    there), it is what scikit-learn's LinearSVC does by default, and a well-tuned one-vs-rest is as
    accurate as the joint multi-class losses (Rifkin & Klautau, JMLR 2004).
    """
    scores = head(z)
    sign = 2.0 * F.one_hot(y, scores.shape[1]).float() - 1.0
    return torch.clamp(1 - sign * scores, min=0).mean(), {}, (scores.argmax(1) == y).sum()


@torch.no_grad()
def accuracy(classify: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, device: torch.device) -> float:
    correct = torch.zeros((), device=y.device, dtype=torch.long)
    for start in range(0, len(x), EVAL_BATCH):
        with _autocast(device):
            correct += (classify(x[start : start + EVAL_BATCH]) == y[start : start + EVAL_BATCH]).sum()
    return correct.item() / len(x)


def run_epochs(
    model: nn.Module,
    data: Dataset,
    step: Callable,
    tc: TrainingConfig,
    device: torch.device,
    *,
    phase: str,
    epochs: int,
    epoch_offset: int,
    total_epochs: int,
    evaluate: Callable[[], dict[str, float]],
    history: list[dict],
    on_epoch: EpochCallback | None,
    on_batch: BatchCallback | None,
    grad_clip: float = 0.0,
) -> bool:
    """Train `model` for `epochs` epochs; append a metrics record per epoch; return True if asked to stop.

    `grad_clip` > 0 clips the global gradient norm; the recorded `grad_norm` is the norm before clipping.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    cuda = device.type == "cuda"
    # Fused Adam updates every parameter in one kernel; on CUDA the per-tensor loop is launch-bound.
    optimizer = torch.optim.Adam(params, lr=tc.learning_rate, fused=cuda)
    # The head is a linear map on the latent: nothing to gain from compiling it.
    forward = torch.compile(model) if tc.compile and cuda and phase != "head" else model
    generator = torch.Generator(device=device).manual_seed(tc.seed)
    n = len(data.x_train)
    n_steps = -(-n // tc.batch_size)
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        # Sums stay on the device and are read once per epoch: no host sync per step.
        sums: dict[str, Tensor] = {}
        correct = torch.zeros((), device=device, dtype=torch.long)
        order = torch.randperm(n, generator=generator, device=device)
        for i in range(n_steps):
            idx = order[i * tc.batch_size : (i + 1) * tc.batch_size]
            clean, y = data.x_train[idx], data.y_train[idx]
            x = corrupt(clean, generator) if data.noisy else clean
            with _autocast(device):
                loss, parts, n_correct = step(forward, x, y, clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            optimizer.step()
            for key, value in {"loss": loss.detach(), "grad_norm": grad_norm, **parts}.items():
                sums[key] = sums.get(key, 0) + value.float()
            if n_correct is not None:
                correct += n_correct
            if on_batch:
                on_batch(i + 1, n_steps)
        record = {"epoch": epoch_offset + epoch, "epochs": total_epochs, "phase": phase}
        record.update({key: value.item() / n_steps for key, value in sums.items()})
        if phase != "vae":
            record["train_accuracy"] = correct.item() / n
        record.update(evaluate())
        record["epoch_seconds"] = time.perf_counter() - started
        history.append(record)
        if on_epoch and on_epoch(record):
            return True
    return False


@torch.no_grad()
def latent_means(vae: VAEBase, x: Tensor, device: torch.device) -> Tensor:
    vae.eval()
    chunks = []
    for start in range(0, len(x), EVAL_BATCH):
        with _autocast(device):
            chunks.append(vae.encode(x[start : start + EVAL_BATCH])[0].float())
    return torch.cat(chunks)


def cluster_labels(clusters: np.ndarray, labels: np.ndarray, n_clusters: int, n_classes: int) -> np.ndarray:
    """The class each cluster stands for: a one-to-one assignment maximising agreement with the
    training labels (every class gets a cluster), then the majority label for any extra cluster.

    A majority vote alone can give every cluster the same class: under class imbalance the larger
    class is the majority in both clusters, and the model then predicts one class for everything.
    """
    from scipy.optimize import linear_sum_assignment

    votes = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(votes, (clusters, labels), 1)
    mapping = votes.argmax(1)
    rows, cols = linear_sum_assignment(votes, maximize=True)
    mapping[rows] = cols
    return mapping


def fit_kmeans(model: VAEKMeans, z_train: Tensor, y_train: Tensor, seed: int) -> None:
    """K-means on the training latents (their directions, for a spherical model), its clusters labelled by
    `cluster_labels`."""
    from sklearn.cluster import KMeans

    k = model.centres.shape[0]
    if len(z_train) < k:
        raise UserError(f"K-means needs at least {k} training images for its {k} clusters, got {len(z_train)} "
                        "(after the condition's resampling)", code="too_few_images")
    if model.spherical:
        model.origin.copy_(z_train.median(dim=0).values)
    # scikit-learn takes seeds below 2**32; ours go up to 2**63.
    km = KMeans(n_clusters=k, n_init=10, random_state=seed % 2**32).fit(model.features(z_train).cpu().numpy())
    mapping = cluster_labels(km.labels_, y_train.cpu().numpy(), k, model.num_classes)
    model.centres.copy_(torch.as_tensor(km.cluster_centers_, dtype=torch.float32))
    model.cluster_labels.copy_(torch.as_tensor(mapping))


def load_encoder(unet: nn.Module, resnet_state: dict[str, Tensor]) -> None:
    """Start a UNet's encoder from a trained resnet's stages (unet-pretrained)."""
    prefix = "stages."
    stages = {k[len(prefix) :]: v for k, v in resnet_state.items() if k.startswith(prefix)}
    try:
        unet.stages.load_state_dict(stages)
    except RuntimeError as exc:
        raise ValueError(
            "init_from must be a resnet trained with the same width as this unet-pretrained "
            f"(its stage weights do not fit: {str(exc).splitlines()[0]})"
        ) from exc


def train(
    cfg: RunConfig,
    data: Dataset,
    *,
    device: str | torch.device | None = None,
    init_state: dict[str, Tensor] | None = None,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainResult:
    """Train the model `cfg` describes on `data`. `init_state` is the resnet state dict a
    unet-pretrained starts from. Reproducible under `cfg.training.seed` on the CPU."""
    device = pick_device(str(device) if device else None)
    tc = cfg.training
    torch.manual_seed(tc.seed)
    model = build_model(cfg)
    if cfg.model == "unet-pretrained":
        if init_state is None:
            raise ValueError("unet-pretrained needs the state of a trained resnet (init_state)")
        load_encoder(model, init_state)
    model.to(device)
    if device.type == "cuda":
        # Every batch has the same shape, so cuDNN's one-off search for the fastest kernels pays.
        torch.backends.cudnn.benchmark = True
        if not isinstance(model, (VAESVM, VAEKMeans)):
            model.to(memory_format=torch.channels_last)
    data = data.to(device)
    started = time.perf_counter()
    result = TrainResult(model=model)
    common = dict(history=result.history, on_epoch=on_epoch, on_batch=on_batch)

    def val_accuracy() -> dict[str, float]:
        return {"val_accuracy": accuracy(lambda x: predict(model, x)["class_index"], data.x_val, data.y_val, device)}

    if not isinstance(model, (VAESVM, VAEKMeans)):
        result.stopped = run_epochs(
            model, data, cross_entropy_step, tc, device, phase="classifier", epochs=tc.epochs,
            epoch_offset=0, total_epochs=tc.epochs, evaluate=val_accuracy, **common,
        )
    else:
        total = epochs_of(cfg.model, tc)
        vae_loss = vae_step(tc.beta)

        # The latent classifiers see the training images as the VAE saw them: corrupted, for noisy.
        x_train = corrupt(data.x_train, torch.Generator(device=device).manual_seed(tc.seed)) if data.noisy else data.x_train

        @torch.no_grad()
        def evaluate_vae() -> dict[str, float]:
            """Validation loss; for vae-kmeans also K-means refitted on this epoch's latents, so every
            epoch reports how separable the latent space has become and the last fit is the model's."""
            model.vae.eval()
            total = torch.zeros((), device=device)
            for start in range(0, len(data.x_val), EVAL_BATCH):
                batch = data.x_val[start : start + EVAL_BATCH]
                # Only corrupted validation images exist: a denoising VAE is scored against them too.
                total += vae_loss(model.vae, batch, None, batch)[0] * len(batch)
            metrics = {"val_loss": total.item() / len(data.x_val)}
            if isinstance(model, VAEKMeans):
                fit_kmeans(model, latent_means(model.vae, x_train, device), data.y_train, tc.seed)
                metrics["train_accuracy"] = accuracy(lambda x: predict(model, x)["class_index"], x_train, data.y_train, device)
                metrics.update(val_accuracy())
            return metrics

        result.stopped = run_epochs(
            model.vae, data, vae_loss, tc, device, phase="vae", epochs=tc.epochs,
            epoch_offset=0, total_epochs=total, evaluate=evaluate_vae, grad_clip=tc.vae_grad_clip, **common,
        )
        if isinstance(model, VAESVM) and not result.stopped:
            z_val = latent_means(model.vae, data.x_val, device)
            latents = replace(data, x_train=latent_means(model.vae, x_train, device), x_val=z_val, noisy=False)
            result.stopped = run_epochs(
                model.head, latents, hinge_step, tc, device, phase="head", epochs=total - tc.epochs,
                epoch_offset=tc.epochs, total_epochs=total, evaluate=val_accuracy, **common,
            )
    model.eval()
    result.seconds = time.perf_counter() - started
    for record in result.history:
        result.final.update({k: v for k, v in record.items() if k not in ("epoch", "epochs", "phase", "epoch_seconds")})
    return result
