"""The one-way seams: the API never loads the worker's code, and a job's failure says whose fault it was."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from api_helpers import TINY_GAUSSIAN, small_train_job, submit, wait_finished
from conftest import REPO, service_env, start_service

from ml import artifacts


def test_importing_the_api_loads_no_worker_code_and_creates_no_broker_folders(tmp_path):
    probe = (
        "import sys; from service.app import create_app; create_app(); "
        "import service.api.jobs, service.api.health; "
        "print(sorted(m for m in sys.modules if m == 'workers' or m.startswith('workers.')))"
    )
    env = {"CLASSCOMP_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not (tmp_path / "home" / "broker").exists()


@pytest.fixture(scope="module")
def failing_service(tmp_path_factory, data_dir):
    """An embedded service whose data directory holds no MNIST and whose artifact store is a file,
    so that MNIST jobs fail on the user's side and saving any model fails on ours."""
    home = tmp_path_factory.mktemp("failing")
    (home / "no-data").mkdir()
    store = home / "store"
    env = service_env(home, home / "no-data", artifact_dir=str(store))
    url, process = start_service(["serve"], env, home, "failing-serve")
    store.rmdir()  # the API created it at start-up; a file in its place breaks every save
    store.write_text("")
    yield url, process
    process.stop()


def test_a_user_error_is_reported_with_its_code_and_no_traceback(failing_service):
    import httpx

    url, process = failing_service
    with httpx.Client(base_url=url, timeout=60) as client:
        job = wait_finished(client, submit(client, small_train_job("vgg", epochs=1))["id"])
    assert job["status"] == "failed"
    assert job["error_code"] == "data_missing"
    assert job["error"].startswith("MNIST was not found in") and "CLASSCOMP_DATA_DIR" in job["error"]
    assert "Traceback" not in process.log_tail(100_000)


def test_a_bug_is_reported_as_internal_and_logged_with_its_traceback(failing_service):
    import httpx

    url, process = failing_service
    body = {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}}
    with httpx.Client(base_url=url, timeout=60) as client:
        job = wait_finished(client, submit(client, body)["id"])
        assert client.get("/v1/models").json()["total"] == 0
    assert job["status"] == "failed" and job["error_code"] == "internal_error"
    assert job["error"].startswith("internal error (") and "worker's log" in job["error"]
    log = process.log_tail(100_000)
    assert "Traceback" in log and f"job {job['id']} failed" in log


def test_a_diverged_run_writes_null_not_nan_to_disk(tmp_path):
    from ml.config import DatasetConfig, RunConfig, TrainingConfig
    from ml.models import build_model
    from ml.train import TrainResult

    cfg = RunConfig(model="vgg", dataset=DatasetConfig(name="gaussian", image_size=32), training=TrainingConfig(width=0.125))
    result = TrainResult(model=build_model(cfg), history=[{"epoch": 1, "epochs": 1, "phase": "cnn", "loss": math.nan}],
                         final={"val_accuracy": math.inf}, seconds=1.0, stopped=False)
    directory = artifacts.save(result, cfg, tmp_path / "model")
    text = (Path(directory) / artifacts.METRICS).read_text()
    assert "NaN" not in text and "Infinity" not in text  # literals that strict JSON parsers reject
    metrics = json.loads(text)
    assert metrics["history"][0]["loss"] is None and metrics["final"]["val_accuracy"] is None
