"""Datasets as device-resident tensors, and the paper's conditions.

Every split is one float tensor of shape (N, 1, S, S) in the model's input space plus a long
tensor of class indices (0 or 1). The training loop indexes into them with a permutation, so
there is no per-sample Python, no DataLoader and no PIL on the hot path. The `noisy` condition
is applied per batch on the device (`corrupt`), fresh random corruptions every epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ml.config import DatasetConfig

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MissingDataError(RuntimeError):
    """The data set is not where we looked and could not be downloaded."""


@dataclass
class Dataset:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    classes: list[int]
    noisy: bool = False

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.x_train.to(device), self.y_train.to(device), self.x_val.to(device), self.y_val.to(device),
            self.classes, self.noisy,
        )


def to_model_input(images: Tensor, image_size: int) -> Tensor:
    """uint8 images (N, H, W) in [0, 255] -> float (N, 1, S, S) in [-1, 1], as the paper normalises.

    The one preprocessing path: MNIST for training and images uploaded for prediction both go
    through it, so a model sees at serving time exactly what it saw in training.
    """
    x = images.float().div_(255.0).unsqueeze(1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def load_mnist_digits(data_dir: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """All MNIST images (uint8, N x 28 x 28) and digit labels of one split."""
    from torchvision.datasets import MNIST

    root = Path(data_dir).expanduser()
    try:
        mnist = MNIST(root=str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found", or a failed download
        raw = root / "MNIST" / "raw"
        raise MissingDataError(
            f"MNIST was not found in {raw} (looked for {', '.join(MNIST_FILES)})"
            + ("" if download else " and downloading is off")
            + ". Point CLASSCOMP_DATA_DIR at a directory holding MNIST/raw/ with those four files,"
            " or set CLASSCOMP_DOWNLOAD=1 on a machine with internet access to fetch them."
        ) from exc
    return mnist.data, mnist.targets


def select_digits(images: Tensor, digits: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
    """Keep the two chosen digits; class index i stands for digit classes[i]."""
    keep = (digits == classes[0]) | (digits == classes[1])
    return images[keep], (digits[keep] == classes[1]).long()


def resample_imbalance(x: Tensor, y: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Subsample one class so that `fraction` of the result is class 1, keeping as much data as possible."""
    idx0 = torch.nonzero(y == 0).squeeze(1)
    idx1 = torch.nonzero(y == 1).squeeze(1)
    n0, n1 = len(idx0), len(idx1)
    if n1 * (1 - fraction) / fraction <= n0:
        n0 = round(n1 * (1 - fraction) / fraction)
    else:
        n1 = round(n0 * fraction / (1 - fraction))
    pick0 = idx0[torch.randperm(len(idx0), generator=generator)[:n0]]
    pick1 = idx1[torch.randperm(len(idx1), generator=generator)[:n1]]
    keep = torch.cat([pick0, pick1])
    keep = keep[torch.randperm(len(keep), generator=generator)]
    return x[keep], y[keep]


def gaussian_images(cfg: DatasetConfig, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """n images, half per class, class c ~ N(mean_c, diag(std_c**2)) independently per pixel."""
    s = cfg.image_size
    y = torch.arange(n) % 2
    y = y[torch.randperm(n, generator=generator)]
    mean = torch.stack([torch.as_tensor(m, dtype=torch.float32).expand(s * s) for m in cfg.mean])
    std = torch.stack([torch.as_tensor(v, dtype=torch.float32).expand(s * s) for v in cfg.std])
    x = mean[y] + std[y] * torch.randn(n, s * s, generator=generator)
    return x.view(n, 1, s, s), y


def load_dataset(cfg: DatasetConfig, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """The train and validation splits of `cfg`, with its condition applied (on the CPU; call `.to`).

    The imbalance resampling touches the training split only. For `noisy`, the validation split
    is corrupted once here with a fixed seed (so every epoch is scored on the same images) and
    the training split is corrupted per batch by the training loop.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.name == "mnist":
        if data_dir is None:
            raise MissingDataError("no data directory given for MNIST: set CLASSCOMP_DATA_DIR")
        x_train, y_train = select_digits(*load_mnist_digits(data_dir, True, download), cfg.classes)
        x_val, y_val = select_digits(*load_mnist_digits(data_dir, False, download), cfg.classes)
        x_train, x_val = to_model_input(x_train, cfg.image_size), to_model_input(x_val, cfg.image_size)
    else:
        x_train, y_train = gaussian_images(cfg, cfg.n_train, generator)
        x_val, y_val = gaussian_images(cfg, cfg.n_val, generator)
    if cfg.condition == "imbalance":
        x_train, y_train = resample_imbalance(x_train, y_train, cfg.imbalance, generator)
    noisy = cfg.condition == "noisy"
    if noisy:
        x_val = corrupt(x_val, torch.Generator().manual_seed(cfg.seed + 1))
    return Dataset(x_train, y_train, x_val, y_val, cfg.classes, noisy)


# The paper's corruption: torchvision's RandomHorizontalFlip, RandomVerticalFlip, RandomAffine,
# RandomPerspective, RandomErasing, GaussianBlur and RandomAdjustSharpness, then additive N(0, 1)
# noise. torchvision draws one set of parameters per call; here every image gets its own, drawn
# on the device, so a whole batch is corrupted in a handful of kernels.
FLIP_P = 0.5
MAX_ROTATION_DEG = 15.0
MAX_TRANSLATE = 0.1
SCALE_RANGE = (0.9, 1.1)
PERSPECTIVE_P, PERSPECTIVE_DISTORTION = 0.5, 0.3
ERASE_P, ERASE_AREA, ERASE_ASPECT = 0.5, (0.02, 0.2), (0.3, 3.3)
BLUR_KERNEL, BLUR_SIGMA = 3, (0.1, 2.0)
SHARPNESS_P, SHARPNESS_FACTOR = 0.5, 2.0
NOISE_STD = 1.0


def _uniform(n: int, low: float, high: float, g: torch.Generator, device: torch.device) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _coin(n: int, p: float, g: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=g, device=device) < p


def _warp(x: Tensor, g: torch.Generator) -> Tensor:
    """Per-image flips, affine map and perspective distortion as one homography and one grid_sample."""
    n, device = x.shape[0], x.device
    angle = torch.deg2rad(_uniform(n, -MAX_ROTATION_DEG, MAX_ROTATION_DEG, g, device))
    scale = _uniform(n, *SCALE_RANGE, g, device)
    flip_x = torch.where(_coin(n, FLIP_P, g, device), -1.0, 1.0)
    flip_y = torch.where(_coin(n, FLIP_P, g, device), -1.0, 1.0)
    h = torch.zeros(n, 3, 3, device=device)
    h[:, 0, 0] = torch.cos(angle) / scale * flip_x
    h[:, 0, 1] = -torch.sin(angle) / scale
    h[:, 1, 0] = torch.sin(angle) / scale
    h[:, 1, 1] = torch.cos(angle) / scale * flip_y
    h[:, 0, 2] = _uniform(n, -2 * MAX_TRANSLATE, 2 * MAX_TRANSLATE, g, device)
    h[:, 1, 2] = _uniform(n, -2 * MAX_TRANSLATE, 2 * MAX_TRANSLATE, g, device)
    tilt = _coin(n, PERSPECTIVE_P, g, device).float() * PERSPECTIVE_DISTORTION
    h[:, 2, 0] = _uniform(n, -1, 1, g, device) * tilt
    h[:, 2, 1] = _uniform(n, -1, 1, g, device) * tilt
    h[:, 2, 2] = 1.0
    size = x.shape[-1]
    lin = torch.linspace(-1, 1, size, device=device)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    points = torch.stack([xx, yy, torch.ones_like(xx)], dim=-1).view(1, -1, 3)  # (1, S*S, 3)
    mapped = points @ h.transpose(1, 2)
    grid = (mapped[..., :2] / mapped[..., 2:].clamp(min=1e-3)).view(n, size, size, 2)
    # Background outside the source image is black (-1), as torchvision fills with 0 before normalising.
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=True) - 1


def _erase(x: Tensor, g: torch.Generator) -> Tensor:
    n, size, device = x.shape[0], x.shape[-1], x.device
    area = _uniform(n, *ERASE_AREA, g, device) * size * size
    log_aspect = _uniform(n, math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1]), g, device)
    h = (area * log_aspect.exp()).sqrt().clamp(1, size)
    w = (area / log_aspect.exp()).sqrt().clamp(1, size)
    top = torch.rand(n, generator=g, device=device) * (size - h)
    left = torch.rand(n, generator=g, device=device) * (size - w)
    idx = torch.arange(size, device=device)
    rows = (idx >= top[:, None]) & (idx < (top + h)[:, None])
    cols = (idx >= left[:, None]) & (idx < (left + w)[:, None])
    box = rows[:, :, None] & cols[:, None, :] & _coin(n, ERASE_P, g, device)[:, None, None]
    return x.masked_fill(box[:, None], 0.0)


def _depthwise(x: Tensor, kernels: Tensor) -> Tensor:
    """Convolve image i with kernels[i] (n, k, k), replicate-padded, in one grouped conv."""
    n, _, s, _ = x.shape
    k = kernels.shape[-1]
    padded = F.pad(x.view(1, n, s, s), (k // 2,) * 4, mode="replicate")
    return F.conv2d(padded, kernels[:, None], groups=n).view(n, 1, s, s)


def _blur(x: Tensor, g: torch.Generator) -> Tensor:
    n, device = x.shape[0], x.device
    sigma = _uniform(n, *BLUR_SIGMA, g, device)
    offsets = torch.arange(BLUR_KERNEL, device=device) - BLUR_KERNEL // 2
    k1 = torch.exp(-(offsets[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    k1 = k1 / k1.sum(1, keepdim=True)
    return _depthwise(x, k1[:, :, None] * k1[:, None, :])


def _sharpen(x: Tensor, g: torch.Generator) -> Tensor:
    n, device = x.shape[0], x.device
    smooth = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=device) / 13
    degenerate = _depthwise(x, smooth.expand(n, 3, 3))
    sharpened = (degenerate + SHARPNESS_FACTOR * (x - degenerate)).clamp(-1, 1)
    return torch.where(_coin(n, SHARPNESS_P, g, device)[:, None, None, None], sharpened, x)


def corrupt(x: Tensor, generator: torch.Generator, augment: bool = True) -> Tensor:
    """The paper's `noisy` condition on a batch of [-1, 1] images, on whatever device x is on.

    With augment=False only the additive N(0, NOISE_STD**2) noise is applied, which is what the
    noise-statistics test checks.
    """
    if augment:
        x = _sharpen(_blur(_erase(_warp(x, generator), generator), generator), generator)
    return x + NOISE_STD * torch.randn(x.shape, generator=generator, device=x.device)
