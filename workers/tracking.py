"""Optional MLflow tracking: with CLASSCOMP_MLFLOW_TRACKING_URI set, each training run (a train job,
or one cell of an experiment) is also an MLflow run in the experiment CLASSCOMP_MLFLOW_EXPERIMENT:

    params      the flattened RunConfig (`dataset.name`, `training.epochs`, ...)
    tags        classcomp.job_id (and for a cell classcomp.cell, classcomp.condition); once the
                model is registered, classcomp.model_id and classcomp.version
    metrics     each epoch record's numbers at step = its epoch; a VAE's phases are prefixed
                (`vae/loss`, `head/loss`), their losses being different quantities
    artifacts   the model directory's files under `model/`
    model       a version of the MLflow registered model named as ours, tagged with our model id
                and version (MLflow numbers its versions itself: they need not match ours)

It speaks MLflow's REST API with httpx, as MLflow's own client does, so the mlflow package is no
dependency. MLflow mirrors the registry and never gates training: the first failure (unreachable,
slow, an error answer) is logged once and the tracker does nothing more for that run.

Error analyses are not tracked: their many small trainings make one report, not models.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit

import httpx

from ml.config import RunConfig
from service import registry, storage
from service.settings import get_settings

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
# The artifact proxy answers a PUT only once it has stored the whole file in its own store (S3, ...),
# so a large model's answer takes longer than any other.
UPLOAD_TIMEOUT = httpx.Timeout(TIMEOUT_SECONDS, read=60.0)
# Record fields that say where the record is, not how training went.
NOT_METRICS = ("epoch", "epochs", "phase")
# A CNN's one phase: its metrics keep the names of the job's records.
UNPREFIXED_PHASE = "classifier"
# Failures that mean "MLflow is not there as expected": transport and HTTP errors, answers that are not
# the JSON we expect, model files that cannot be read. Anything else (a time limit) goes on up.
FAILURES = (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError, KeyError, TypeError)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("error_code") if isinstance(body, dict) else None


def _key_values(pairs: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": v} for k, v in pairs.items()]


def params_of(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, strings as they are, anything else as JSON."""
    params = {}
    for key, value in config.items():
        if isinstance(value, dict):
            params.update(params_of(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value)
    return params


def metrics_of(record: dict[str, Any]) -> dict[str, float]:
    """An epoch record's finite numbers, named for its phase unless it is a CNN's."""
    prefix = "" if record.get("phase", UNPREFIXED_PHASE) == UNPREFIXED_PHASE else f"{record['phase']}/"
    return {f"{prefix}{key}": float(value) for key, value in record.items()
            if key not in NOT_METRICS and isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)}


class Tracker:
    """One training run's MLflow run; a no-op without a tracking URI or once MLflow has failed.

    Used as a context manager around the training: leaving it by an exception ends the MLflow run
    FAILED; leaving it without `registered` (cancelled, or the sweep failed the job meanwhile), KILLED.
    """

    def __init__(self, cfg: RunConfig, run_name: str, tags: dict[str, str]):
        settings = get_settings()
        self.cfg, self.run_name, self.tags = cfg, run_name, tags
        self.experiment = settings.mlflow_experiment
        self.uri = settings.mlflow_tracking_uri.rstrip("/") if settings.mlflow_tracking_uri else None
        # Logs name the server without any user:password the URI carries.
        self.server = urlsplit(self.uri).netloc.rpartition("@")[2] if self.uri else ""
        self.client: httpx.Client | None = None
        self.run_id: str | None = None
        self.artifact_uri = ""

    def __enter__(self) -> Self:
        if self.uri:
            with self._guarded("start a run"):
                self.client = httpx.Client(base_url=self.uri, timeout=TIMEOUT_SECONDS)
                self._start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._end("FAILED" if exc_type else "KILLED")
        if self.client:
            self.client.close()

    @contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        try:
            yield
        except FAILURES as exc:
            # MLflow's answer says why it refused (its error_code and message); httpx's would show the URL.
            detail = (f"HTTP {exc.response.status_code}: {exc.response.text[:500]}" if isinstance(exc, httpx.HTTPStatusError)
                      else f"{type(exc).__name__}: {exc}")
            logger.warning("MLflow tracking at %s stopped for run %r: could not %s (%s); training goes on untracked",
                           self.server, self.run_name, what, detail)
            run_id, self.run_id = self.run_id, None
            if run_id and isinstance(exc, httpx.HTTPStatusError):
                # The server answers, so a run it refused something for need not stay RUNNING there forever.
                with suppress(*FAILURES):
                    self._post("runs/update", {"run_id": run_id, "status": "FAILED", "end_time": _now_ms()})

    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.client.post(f"/api/2.0/mlflow/{endpoint}", json=body)
        response.raise_for_status()
        return response.json()

    def _experiment_id(self) -> str:
        found = self.client.get("/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": self.experiment})
        if found.status_code == 404 and _error_code(found) == "RESOURCE_DOES_NOT_EXIST":
            created = self.client.post("/api/2.0/mlflow/experiments/create", json={"name": self.experiment})
            if created.is_success:
                return created.json()["experiment_id"]
            # Another worker created it between our two requests: read it again below.
            if _error_code(created) != "RESOURCE_ALREADY_EXISTS":
                created.raise_for_status()
            found = self.client.get("/api/2.0/mlflow/experiments/get-by-name",
                                    params={"experiment_name": self.experiment})
        found.raise_for_status()
        return found.json()["experiment"]["experiment_id"]

    def _start(self) -> None:
        run = self._post("runs/create", {
            "experiment_id": self._experiment_id(), "run_name": self.run_name, "start_time": _now_ms(),
            "tags": _key_values(self.tags),
        })["run"]["info"]
        self.run_id, self.artifact_uri = run["run_id"], run["artifact_uri"]
        params = params_of(self.cfg.to_dict())
        self._post("runs/log-batch", {"run_id": self.run_id, "params": _key_values(params)})

    def epoch(self, record: dict[str, Any]) -> None:
        """Log one epoch record (ml.train's on_epoch) at step = its epoch."""
        if not self.run_id:
            return
        with self._guarded(f"log epoch {record.get('epoch')}"):
            timestamp = _now_ms()
            metrics = [{"key": k, "value": v, "timestamp": timestamp, "step": record["epoch"]}
                       for k, v in metrics_of(record).items()]
            self._post("runs/log-batch", {"run_id": self.run_id, "metrics": metrics})

    def registered(self, model: registry.Model) -> None:
        """Once our registry has registered `model`: upload its files, add a version of its name and end
        the run FINISHED."""
        if not self.run_id:
            return
        with self._guarded(f"upload and register model {model.id}"):
            self._upload(storage.model_dir(model.id))
            tags = {"classcomp.model_id": model.id, "classcomp.version": str(model.version)}
            self._post("runs/log-batch", {"run_id": self.run_id, "tags": _key_values(tags)})
            created = self.client.post("/api/2.0/mlflow/registered-models/create", json={"name": model.name})
            if not created.is_success and _error_code(created) != "RESOURCE_ALREADY_EXISTS":
                created.raise_for_status()
            self._post("model-versions/create", {
                "name": model.name, "source": f"{self.artifact_uri}/model", "run_id": self.run_id,
                "tags": _key_values(tags),
            })
            self._end("FINISHED")

    def _upload(self, directory: Path) -> None:
        """PUT each file through the server's artifact proxy (`mlflow server` serves artifacts by default).
        A server that does not (its runs' artifacts live elsewhere, e.g. s3://) gets none: it would take
        that store's own client."""
        artifact_uri = urlsplit(self.artifact_uri)
        if artifact_uri.scheme != "mlflow-artifacts":
            logger.warning("MLflow at %s does not proxy artifacts (run %s stores them at %s): the model files "
                           "are not uploaded", self.server, self.run_id, self.artifact_uri)
            return
        root = quote(artifact_uri.path.strip("/"))
        for path in sorted(p for p in directory.iterdir() if p.is_file()):
            with open(path, "rb") as f:
                response = self.client.put(f"/api/2.0/mlflow-artifacts/artifacts/{root}/model/{quote(path.name)}",
                                           content=f, timeout=UPLOAD_TIMEOUT)
            response.raise_for_status()

    def _end(self, status: str) -> None:
        if not self.run_id:
            return
        with self._guarded(f"end the run {status}"):
            self._post("runs/update", {"run_id": self.run_id, "status": status, "end_time": _now_ms()})
        self.run_id = None
