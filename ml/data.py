"""Datasets as device-resident tensors, and the paper's conditions.

Every split is one float tensor of shape (N, 1, S, S) in the model's input space plus a long
tensor of class indices (0 to K-1). The training loop indexes into them with a permutation, so
there is no per-sample Python, no DataLoader and no PIL on the hot path. The `noisy` condition
is applied per batch on the device (`corrupt`), fresh random corruptions every epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ml.config import DATASET_TITLES, DatasetConfig
from ml.errors import UserError

# torchvision's dataset class of each image set; it reads CLASS/raw/ under the data directory.
TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MissingDataError(UserError):
    """The data set is not where we looked and could not be downloaded."""

    code = "data_missing"


@dataclass
class Dataset:
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    classes: list[int]
    class_names: list[str]
    noisy: bool = False

    def to(self, device: torch.device | str) -> Dataset:
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_val=self.x_val.to(device), y_val=self.y_val.to(device))


def to_model_input(images: Tensor, image_size: int) -> Tensor:
    """uint8 images (N, H, W) in [0, 255] -> float (N, 1, S, S) in [-1, 1], as the paper normalises.

    The one preprocessing path: MNIST for training and images uploaded for prediction both go
    through it, so a model sees at serving time exactly what it saw in training.
    """
    x = images.float().div_(255.0).unsqueeze(1)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    return x.mul_(2.0).sub_(1.0).clamp_(-1.0, 1.0)


def load_images(name: str, data_dir: str | Path, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """All images (uint8, N x 28 x 28) and labels (0-9) of one split of MNIST or Fashion-MNIST."""
    import torchvision.datasets

    folder = TORCHVISION[name]
    root = Path(data_dir).expanduser()
    try:
        images = getattr(torchvision.datasets, folder)(root=str(root), train=train, download=download)
    except RuntimeError as exc:  # torchvision's "Dataset not found", or a failed download
        raw = root / folder / "raw"
        debian = (" Debian's package dataset-fashion-mnist has them, gzipped, in /usr/share/datasets/fashion-mnist:"
                  f" gunzip them into {raw}." if name == "fashion-mnist" else "")
        raise MissingDataError(
            f"{DATASET_TITLES[name]} was not found in {raw} (looked for {', '.join(MNIST_FILES)})"
            + ("" if download else " and downloading is off")
            + f". Point CLASSCOMP_DATA_DIR at a directory holding {folder}/raw/ with those four files,"
            " or set CLASSCOMP_DOWNLOAD=1 on a machine with internet access to fetch them." + debian
        ) from exc
    return images.data, images.targets


def select_classes(images: Tensor, labels: Tensor, classes: list[int]) -> tuple[Tensor, Tensor]:
    """Keep the images of the chosen labels; class index i stands for label classes[i]."""
    index = torch.full((int(labels.max()) + 1,), -1, dtype=torch.long)
    index[torch.tensor(classes)] = torch.arange(len(classes))
    y = index[labels]
    keep = y >= 0
    return images[keep], y[keep]


def resample(x: Tensor, y: Tensor, weights: list[float], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Subsample the classes to sizes in proportion to `weights` (one per class index), keeping as
    many images as possible: the class with the fewest images for its weight keeps them all."""
    indices = [torch.nonzero(y == c).squeeze(1) for c in range(len(weights))]
    available = [len(i) for i in indices]
    limit = min(range(len(weights)), key=lambda c: available[c] / weights[c])
    counts = [available[c] if c == limit else min(available[c], round(available[limit] * weights[c] / weights[limit]))
              for c in range(len(weights))]
    keep = torch.cat([i[torch.randperm(len(i), generator=generator)[:n]] for i, n in zip(indices, counts)])
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

    The imbalance resampling (`cfg.train_weights()`) touches the training split only. For `noisy`,
    the validation split is corrupted once here with a fixed seed (so every epoch is scored on the
    same images) and the training split is corrupted per batch by the training loop.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.name in TORCHVISION:
        if data_dir is None:
            raise MissingDataError(f"no data directory given for {cfg.name}: set CLASSCOMP_DATA_DIR")
        x_train, y_train = select_classes(*load_images(cfg.name, data_dir, True, download), cfg.classes)
        x_val, y_val = select_classes(*load_images(cfg.name, data_dir, False, download), cfg.classes)
        x_train, x_val = to_model_input(x_train, cfg.image_size), to_model_input(x_val, cfg.image_size)
    else:
        x_train, y_train = gaussian_images(cfg, cfg.n_train, generator)
        x_val, y_val = gaussian_images(cfg, cfg.n_val, generator)
    weights = cfg.train_weights()
    if weights is not None:
        x_train, y_train = resample(x_train, y_train, weights, generator)
    noisy = cfg.condition == "noisy"
    if noisy:
        x_val = corrupt(x_val, torch.Generator().manual_seed(cfg.seed + 1))
    return Dataset(x_train, y_train, x_val, y_val, cfg.classes, cfg.class_names, noisy)


# The paper's `noisy` condition is the authors' torchvision Compose (RandomHorizontalFlip,
# RandomVerticalFlip, RandomAffine, RandomPerspective, RandomErasing, GaussianBlur,
# RandomAdjustSharpness, then N(0, 1) noise), which they apply AFTER Normalize((0.5,), (0.5,)),
# i.e. to images in [-1, 1]. So every fill and the erased box are 0, which is mid-grey here, not
# black; and adjust_sharpness clamps its result to [0, 1] as if the image were still in [0, 1],
# lifting the whole -1 background to 0 in the half of the images it touches. That bug is what
# makes the paper's noisy condition hard, so it is reproduced, not fixed. The maths follows
# torchvision's tensor code (0.29) step by step (integer translations and perspective corners,
# nearest then bilinear resampling as two grid_samples, the fill mask multiplied into the
# bilinear result); the only difference is that every image draws its own parameters, on the
# device and through `generator`, with no host sync, as the authors call the Compose per sample.
FLIP_P = 0.5
AFFINE_DEGREES, AFFINE_TRANSLATE, AFFINE_SCALE, AFFINE_SHEAR = 30.0, 0.1, (0.9, 1.1), 10.0
PERSPECTIVE_P, PERSPECTIVE_DISTORTION = 0.5, 0.5
ERASE_P, ERASE_AREA, ERASE_RATIO, ERASE_ATTEMPTS = 0.5, (0.02, 0.2), (0.3, 3.3), 10
BLUR_KERNEL, BLUR_SIGMA = 5, (0.1, 2.0)
SHARPNESS_P, SHARPNESS_FACTOR = 0.5, 2.0
NOISE_STD = 1.0


def _uniform(shape: tuple[int, ...], low: float, high: float, g: torch.Generator, x: Tensor) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=g, device=x.device, dtype=x.dtype)


def _coin(p: float, g: torch.Generator, x: Tensor) -> Tensor:
    """Per-image Bernoulli(p), shaped to broadcast over (N, C, H, W)."""
    return (torch.rand(x.shape[0], generator=g, device=x.device) < p).view(-1, 1, 1, 1)


def _corners(x: Tensor, right: float, bottom: float) -> Tensor:
    """(4, 2) corners (x, y) top-left, top-right, bottom-right, bottom-left of [0, right] x [0, bottom],
    built on the device: a tensor from Python data would be a host-to-device copy, which syncs."""
    corner = torch.arange(4, device=x.device)
    is_right, is_bottom = (corner == 1) | (corner == 2), corner >= 2
    return torch.stack([is_right * right, is_bottom * bottom], -1)


def _to_grid_units(theta: Tensor, x: Tensor) -> Tensor:
    """theta (N, 2, 3) with its rows divided by half the width and height, as torchvision rescales
    it (in float32, before the product) to grid_sample's [-1, 1] coordinates."""
    hgt, wid = x.shape[-2:]
    return torch.stack([theta[:, 0] / (0.5 * wid), theta[:, 1] / (0.5 * hgt)], 1)


def _map_pixels(x: Tensor, theta: Tensor, start: float) -> Tensor:
    """theta (N, K, 3) applied to the homogeneous pixel centres of x (first one at `start`): (N, H, W, K).

    torchvision multiplies a (H*W, 3) grid by theta in a bmm; summed in the same order over an
    outer sum of rows and columns, this gives the same floats without the slow K=3 matmul.
    """
    hgt, wid = x.shape[-2:]
    cols = torch.linspace(start, start + wid - 1, wid, dtype=x.dtype, device=x.device)
    rows = torch.linspace(start, start + hgt - 1, hgt, dtype=x.dtype, device=x.device)
    theta = theta[:, None, None]  # (N, 1, 1, K, 3)
    return theta[..., 0] * cols[:, None] + theta[..., 1] * rows[:, None, None] + theta[..., 2]


def _affine(x: Tensor, angle: Tensor, translate: Tensor, scale: Tensor, shear: Tensor) -> Tensor:
    """torchvision's F.affine about the centre (nearest, fill 0) with per-image angle and x-shear in
    degrees, (N, 2) integer translations and scale; the inverse matrix in float64 as torchvision
    computes it in Python floats."""
    n, _, hgt, wid = x.shape
    rot, sx, s = torch.deg2rad(angle.double()), torch.deg2rad(shear.double()), scale.double()
    a, c = rot.cos(), rot.sin()
    b, d = -a * sx.tan() - c, -c * sx.tan() + a
    tx, ty = translate.double().unbind(-1)
    m0, m1, m3, m4 = d / s, -b / s, -c / s, a / s
    theta = torch.stack([m0, m1, m0 * -tx + m1 * -ty, m3, m4, m3 * -tx + m4 * -ty], -1).view(n, 2, 3).to(x.dtype)
    grid = _map_pixels(x, _to_grid_units(theta, x), 0.5 - 0.5 * wid)
    # With nearest sampling torchvision's fill mask is exactly 0 or 1, so fill 0 is zero padding.
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _perspective(x: Tensor, endpoints: Tensor) -> Tensor:
    """torchvision's F.perspective (bilinear, fill 0) mapping the image corners to per-image integer
    `endpoints` (N, 4, 2), ordered top-left, top-right, bottom-right, bottom-left as (x, y)."""
    n, _, hgt, wid = x.shape
    start = _corners(x, wid - 1, hgt - 1).double()
    ex, ey = endpoints.double().unbind(-1)  # (N, 4) each
    sx, sy = start.unbind(-1)
    zero, one = torch.zeros_like(ex), torch.ones_like(ex)
    rows_x = torch.stack([ex, ey, one, zero, zero, zero, -sx * ex, -sx * ey], -1)
    rows_y = torch.stack([zero, zero, zero, ex, ey, one, -sy * ex, -sy * ey], -1)
    system = torch.stack([rows_x, rows_y], 2).view(n, 8, 8)
    # solve_ex: the four corners are never collinear, and checking would sync with the host.
    coeffs = torch.linalg.solve_ex(system, start.view(1, 8).expand(n, 8))[0].to(x.dtype)
    theta1 = _to_grid_units(coeffs[:, :6].view(n, 2, 3), x)
    theta2 = torch.cat([coeffs[:, 6:], torch.ones_like(coeffs[:, :1])], 1).view(n, 1, 3)
    grid = _map_pixels(x, theta1, 0.5) / _map_pixels(x, theta2, 0.5) - 1.0
    # torchvision resamples a ones channel alongside and multiplies it in, so edge pixels that
    # bilinear already blended with the zero padding are darkened towards the fill a second time.
    sampled = F.grid_sample(
        torch.cat([x, torch.ones_like(x[:, :1])], 1), grid,
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )
    return sampled[:, :-1] * sampled[:, -1:]


def _blur(x: Tensor, sigma: Tensor) -> Tensor:
    """torchvision's F.gaussian_blur with a BLUR_KERNEL-square kernel and per-image sigma, reflect-padded."""
    n, _, hgt, wid = x.shape
    half = (BLUR_KERNEL - 1) * 0.5
    offsets = torch.linspace(-half, half, BLUR_KERNEL, dtype=x.dtype, device=x.device)
    pdf = torch.exp(-0.5 * (offsets / sigma[:, None]).pow(2))
    k1 = pdf / pdf.sum(1, keepdim=True)
    padded = F.pad(x, (BLUR_KERNEL // 2,) * 4, mode="reflect").view(1, n, hgt + 2 * (BLUR_KERNEL // 2), -1)
    return F.conv2d(padded, (k1[:, :, None] * k1[:, None, :])[:, None], groups=n).view(n, 1, hgt, wid)


def _sharpen(x: Tensor) -> Tensor:
    """torchvision's F.adjust_sharpness(x, SHARPNESS_FACTOR): the border keeps its pixels, and the
    blend is clamped to [0, 1] whatever range the image is in."""
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    n, _, hgt, wid = x.shape
    degenerate = x.clone()
    # One group per image: much faster on the CPU than a batch through a single-channel conv.
    interior = F.conv2d(x.reshape(1, n, hgt, wid), kernel.expand(n, 1, 3, 3), groups=n)
    degenerate[..., 1:-1, 1:-1] = interior.view(n, 1, hgt - 2, wid - 2)
    return (SHARPNESS_FACTOR * x + (1.0 - SHARPNESS_FACTOR) * degenerate).clamp(0, 1)


def random_horizontal_flip(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.where(_coin(FLIP_P, g, x), x.flip(-1), x)


def random_vertical_flip(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.where(_coin(FLIP_P, g, x), x.flip(-2), x)


def random_affine(x: Tensor, g: torch.Generator) -> Tensor:
    n, _, hgt, wid = x.shape
    angle = _uniform((n,), -AFFINE_DEGREES, AFFINE_DEGREES, g, x)
    tx = _uniform((n,), -AFFINE_TRANSLATE * wid, AFFINE_TRANSLATE * wid, g, x).round()
    ty = _uniform((n,), -AFFINE_TRANSLATE * hgt, AFFINE_TRANSLATE * hgt, g, x).round()
    scale = _uniform((n,), *AFFINE_SCALE, g, x)
    shear = _uniform((n,), -AFFINE_SHEAR, AFFINE_SHEAR, g, x)
    return _affine(x, angle, torch.stack([tx, ty], -1), scale, shear)


def random_perspective(x: Tensor, g: torch.Generator) -> Tensor:
    n, _, hgt, wid = x.shape
    dx, dy = int(PERSPECTIVE_DISTORTION * (wid // 2)), int(PERSPECTIVE_DISTORTION * (hgt // 2))
    low = _corners(x, wid - dx - 1, hgt - dy - 1)
    offsets = torch.stack([
        torch.randint(0, dx + 1, (n, 4), generator=g, device=x.device),
        torch.randint(0, dy + 1, (n, 4), generator=g, device=x.device),
    ], -1)
    return torch.where(_coin(PERSPECTIVE_P, g, x), _perspective(x, low + offsets), x)


def random_erasing(x: Tensor, g: torch.Generator) -> Tensor:
    """All ERASE_ATTEMPTS of torchvision's rejection loop drawn at once; the first that fits wins, and
    an image where none fits is left alone (never happens here: the largest box is 0.81 of a side)."""
    n, _, hgt, wid = x.shape
    area = hgt * wid * _uniform((n, ERASE_ATTEMPTS), *ERASE_AREA, g, x)
    ratio = _uniform((n, ERASE_ATTEMPTS), math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), g, x).exp()
    h, w = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (h < hgt) & (w < wid)
    first = fits.int().argmax(1, keepdim=True)  # argmax returns the first of equal maxima
    h, w = h.gather(1, first), w.gather(1, first)
    # Integer corners uniform on [0, size - box]; the clamp catches rand * k rounding up to k in float32.
    top = (_uniform((n, 1), 0, 1, g, x) * (hgt - h + 1)).floor().clamp(max=hgt - h)
    left = (_uniform((n, 1), 0, 1, g, x) * (wid - w + 1)).floor().clamp(max=wid - w)
    rows, cols = torch.arange(hgt, device=x.device), torch.arange(wid, device=x.device)
    in_rows = (rows >= top) & (rows < top + h)
    in_cols = (cols >= left) & (cols < left + w)
    box = in_rows[:, :, None] & in_cols[:, None, :] & fits.any(1)[:, None, None]
    return x.masked_fill(box[:, None] & _coin(ERASE_P, g, x), 0.0)


def gaussian_blur(x: Tensor, g: torch.Generator) -> Tensor:
    return _blur(x, _uniform((x.shape[0],), *BLUR_SIGMA, g, x))


def random_adjust_sharpness(x: Tensor, g: torch.Generator) -> Tensor:
    return torch.where(_coin(SHARPNESS_P, g, x), _sharpen(x), x)


def add_gaussian_noise(x: Tensor, g: torch.Generator) -> Tensor:
    return x + NOISE_STD * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


NOISY_STEPS = (
    random_horizontal_flip,
    random_vertical_flip,
    random_affine,
    random_perspective,
    random_erasing,
    gaussian_blur,
    random_adjust_sharpness,
)


def authors_transforms() -> list:
    """The authors' Compose as they wrote it (their notebook's `custom_transforms`), less their final
    N(0, 1) noise: torchvision transforms of one image at a time. It is the reference `corrupt` is
    checked against (tests/ml/test_noise.py) and what benchmarks/gpu.py's authors'-style loop runs."""
    import torchvision.transforms as T

    return [
        T.RandomHorizontalFlip(p=0.5),
        T.RandomVerticalFlip(p=0.5),
        T.RandomAffine(degrees=30, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10),
        T.RandomPerspective(distortion_scale=0.5, p=0.5),
        T.RandomErasing(p=0.5, scale=(0.02, 0.2), ratio=(0.3, 3.3), value=0),
        T.GaussianBlur(kernel_size=(5, 5), sigma=(0.1, 2.0)),
        T.RandomAdjustSharpness(sharpness_factor=2, p=0.5),
    ]


def corrupt(x: Tensor, generator: torch.Generator, augment: bool = True) -> Tensor:
    """The paper's `noisy` condition on a batch of [-1, 1] images, on whatever device x is on.

    With augment=False only the additive N(0, NOISE_STD**2) noise is applied, which is what the
    noise-statistics test checks.
    """
    if augment:
        for step in NOISY_STEPS:
            x = step(x, generator)
    return add_gaussian_noise(x, generator)
