"""Sliced Wasserstein-1 distance between two sets of samples (paper eq. 1-2).

The paper compares images with their VAE reconstructions by projecting both sets on random
directions of the unit sphere and averaging the exact 1-D Wasserstein-1 distance (eq. 1) of
the projections (eq. 2). Everything here is vectorised over projections so that thousands of
directions on 4096-pixel images cost one matmul and one sort per chunk of directions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Upper bound on the projected values held at once, (n + m) * chunk; 2**25 float32 is 128 MiB.
_MAX_PROJECTED_ELEMENTS = 2**25


@dataclass(frozen=True)
class SlicedWasserstein:
    """Monte-Carlo estimate of SW_1: the mean over projections and its standard error."""

    mean: float
    std_error: float
    n_projections: int


def wasserstein_1d(u: Tensor, v: Tensor) -> Tensor:
    """Exact W1 between empirical distributions sampled along the last dimension.

    Leading dimensions are batch dimensions, so (P, n) against (P, m) gives (P,). W1 is the
    integral of |F_u^-1 - F_v^-1| over (0, 1] (eq. 1); both quantile functions are step
    functions, so the integral is an exact weighted sum over the merged breakpoints.
    """
    if u.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"batch shapes differ: {tuple(u.shape[:-1])} vs {tuple(v.shape[:-1])}")
    n, m = u.shape[-1], v.shape[-1]
    if n == 0 or m == 0:
        raise ValueError("each distribution needs at least one sample")
    u_sorted = torch.sort(u, dim=-1).values
    v_sorted = torch.sort(v, dim=-1).values
    if n == m:
        return (u_sorted - v_sorted).abs().mean(dim=-1)
    u_index, v_index, weights = _quantile_steps(n, m, u.device)
    gaps = (u_sorted[..., u_index] - v_sorted[..., v_index]).abs()
    return gaps @ weights.to(gaps.dtype)


def _quantile_steps(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Sample indices and interval lengths of the two quantile step functions on (0, 1].

    The breakpoints i/n and j/m do not depend on the data, so they are computed once in
    integer units of 1/(n*m): exact, and shared by every projection of the batch.
    """
    breakpoints = torch.cat(
        [
            torch.arange(1, n + 1, device=device, dtype=torch.int64) * m,
            torch.arange(1, m + 1, device=device, dtype=torch.int64) * n,
        ]
    )
    breakpoints = torch.unique(breakpoints)  # sorted; ends at n*m
    lengths = torch.diff(breakpoints, prepend=breakpoints.new_zeros(1))
    # On the interval ending at breakpoint T the quantile of u is its ceil(T / m)-th sample.
    u_index = torch.div(breakpoints + m - 1, m, rounding_mode="floor") - 1
    v_index = torch.div(breakpoints + n - 1, n, rounding_mode="floor") - 1
    return u_index, v_index, lengths.to(torch.float64) / (n * m)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    n_projections: int = 100,
    seed: int | None = 0,
    normalize: bool = False,
    chunk_size: int | None = None,
) -> SlicedWasserstein:
    """Sliced W1 between sample sets x (n, ...) and y (m, ...), flattened per sample.

    Directions are normalised Gaussians, i.e. uniform on the unit sphere (eq. 2), drawn from a
    generator on x's device so a seed gives the same directions on every call. `normalize`
    applies the paper's per-image min-max scaling to [0, 1] first, which makes the distance
    blind to each image's brightness and contrast. `chunk_size` bounds how many projections
    are held at once; None picks a size that keeps the projected values near 128 MiB.
    """
    if n_projections < 2:
        raise ValueError("n_projections must be at least 2 for a standard error")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    x_flat, y_flat = _as_sample_matrices(x, y)
    if normalize:
        x_flat, y_flat = _min_max_rows(x_flat), _min_max_rows(y_flat)
    directions = _random_directions(
        x_flat.shape[1], n_projections, seed, x_flat.device, x_flat.dtype
    )
    distances = _projected_distances(x_flat, y_flat, directions, chunk_size).to(torch.float64)
    return SlicedWasserstein(
        mean=distances.mean().item(),
        std_error=(distances.std() / math.sqrt(n_projections)).item(),
        n_projections=n_projections,
    )


def _as_sample_matrices(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten images to rows on x's device in a float dtype (uint8 images become float32)."""
    if x.dim() < 1 or y.dim() < 1 or x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError("x and y need at least one sample each along dimension 0")
    x_flat = x.reshape(x.shape[0], -1)
    y_flat = y.reshape(y.shape[0], -1).to(x.device)
    if x_flat.shape[1] != y_flat.shape[1]:
        raise ValueError(
            f"samples have different sizes: {tuple(x.shape[1:])} vs {tuple(y.shape[1:])}"
        )
    dtype = torch.promote_types(x_flat.dtype, y_flat.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return x_flat.to(dtype), y_flat.to(dtype)


def _min_max_rows(rows: Tensor) -> Tensor:
    """Scale each row to [0, 1]; a constant row has no contrast to keep and becomes zeros."""
    low = rows.amin(dim=1, keepdim=True)
    spread = rows.amax(dim=1, keepdim=True) - low
    safe_spread = torch.where(spread > 0, spread, torch.ones_like(spread))
    return (rows - low) / safe_spread


def _random_directions(
    dim: int, count: int, seed: int | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Unit vectors as the rows of a (count, dim) matrix, uniform on the sphere.

    All directions are drawn at once so the result does not depend on chunk_size.
    """
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    gaussian = torch.randn(count, dim, generator=generator, device=device, dtype=dtype)
    return gaussian / torch.linalg.vector_norm(gaussian, dim=1, keepdim=True)


def _projected_distances(
    x: Tensor, y: Tensor, directions: Tensor, chunk_size: int | None
) -> Tensor:
    """Exact 1-D W1 of x and y projected on each direction, one matmul per chunk."""
    n_samples = x.shape[0] + y.shape[0]
    n_projections = directions.shape[0]
    if chunk_size is None:
        chunk_size = max(1, _MAX_PROJECTED_ELEMENTS // n_samples)
    both_t = torch.cat([x, y]).T
    distances = []
    for start in range(0, n_projections, chunk_size):
        projected = directions[start : start + chunk_size] @ both_t  # (chunk, n + m)
        distances.append(wasserstein_1d(projected[:, : x.shape[0]], projected[:, x.shape[0] :]))
    return torch.cat(distances)
