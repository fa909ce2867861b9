"""MLflow tracking (workers/tracking.py) against a real `mlflow server` started here, on SQLite and a
local artifact directory it proxies: a train job's run has the job's config as params, each epoch's
metrics at step = epoch exactly as the job recorded them, the model's files (the weights byte for
byte) and a version of the model's registered name; an experiment's cell is a run of its own, its
VAE's two phases logged apart. With no server listening, training still succeeds and registers its
model, and the worker logs why it was not tracked, once.

MLflow is read back through its own client (`mlflow.MlflowClient`), the test extra's `mlflow` package.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from api_helpers import TINY_GAUSSIAN, submit, wait_finished
from conftest import Service, ServiceProcess, free_port, service_env, start_service, wait_ready
from mlflow.entities import Run

EXPERIMENT = "classcomp-test"
TRAINING = {"epochs": 2, "width": 0.125}
# A VAE + SVM logs two phases: the VAE's epochs 1-2, then its SVM head's epochs 3-4.
PHASES = {"vae": [1, 2], "head": [3, 4]}


def serve(home: Path, data_dir: Path, tracking_uri: str) -> tuple[Service, ServiceProcess]:
    env = service_env(home, data_dir, mlflow_tracking_uri=tracking_uri, mlflow_experiment=EXPERIMENT)
    url, process = start_service(["serve"], env, home, f"serve-{home.name}")
    return Service(url, env), process


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[Service, str]]:
    """A `serve` whose training runs go to a real `mlflow server` (SQLite, and a local artifact directory
    it proxies), with that server's URL. Both start at once: each takes seconds."""
    home = tmp_path_factory.mktemp("tracked")
    url = f"http://127.0.0.1:{free_port()}"
    mlflow_server = ServiceProcess("mlflow", [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", url.rpartition(":")[2],
        "--workers", "1", "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "artifacts"),
    ], {}, home)
    try:
        service, process = serve(home, data_dir, url)
        try:
            wait_ready(url, mlflow_server, probe="/health")
            yield service, url
        finally:
            process.stop()
    finally:
        mlflow_server.stop()


def train(service: Service, bodies: list[dict]) -> list[tuple[dict, dict]]:
    """Submit the jobs at once; (job, model) of each once all succeeded."""
    with service.client() as client:
        submitted = [submit(client, body) for body in bodies]
        jobs = [wait_finished(client, job["id"]) for job in submitted]
        for job in jobs:
            assert job["status"] == "succeeded", job
        return [(job, client.get(f"/v1/models/{job['model_ids'][0]}").json()) for job in jobs]


def finished_run(client: mlflow.MlflowClient, job_id: str, timeout: float = 60) -> Run:
    """The job's MLflow run once it ended: the worker ends it after registering the model, so a moment
    after the job succeeded."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    deadline = time.monotonic() + timeout
    while True:
        runs = client.search_runs([experiment.experiment_id], f"tags.`classcomp.job_id` = '{job_id}'")
        if runs and runs[0].info.status != "RUNNING":
            assert len(runs) == 1, runs
            return runs[0]
        assert time.monotonic() < deadline, f"no ended MLflow run of job {job_id} after {timeout}s: {runs}"
        time.sleep(0.3)


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    leaves = {}
    for key, value in config.items():
        leaves.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return leaves


def test_a_training_run_is_tracked_with_its_metrics_files_and_model_version(
    tracked: tuple[Service, str], tmp_path: Path,
) -> None:
    service, mlflow_server = tracked
    (cnn_job, cnn), (cell_job, cell_model) = train(service, [
        {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": TRAINING},
        {"kind": "experiment", "models": ["vae-svm"], "conditions": ["vanilla"], "dataset": TINY_GAUSSIAN,
         "training": {**TRAINING, "head_epochs": 2}},
    ])
    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    run = finished_run(client, cnn_job["id"])
    cell_run = finished_run(client, cell_job["id"])

    assert run.info.status == "FINISHED"
    params = run.data.params
    assert set(params) == set(flat(cnn["config"]))
    assert (params["model"], params["dataset.name"], params["training.epochs"], params["training.width"],
            params["dataset.classes"]) == ("vgg", "gaussian", "2", "0.125", "[0, 1]")
    assert run.data.tags["classcomp.model_id"] == cnn["id"]
    assert run.data.tags["classcomp.version"] == str(cnn["version"])

    # Every number of every epoch record, at its epoch, exactly as the job recorded it.
    records = cnn_job["metrics"]
    assert [r["epoch"] for r in records] == [1, 2]
    names = {key for r in records for key in r if key not in ("epoch", "epochs", "phase")}
    assert {"loss", "grad_norm", "train_accuracy", "val_accuracy", "epoch_seconds"} <= names
    assert set(run.data.metrics) == names
    for name in names:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert history == [(r["epoch"], r[name]) for r in records], name

    # The cell's run says which cell it is; its VAE's loss and its SVM head's hinge loss are two series.
    assert cell_run.info.status == "FINISHED"
    assert {k: cell_run.data.tags[k] for k in ("classcomp.cell", "classcomp.condition", "classcomp.model_id")} == {
        "classcomp.cell": "1", "classcomp.condition": "vanilla", "classcomp.model_id": cell_model["id"]}
    for phase, steps in PHASES.items():
        history = client.get_metric_history(cell_run.info.run_id, f"{phase}/loss")
        expected = [(r["cell_epoch"], r["loss"]) for r in cell_job["metrics"] if r["phase"] == phase]
        assert sorted((m.step, m.value) for m in history) == expected
        assert [step for step, _ in expected] == steps
    assert "loss" not in cell_run.data.metrics
    assert [v.run_id for v in client.search_model_versions(f"name = '{cell_model['name']}'")] == [cell_run.info.run_id]

    # The model's files, its weights byte for byte.
    files = {f.path for f in client.list_artifacts(run.info.run_id, "model")}
    assert files == {"model/weights.safetensors", "model/config.json", "model/metrics.json"}
    weights = Path(client.download_artifacts(run.info.run_id, "model/weights.safetensors", str(tmp_path)))
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == cnn["weights_sha256"]

    # A version of the registered name, from this run's files, saying which of our models it is.
    versions = client.search_model_versions(f"name = '{cnn['name']}'")
    assert len(versions) == 1, versions
    version = versions[0]
    assert (version.run_id, version.source) == (run.info.run_id, f"{run.info.artifact_uri}/model")
    assert version.tags == {"classcomp.model_id": cnn["id"], "classcomp.version": str(cnn["version"])}


def test_an_unreachable_tracking_server_never_fails_training(tmp_path: Path, data_dir: Path) -> None:
    nothing_listens = f"http://127.0.0.1:{free_port()}"
    service, process = serve(tmp_path, data_dir, nothing_listens)
    try:
        ((job, model),) = train(service, [
            {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": TRAINING},
        ])
        with service.client() as api:
            assert api.get(f"/v1/models/{model['id']}/weights").status_code == 200
        log = process.log_tail(1_000_000)
    finally:
        process.stop()
    assert len(job["metrics"]) == 2 and model["job_id"] == job["id"]
    warnings = [line for line in log.splitlines() if "MLflow tracking at" in line]
    assert len(warnings) == 1, log
    assert "could not start a run" in warnings[0] and "ConnectError" in warnings[0]
