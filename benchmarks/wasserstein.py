"""Time our sliced W1 against POT's on 1000 x 4096 vs 1000 x 4096 (MNIST-sized 64 x 64 images).

Run from the repository root: `PYTHONPATH=. python benchmarks/wasserstein.py [--device cuda]`.
On CPU POT gets numpy arrays (its usual input); on CUDA it gets the CUDA tensors, which it
handles through its torch backend, so both sides run on the same device.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypeVar

import ot
import torch

from ml.analysis import sliced_wasserstein

N_SAMPLES, DIM = 1000, 4096
PROJECTIONS = (100, 1000)
T = TypeVar("T")


def best_time(run: Callable[[], T], device: torch.device, repeats: int = 3) -> tuple[float, T]:
    """Best wall time of `repeats` runs after one warm-up, and the result of the last run."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    device = torch.device(parser.parse_args().device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available")

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(N_SAMPLES, DIM, generator=generator)
    y = torch.rand(N_SAMPLES, DIM, generator=generator) ** 2
    x, y = x.to(device), y.to(device)
    pot_x, pot_y = (x.numpy(), y.numpy()) if device.type == "cpu" else (x, y)

    print(f"{N_SAMPLES} x {DIM} vs {N_SAMPLES} x {DIM}, float32, device={device}, "
          f"torch threads={torch.get_num_threads()}, POT {ot.__version__}")
    print("The two draw different random directions, so their SW1 values agree within")
    print("Monte-Carlo error: ours is shown as mean +- standard error.")
    print(f"{'projections':>11} {'ours s':>9} {'POT s':>9} {'POT/ours':>9} "
          f"{'ours SW1 +- SE':>18} {'POT SW1':>9}")
    for n_projections in PROJECTIONS:
        ours_s, ours = best_time(lambda: sliced_wasserstein(x, y, n_projections, seed=0), device)
        pot_s, pot = best_time(
            lambda: float(ot.sliced_wasserstein_distance(
                pot_x, pot_y, n_projections=n_projections, p=1, seed=0
            )),
            device,
        )
        print(f"{n_projections:>11} {ours_s:>9.4f} {pot_s:>9.4f} {pot_s / ours_s:>9.1f} "
              f"{ours.mean:>9.5f} +- {ours.std_error:.5f} {pot:>9.5f}")


if __name__ == "__main__":
    main()
