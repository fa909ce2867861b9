"""Predict latency and throughput through the API, against the raw forward of the same model in-process.

    PYTHONPATH=. .venv/bin/python benchmarks/predict_load.py             # own `classcomp serve`: tiny and paper VGG
    PYTHONPATH=. .venv/bin/python benchmarks/predict_load.py --models paper --inference-threads 2
    PYTHONPATH=. .venv/bin/python benchmarks/predict_load.py --url http://127.0.0.1:8000 --model-id ID

Without --url it starts `classcomp serve` on a free port with a fresh CLASSCOMP_HOME and trains each
model of --models through the API (synthetic Gaussian images: seconds each): `tiny`, a VGG at 32x32
and width 0.125, whose forward pass costs less than a request's handling, and `paper`, the paper's
VGG at 64x64 and width 1, the size the product serves. The raw figures come from the same model
built here from the service's config and weights: the single-image forward and the images per
second of batch-32 forwards, each the best of ten rounds' medians, five before the load and five
after (other work on the machine slows some rounds), on 1 thread, the API's torch threads
(CLASSCOMP_INFERENCE_THREADS, default half the CPUs) and torch's default. The load is one 28x28
image per request, as a multipart PNG (what a client sends) and as a JSON pixel array, from 1 and
from `--clients` concurrent keep-alive connections; the client is a minimal HTTP/1.1 one on asyncio
streams, so the figures measure the server rather than a client library. A started server's CPU
time per request is read from /proc, and so is whether it runs uvicorn's fast HTTP parser and event
loop (httptools, uvloop).

Goals (issue 8): one client's p50 within 2 ms of the raw single-image forward; the concurrent
throughput at least 70% of the raw batch-32 images per second, each against the best raw figure
of the thread counts. The load generator runs on the same CPUs as the server: its own CPU use is
printed, and on a small machine it takes a share of the cores the concurrent figures are measured
on, which the raw forward had to itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors

from ml.config import RunConfig
from ml.models import build_model
from ml.models import predict as model_predict

REPO = Path(__file__).resolve().parents[1]
BOUNDARY = "classcompbenchmark"
MODELS = {"tiny": (32, 0.125), "paper": (64, 1.0)}  # image size, width
CPUS = os.cpu_count() or 1
TORCH_THREADS = torch.get_num_threads()


@dataclass
class Service:
    url: str
    pid: int | None  # of the API process, when this script started it: its CPU time is read from /proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def own_service(device: str, inference_threads: int | None = None, workers: int = 1) -> Iterator[Service]:
    """`classcomp serve --workers N` on a free port with a fresh CLASSCOMP_HOME, once all N are live."""
    with tempfile.TemporaryDirectory(prefix="classcomp-bench-") as home:
        port = free_port()
        # None of the caller's settings but where MNIST is.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSCOMP_") or k == "CLASSCOMP_DATA_DIR"}
        env.update(CLASSCOMP_HOME=home, CLASSCOMP_DEVICE=device)
        if inference_threads:
            env["CLASSCOMP_INFERENCE_THREADS"] = str(inference_threads)
        log = open(Path(home) / "serve.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                                    "--workers", str(workers)], env=env,
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    ready = httpx.get(f"{url}/readyz", timeout=5)
                    if ready.status_code == 200 and ready.json()["workers"]["live"] == workers:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    log_text = (Path(home) / "serve.log").read_text()
                    raise RuntimeError(f"classcomp serve did not start:\n{log_text[-3000:]}")
                time.sleep(0.3)
            print(f"classcomp serve: {fast_stack(process.pid)}")
            yield Service(url, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
            log.close()


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process so far (Linux), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fast_stack(pid: int) -> str:
    """Which of httptools and uvloop, which uvicorn uses when they are installed, a process has loaded (Linux)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    return ", ".join(f"{name} {'loaded' if f'/{name}/' in maps else 'not loaded'}" for name in ("httptools", "uvloop"))


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train(client: httpx.Client, model: str, image_size: int, width: float) -> str:
    body = {"kind": "train", "model": model, "dataset": {"name": "gaussian", "image_size": image_size,
                                                         "n_train": 64, "n_val": 32},
            "training": {"epochs": 1, "width": width}}
    job = client.post("/v1/jobs", json=body).raise_for_status().json()
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        job = client.get(f"/v1/jobs/{job['id']}").json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"training failed: {job}")
    return job["model_ids"][0]


def raw_model(client: httpx.Client, model_id: str, device: str) -> tuple[torch.nn.Module, RunConfig]:
    """The service's model rebuilt here from its config and weights."""
    cfg = RunConfig.from_dict(client.get(f"/v1/models/{model_id}").raise_for_status().json()["config"])
    model = build_model(cfg)
    model.load_state_dict(load_safetensors(client.get(f"/v1/models/{model_id}/weights").raise_for_status().content))
    return model.to(device).eval(), cfg


def best_median_time(run: Callable[[], object], device: str, rounds: int = 5, seconds: float = 0.6) -> float:
    """The best of `rounds` medians of repeated runs (each round `seconds` long, and at least 3 runs): other
    work on the machine slows some rounds, and the raw forward's figure is what the machine can do."""
    for _ in range(3):
        run()
    medians = []
    for _ in range(rounds):
        times: list[float] = []
        end = time.perf_counter() + seconds
        while len(times) < 3 or time.perf_counter() < end:
            start = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        medians.append(statistics.median(times))
    return min(medians)


def raw_figures(model: torch.nn.Module, image_size: int, device: str, threads: int) -> tuple[float, float]:
    """(median single-image forward in seconds, images per second in batches of 32) on `threads` threads."""
    torch.set_num_threads(threads)
    one = torch.rand(1, 1, image_size, image_size, device=device) * 2 - 1
    batch = torch.rand(32, 1, image_size, image_size, device=device) * 2 - 1
    return (best_median_time(lambda: model_predict(model, one), device),
            32 / best_median_time(lambda: model_predict(model, batch), device))


def requests(url: str, ref: str) -> dict[str, bytes]:
    """One predict request of a 28x28 grayscale image per payload: multipart PNG, and JSON pixels."""
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    image = io.BytesIO()
    Image.fromarray(pixels).save(image, format="PNG")
    multipart = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"digit.png\"\r\n"
                 f"Content-Type: image/png\r\n\r\n").encode() + image.getvalue() + f"\r\n--{BOUNDARY}--\r\n".encode()
    bodies = {"png": (f"multipart/form-data; boundary={BOUNDARY}", multipart),
              "json": ("application/json", json.dumps({"pixels": [(pixels / 255).round(4).tolist()]}).encode())}
    host = httpx.URL(url).netloc.decode()
    return {name: (f"POST /v1/models/{ref}/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
            for name, (content_type, body) in bodies.items()}


async def client_loop(url: str, request: bytes, until: float, latencies: list[float], errors: list[str]) -> None:
    """Sends `request` on one keep-alive connection until `until`, reconnecting after any failure."""
    parts = httpx.URL(url)
    writer = None
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(parts.host, parts.port)
            start = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.decode("latin-1").split("\r\n")
            length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if lines[0].split()[1] != "200":
                errors.append(lines[0])
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, StopIteration) as exc:
            errors.append(repr(exc))
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


@dataclass
class Load:
    latencies: list[float]
    errors: list[str]
    elapsed: float
    client_cpu: float  # seconds
    server_cpu: float | None  # seconds

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.elapsed

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


async def load(service: Service, request: bytes, clients: int, seconds: float) -> Load:
    await asyncio.gather(*(client_loop(service.url, request, time.perf_counter() + 1, [], []) for _ in range(clients)))
    latencies: list[float] = []
    errors: list[str] = []
    client_cpu, server_cpu = own_cpu_seconds(), cpu_seconds(service.pid)
    start = time.perf_counter()
    await asyncio.gather(*(client_loop(service.url, request, start + seconds, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    server_after = cpu_seconds(service.pid)
    return Load(latencies, errors, elapsed, own_cpu_seconds() - client_cpu,
                None if server_cpu is None or server_after is None else server_after - server_cpu)


def batch_histogram(url: str) -> tuple[float, float] | None:
    """(images, forward passes) so far, from the API's classcomp_predict_batch_size histogram (None without it)."""
    values = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        values[name] = value
    if "classcomp_predict_batch_size_count" not in values:
        return None
    return float(values["classcomp_predict_batch_size_sum"]), float(values["classcomp_predict_batch_size_count"])


def alias(url: str, model_id: str) -> str:
    """`name@bench`, pointed at the model."""
    model = httpx.get(f"{url}/v1/models/{model_id}", timeout=30).raise_for_status().json()
    httpx.put(f"{url}/v1/registered-models/{model['name']}/aliases/bench", json={"version": model["version"]},
              timeout=30).raise_for_status()
    return f"{model['name']}@bench"


def benchmark(service: Service, model_id: str, cfg: RunConfig, model: torch.nn.Module, args: argparse.Namespace) -> None:
    size = cfg.dataset.image_size
    print(f"\n## model {model_id}: {cfg.model}, {size}x{size}, width {cfg.training.width:g}")
    thread_counts = sorted({1, TORCH_THREADS, args.inference_threads or max(1, CPUS // 2)})
    raw_before = {threads: raw_figures(model, size, args.device, threads) for threads in thread_counts}
    print(f"{'payload':>7} {'ref':>5} {'clients':>7} {'requests':>8} {'errors':>6} {'per s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'images/pass':>11} {'server cpu/req':>14} {'client cpu':>10}")
    # By id, a cached model's predict reads no registry row; by name@alias it reads one per request (issue 12).
    loads = [(payload, "id", request) for payload, request in requests(service.url, model_id).items()]
    loads.append(("png", "alias", requests(service.url, alias(service.url, model_id))["png"]))
    results = {}
    for payload, ref, request in loads:
        for clients in (1, args.clients):
            before = batch_histogram(service.url)
            result = results[payload, ref, clients] = asyncio.run(load(service, request, clients, args.seconds))
            after = batch_histogram(service.url)
            per_pass = f"{(after[0] - before[0]) / (after[1] - before[1]):.1f}" if before and after[1] > before[1] else "-"
            server = "-" if result.server_cpu is None else f"{result.server_cpu / len(result.latencies) * 1000:.2f} ms"
            print(f"{payload:>7} {ref:>5} {clients:>7} {len(result.latencies):>8} {len(result.errors):>6} "
                  f"{result.throughput:>7.1f} {result.percentile_ms(50):>8.2f} {result.percentile_ms(99):>8.2f} "
                  f"{per_pass:>11} {server:>14} {result.client_cpu / result.elapsed:>5.2f} core"
                  + (f"  first error: {result.errors[0]}" if result.errors else ""))
    # Measured before the load and after it, the better figure kept: a busy spell on the machine can slow
    # one measurement several times over, two threads most (their OpenMP threads wait for each other).
    raw_after = {threads: raw_figures(model, size, args.device, threads) for threads in thread_counts}
    raw = {threads: (min(raw_before[threads][0], raw_after[threads][0]), max(raw_before[threads][1], raw_after[threads][1]))
           for threads in thread_counts}
    for threads, (single, batched) in raw.items():
        print(f"raw forward, {threads} torch thread(s): 1 image {single * 1000:.2f} ms; batch 32: {batched:.0f} images/s")
    if raw[max(thread_counts)][1] < raw[1][1]:
        print(f"warning: batches ran slower on {max(thread_counts)} threads than on 1: other work held the cores, "
              "and every figure here is slowed by it")
    raw_single = min(single for single, _ in raw.values())
    raw_batched = max(batched for _, batched in raw.values())
    single = results["png", "id", 1].percentile_ms(50) - raw_single * 1000
    concurrent = results["png", "id", args.clients]
    ratio = concurrent.throughput / raw_batched
    print(f"goal 1: 1-client PNG p50 - raw 1-image forward = {single:.2f} ms (goal <= 2 ms): "
          f"{'met' if single <= 2 else 'not met'}")
    print(f"goal 2: {args.clients}-client PNG throughput / raw batch-32 = {ratio:.0%} (goal >= 70%): "
          f"{'met' if ratio >= 0.7 else 'not met'}")
    print(f"the load generator used {concurrent.client_cpu / concurrent.elapsed:.2f} of the {CPUS} cores the "
          f"{args.clients}-client figures were measured on, which the raw forward had to itself")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (default: start one)")
    parser.add_argument("--model-id", help="a trained model of that service (default: train the --models)")
    parser.add_argument("--server-pid", type=int, help="the API process of --url, to report its CPU time per request")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "paper"])
    parser.add_argument("--model", default="vgg", help="the architecture trained for --models")
    parser.add_argument("--inference-threads", type=int,
                        help="CLASSCOMP_INFERENCE_THREADS of the started service (default: its default, half the CPUs)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="of the started service and the raw forward")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    if args.url and not args.model_id:
        parser.error("--url needs --model-id")

    print(f"device={args.device}, cpus={CPUS}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    started = nullcontext(Service(args.url, args.server_pid)) if args.url else own_service(args.device, args.inference_threads)
    with started as service, httpx.Client(base_url=service.url, timeout=600) as client:
        model_ids = [args.model_id] if args.model_id else [train(client, args.model, *MODELS[name]) for name in args.models]
        for model_id in model_ids:
            model, cfg = raw_model(client, model_id, args.device)
            benchmark(service, model_id, cfg, model, args)
            del model


if __name__ == "__main__":
    main()
