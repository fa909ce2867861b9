"""Shared fixtures: the MNIST data directory, free ports, service processes, PNGs of real test digits.

Service processes run in their own process groups and are always stopped with everything they
started (a `serve` stops its worker; a worker's pool process goes with its group). When a test
fails, the logs of the running services are attached to its report.

The distributed mode runs against real Redis and PostgreSQL. Each test session gets its own
PostgreSQL database (created on the `test` database's server, dropped afterwards) and its own
Celery queue name, so concurrent runs never see each other's jobs. Without reachable servers
those tests are skipped, except under CI=true, where they fail.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import psycopg
import pytest
import redis
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSCOMP = [sys.executable, "-m", "service.cli"]

_running: list[ServiceProcess] = []


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("CLASSCOMP_DATA_DIR") or REPO.parent / "shared" / "data")
    if not (path / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        pytest.fail(f"MNIST is not in {path}/MNIST/raw: set CLASSCOMP_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def fashion_data_dir(data_dir: Path) -> Path:
    """The data directory, which must hold Fashion-MNIST too (.ci/run unpacks Debian's copy there);
    tests that need it are skipped where it is missing, except under CI=true, where they fail."""
    if not (data_dir / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").is_file():
        message = f"Fashion-MNIST is not in {data_dir}/FashionMNIST/raw (README: Fashion-MNIST)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return data_dir


@pytest.fixture(scope="session")
def mnist32(data_dir: Path):
    """MNIST 0 vs 1 at 32x32, the CPU-sized setting every ml test trains on."""
    from ml.config import DatasetConfig
    from ml.data import load_dataset

    return load_dataset(DatasetConfig(image_size=32), data_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """A classcomp command run as a subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        # Only the settings given here: none inherited from the developer's shell.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLASSCOMP_")}
        self.process = subprocess.Popen(
            args, env={**inherited, **env}, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        _running.append(self)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL the whole group at once: what a crash or a lost machine does."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def stop(self, grace_seconds: float = 20) -> None:
        """SIGTERM (a `serve` then stops its worker itself); SIGKILL the group after the grace period."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also whatever the group still holds, e.g. a pool process
        self._log.close()
        if self in _running:
            _running.remove(self)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for service in _running:
            report.sections.append((f"log of {service.name}", service.log_tail()))


def wait_ready(url: str, process: ServiceProcess, timeout: float = 90, probe: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.process.returncode}:\n{process.log_tail()}")
        try:
            response = httpx.get(f"{url}{probe}", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as exc:
            last = repr(exc)
        time.sleep(0.3)
    raise RuntimeError(f"{process.name} not ready after {timeout}s ({last}):\n{process.log_tail()}")


def start_service(
    args: list[str], env: dict[str, str], log_dir: Path, name: str, probe: str = "/readyz"
) -> tuple[str, ServiceProcess]:
    """Start `classcomp <args>` serving on a free port; return its URL once `probe` answers 200."""
    port = free_port()
    process = ServiceProcess(name, [*CLASSCOMP, *args, "--port", str(port)], env, log_dir)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, probe=probe)
    except BaseException:
        process.stop()
        raise
    return url, process


def start_worker(env: dict[str, str], log_dir: Path, name: str = "worker") -> ServiceProcess:
    process = ServiceProcess(name, [*CLASSCOMP, "worker"], env, log_dir)
    deadline = time.monotonic() + 90
    while " ready." not in process.log_tail(100_000):
        if process.process.poll() is not None or time.monotonic() > deadline:
            process.stop()
            raise RuntimeError(f"worker did not start:\n{process.log_tail()}")
        time.sleep(0.3)
    return process


@dataclass
class Service:
    url: str
    env: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def service_env(home: Path, data_dir: Path, **settings: str) -> dict[str, str]:
    """Settings for a test service: CPU (tests measure behaviour, not speed) and a 2 MB upload limit."""
    env = {"CLASSCOMP_HOME": str(home), "CLASSCOMP_DATA_DIR": str(data_dir), "CLASSCOMP_DEVICE": "cpu",
           "CLASSCOMP_MAX_UPLOAD_BYTES": "2000000"}
    return {**env, **{f"CLASSCOMP_{k.upper()}": v for k, v in settings.items()}}


@pytest.fixture(scope="session")
def embedded_service(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Service]:
    """`classcomp serve` (API + worker child) with a fresh CLASSCOMP_HOME: SQLite and the filesystem broker."""
    home = tmp_path_factory.mktemp("classcomp-home")
    env = service_env(home, data_dir)
    url, process = start_service(["serve"], env, home, "serve")
    yield Service(url, env)
    process.stop()


@pytest.fixture(scope="session")
def analysis_models(embedded_service: Service) -> dict[str, str]:
    """Ids of three models trained once on `embedded_service` for the report and figure tests: a VGG and a
    VAE + K-means on tiny synthetic images (seconds), a VAE + SVM on MNIST 0 vs 1 (one epoch) whose
    reconstructions the Wasserstein report measures. Tests must not delete them."""
    from api_helpers import TINY_GAUSSIAN, small_train_job, submit, wait_finished

    bodies = {
        "vgg": {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 2, "width": 0.125}},
        "vae-svm": small_train_job("vae-svm", epochs=1, head_epochs=2),
        "vae-kmeans": {"kind": "train", "model": "vae-kmeans", "dataset": TINY_GAUSSIAN,
                       "training": {"epochs": 2, "width": 0.125}},
    }
    with embedded_service.client() as client:
        submitted = {name: submit(client, body) for name, body in bodies.items()}
        jobs = {name: wait_finished(client, job["id"]) for name, job in submitted.items()}
    for job in jobs.values():
        assert job["status"] == "succeeded", job
    return {name: job["model_ids"][0] for name, job in jobs.items()}


@pytest.fixture(scope="module")
def client(embedded_service: Service) -> Iterator[httpx.Client]:
    """A client of the embedded service; a module that tests another service defines its own."""
    with embedded_service.client() as client:
        yield client


@pytest.fixture(scope="module")
def artifacts(embedded_service: Service) -> Path:
    """The embedded service's artifact store, where tests look for files beside a model."""
    return Path(embedded_service.env["CLASSCOMP_HOME"]) / "artifacts"


@pytest.fixture
def service_without_broker(tmp_path: Path, data_dir: Path) -> Iterator[Service]:
    """An API whose broker is unreachable (nothing listens on the port), with its own SQLite registry."""
    env = service_env(tmp_path, data_dir, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    url, process = start_service(["serve", "--no-worker"], env, tmp_path, "api-without-broker", probe="/healthz")
    yield Service(url, env)
    process.stop()


REDIS_URL = os.environ.get("CLASSCOMP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("CLASSCOMP_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
# Short, so that a killed worker's job is failed within seconds; several heartbeats still fit in it.
STALE_SECONDS = "10"


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def distributed_env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[dict[str, str]]:
    missing = [url for url in (REDIS_URL, POSTGRES_URL) if not _reachable(url)]
    if missing:
        message = f"distributed tests need Redis and PostgreSQL; unreachable: {', '.join(missing)}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    run = uuid.uuid4().hex[:12]
    database = f"classcomp_test_{run}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    home = tmp_path_factory.mktemp("distributed")
    env = service_env(
        home, data_dir,
        broker_url=REDIS_URL,
        database_url=urlsplit(POSTGRES_URL)._replace(path=f"/{database}").geturl(),
        artifact_dir=str(home / "shared-artifacts"),
        queue=f"training-test-{run}",
        job_stale_seconds=STALE_SECONDS,
    )
    try:
        yield env
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        with redis.Redis.from_url(REDIS_URL) as broker:
            for key in broker.scan_iter(f"*{run}*"):
                broker.delete(key)


class Workers:
    """The session's worker process, which a test may kill (as a crash would) and replace."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env, self.log_dir, self.count = env, log_dir, 0
        self.current = self.start()

    def start(self) -> ServiceProcess:
        self.count += 1
        return start_worker(self.env, self.log_dir, name=f"worker-{self.count}")

    def replace(self) -> None:
        self.current.stop()
        self.current = self.start()


@pytest.fixture(scope="session")
def distributed_workers(distributed_env: dict[str, str]) -> Iterator[Workers]:
    workers = Workers(distributed_env, Path(distributed_env["CLASSCOMP_HOME"]))
    yield workers
    workers.current.stop()


@pytest.fixture(scope="session")
def distributed_service(distributed_env: dict[str, str], distributed_workers: Workers) -> Iterator[Service]:
    """The API alone (`classcomp serve --no-worker`) against PostgreSQL and Redis; jobs run on `distributed_workers`.
    Probed on /healthz: /readyz also needs a live worker, and the workers are another fixture's."""
    home = Path(distributed_env["CLASSCOMP_HOME"])
    url, process = start_service(["serve", "--no-worker"], distributed_env, home, "api", probe="/healthz")
    yield Service(url, distributed_env)
    process.stop()


def read_idx(path: Path) -> np.ndarray:
    """An MNIST IDX file (images or labels) as a numpy array."""
    raw = path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_pngs(data_dir: Path, out_dir: Path, labels_kept: tuple[int, ...], count: int,
               folder: str = "MNIST") -> list[tuple[Path, int]]:
    """The first `count` test images of `labels_kept` of MNIST (or of another data set in torchvision's
    `folder`) as PNG files, with their labels."""
    raw = data_dir / folder / "raw"
    images, labels = read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in np.flatnonzero(np.isin(labels, labels_kept))[:count]:
        path = out_dir / f"{folder.lower()}-{index}-{labels[index]}.png"
        Image.fromarray(images[index]).save(path)
        written.append((path, int(labels[index])))
    return written


@pytest.fixture(scope="session")
def mnist_pngs(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """240 PNGs of real MNIST test 0s and 1s, with their labels."""
    return write_pngs(data_dir, tmp_path_factory.mktemp("pngs"), (0, 1), 240)


# --- browser tests (tests/web) ----------------------------------------------------------------------
# Headless Chromium (Debian's `chromium`, driven by Playwright) against the embedded service. Tests save
# screenshots of the pages they visit under `screenshots/` at the repository root (git-ignored;
# CLASSCOMP_SCREENSHOT_DIR overrides it) for a reviewer to look at.

SCREENSHOTS = Path(os.environ.get("CLASSCOMP_SCREENSHOT_DIR", Path(__file__).resolve().parents[1] / "screenshots"))


def _chromium() -> str | None:
    return os.environ.get("CLASSCOMP_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    executable = _chromium()
    if executable is None:
        message = "browser tests need Chromium: apt-get install chromium (or set CLASSCOMP_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, embedded_service) -> Iterator[object]:
    """A fresh tab on the dashboard's origin; a script error on any page fails the test."""
    context = browser.new_context(base_url=embedded_service.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"script errors on the page: {errors}"


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[object, str], Path]:
    """screenshot(page, "name") writes screenshots/<test name>-<name>.png, whole page."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = SCREENSHOTS / f"{request.node.name}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


def drop_files(page, selector: str, paths: list[Path]) -> None:
    """A real drop event: a DataTransfer holding the files, built in the page, dispatched on `selector`."""
    files = [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()} for p in paths]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                const bytes = Uint8Array.from(atob(f.data), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], f.name, { type: "image/png" }));
            }
            return transfer;
        }""",
        files,
    )
    page.dispatch_event(selector, "dragenter", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def fill_form(page, values: dict[str, str]) -> None:
    """Fill a page's form as a person would, in order (a choice may show or hide the fields after it):
    choose in a select, type in any other field."""
    for selector, value in values.items():
        field = page.locator(selector)
        if field.evaluate("element => element.tagName") == "SELECT":
            field.select_option(value)
        else:
            field.fill(value)
