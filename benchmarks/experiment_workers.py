"""An experiment's wall time with 1 and with N workers, against the sum of its cells' training times.

    PYTHONPATH=. .venv/bin/python benchmarks/experiment_workers.py                  # 1 and 2 workers
    PYTHONPATH=. .venv/bin/python benchmarks/experiment_workers.py --workers 1 2 4 --width 0.125

Each run starts its own `classcomp serve --workers N` (embedded: SQLite, the filesystem broker;
`serve` gives each worker an equal share of the cores) with a fresh CLASSCOMP_HOME, submits one
experiment (default: vgg, resnet and vae-kmeans under vanilla and noisy, MNIST 0 vs 1 at 32x32, a
32nd of the paper's width, one epoch: six cells), and reports the wall time from submission to the
job's end, the sum of the cells' `train_seconds`, and which worker trained each cell. The goal
(issue 9): with 2 workers the experiment ends in clearly less than the sum of its cells' times.
"""

from __future__ import annotations

import argparse
import os
import time

import httpx
from predict_load import own_service


def run(workers: int, body: dict) -> dict:
    with own_service("cpu", workers=workers) as service, httpx.Client(base_url=service.url, timeout=60) as client:
        started = time.perf_counter()
        response = client.post("/v1/jobs", json=body)
        response.raise_for_status()
        job_id = response.json()["id"]
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(0.2)
        wall = time.perf_counter() - started
        if job["status"] != "succeeded":
            raise RuntimeError(f"the experiment {job['status']}: {job['error']}")
        rows = client.get(f"/v1/jobs/{job_id}/report").json()["rows"]
    return {"workers": workers, "wall": wall, "cells": sum(r["train_seconds"] for r in rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["vgg", "resnet", "vae-kmeans"])
    parser.add_argument("--conditions", nargs="+", default=["vanilla", "noisy"])
    parser.add_argument("--width", type=float, default=0.03125)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    body = {"kind": "experiment", "models": args.models, "conditions": args.conditions,
            "dataset": {"name": "mnist", "classes": [0, 1], "image_size": 32},
            "training": {"epochs": args.epochs, "width": args.width, "batch_size": 128}}
    print(f"{os.cpu_count()} CPUs; {len(args.models) * len(args.conditions)} cells: {', '.join(args.models)} "
          f"under {', '.join(args.conditions)}, width {args.width}, {args.epochs} epoch(s)")
    results = []
    for n in args.workers:
        result = run(n, body)
        results.append(result)
        by_worker: dict[str, int] = {}
        for row in result["rows"]:
            by_worker[row["worker"]] = by_worker.get(row["worker"], 0) + 1
        print(f"{n} worker(s): wall {result['wall']:.1f} s, cells' training {result['cells']:.1f} s in all "
              f"(wall / sum {result['wall'] / result['cells']:.2f}); cells per worker {sorted(by_worker.values())}",
              flush=True)
    if len(results) > 1:
        base = results[0]
        for result in results[1:]:
            print(f"{result['workers']} workers vs {base['workers']}: {base['wall'] / result['wall']:.2f}x faster")


if __name__ == "__main__":
    main()
