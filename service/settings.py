"""Every setting, read from CLASSCOMP_* environment variables in this one place.

Left unset, the broker, the registry and the artifact store all live under `home`, which is the
embedded mode: nothing to install or run but this package. Pointing `broker_url` at Redis and
`database_url` at PostgreSQL (and `artifact_dir` at a shared volume) is the distributed mode.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_TOKEN_LENGTH = 16
# RFC 6750's b64token: what fits in `Authorization: Bearer ...` unquoted.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ORIGIN = re.compile(r"https?://[^/\s]+")
ROLES = ("read", "write")


class ApiToken(NamedTuple):
    name: str
    role: Literal["read", "write"]
    token: str


def _check_token(token: str, which: str) -> None:
    # Messages name the token, never show it: they end up in logs.
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"{which} is shorter than {MIN_TOKEN_LENGTH} characters")
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"{which} has characters a bearer token cannot carry "
                         "(allowed: letters, digits, -._~+/ and trailing =)")


def _comma_list(value: Any) -> Any:
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


class Settings(BaseSettings):
    # Inputs stay out of validation errors, which would otherwise print a bad token in full.
    model_config = SettingsConfigDict(env_prefix="CLASSCOMP_", env_ignore_empty=True, hide_input_in_errors=True)

    home: Path = Path.home() / ".classcomp"
    data_dir: Path | None = None
    download: bool = False
    device: str | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    broker_url: str | None = None
    database_url: str | None = None
    artifact_dir: Path | None = None
    queue: str = "training"
    model_cache_size: int = Field(4, ge=1)
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1)
    job_stale_seconds: float = Field(
        60.0, gt=0, description="a running job with no heartbeat for this long is failed (worker lost); a worker "
        "unseen this long is not live"
    )
    requeue_after_seconds: float = Field(
        60.0, gt=0, description="a queued job whose message was sent this long ago while a live worker has been "
        "idle as long gets its message sent again (the broker lost it)"
    )
    dataset_cache_size: int = Field(2, ge=1, description="validation datasets kept loaded in the API for reports and figures")
    # Admission control (service/admission.py): what this deployment lets one job ask for. Epochs, width,
    # image size and repeats default to the library's own bounds; the memory estimate is what refuses the
    # expensive combinations of them.
    job_max_epochs: int = Field(1000, ge=1, description="most epochs (and SVM head epochs) a job may train")
    job_max_batch_size: int = Field(4096, ge=1, description="largest training batch a job may ask for")
    job_max_width: float = Field(4.0, gt=0, description="largest width (channel multiplier) a job may ask for")
    job_max_image_size: int = Field(256, ge=8, description="largest image side, in pixels, a job may ask for")
    job_max_samples: int = Field(
        100_000, ge=2, description="most images a job may generate per split: a dataset's n_train and n_val, an "
        "error analysis's n_train and n_eval"
    )
    job_max_repeats: int = Field(100, ge=1, description="most repeats an error analysis may ask for")
    worker_memory_bytes: int = Field(
        8 * 2**30, ge=1, description="memory a worker has for one job: a job whose estimated need (weights, gradients "
        "and Adam's moments, activations at its batch size, its images) is larger is refused"
    )
    max_queued_jobs: int = Field(
        100, ge=1, description="most jobs waiting in status queued; a submission beyond it gets 429 with Retry-After"
    )
    job_soft_time_limit_seconds: float = Field(
        24 * 3600, gt=0, description="a job running this long is stopped and fails with error_code time_limit"
    )
    job_hard_time_limit_seconds: float | None = Field(
        None, gt=0, description="a job still running this long (it did not stop at the soft limit) has its worker "
        "process killed and fails with error_code time_limit; by default the soft limit plus 10 minutes"
    )
    bayes_max_dim: int = Field(4096, ge=1, description="largest dimension of a Bayes-risk request with scalar or diagonal covariances")
    bayes_max_full_dim: int = Field(512, ge=1, description="largest dimension of a Bayes-risk request with a full covariance matrix")
    bayes_max_sample_entries: int = Field(
        100_000_000, ge=1, description="Monte-Carlo Bayes risk: the most n_samples x dimension a request may draw"
    )
    # The models read at most a few hundred pixels a side, so these only bound memory: 4096x4096 admits any
    # 16-megapixel photo (64 MiB decoded as RGBA, shrunk at once), a request four of them.
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="most pixels (width x height) one image of an inference request may have; "
        "uploads are measured from their header, before decoding"
    )
    max_request_pixels: int = Field(
        4 * 4096 * 4096, ge=1, description="most pixels all images of one inference request may have together"
    )
    batch_max_size: int = Field(32, ge=1, description="most images in one forward pass shared by concurrent predict requests")
    batch_max_delay_ms: float = Field(
        2.0, ge=0, description="longest a predict request waits for others to share its forward pass once the model "
        "is busy; a request to an idle model runs at once"
    )
    inference_threads: int | None = Field(
        None, ge=1, description="torch's intra-op threads in the API process; default half the CPUs, leaving the "
        "rest to HTTP and image decoding"
    )
    api_token: str | None = Field(
        None, repr=False, description="a bearer token with the write role; the CLI's client commands send it"
    )
    api_tokens: Annotated[tuple[ApiToken, ...], NoDecode] = Field(
        (), repr=False, description="more bearer tokens, comma-separated name:role:token entries, role read or write"
    )
    metrics_public: bool = Field(False, description="serve /metrics without a token even when tokens are configured")
    cors_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="comma-separated origins (scheme://host[:port]) whose pages browsers let call the API"
    )
    mlflow_tracking_uri: str | None = Field(
        None, description="an MLflow tracking server (http[s]://host:port) to which every training run logs its "
        "params, per-epoch metrics, model files and a version of its registered name (workers/tracking.py); "
        "unreachable, it is skipped with a warning and training goes on"
    )
    mlflow_experiment: str = Field("classcomp", description="the MLflow experiment those runs go to, created if missing")

    @field_validator("api_token")
    @classmethod
    def _valid_api_token(cls, token: str | None) -> str | None:
        if token is not None:
            _check_token(token, "the token")
        return token

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_api_tokens(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        entries = _comma_list(value)
        if not entries:
            raise ValueError("no name:role:token entry")
        tokens = []
        for number, entry in enumerate(entries, 1):
            parts = entry.split(":")
            if len(parts) != 3:
                raise ValueError(f"entry {number} is not name:role:token")
            name, role, token = parts
            if not _TOKEN_NAME.fullmatch(name):
                raise ValueError(f"entry {number}: the name {name!r} is not letters, digits and -._")
            if role not in ROLES:
                raise ValueError(f"entry {number} ({name}): the role {role!r} is neither read nor write")
            _check_token(token, f"entry {number} ({name}): the token")
            tokens.append(ApiToken(name, role, token))
        return tokens

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _http_tracking_uri(cls, uri: str | None) -> str | None:
        # Workers speak MLflow's REST API, so a local store (file:, sqlite:) or a plain path would only
        # fail at every run: refuse it at start instead.
        if uri is not None and urlsplit(uri).scheme not in ("http", "https"):
            raise ValueError("is not an MLflow tracking server's URL (http:// or https://)")
        return uri

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _parse_cors_origins(cls, value: Any) -> Any:
        origins = _comma_list(value)
        for origin in origins:
            # A browser's Origin header has no path, not even "/": such an entry would never match.
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin: scheme://host[:port], without a path")
        return origins

    @model_validator(mode="after")
    def _tokens_distinct_and_not_blank(self) -> Settings:
        # An empty variable reads as unset, which here would mean no authentication: fail closed instead.
        for variable in ("CLASSCOMP_API_TOKEN", "CLASSCOMP_API_TOKENS"):
            if variable in os.environ and not os.environ[variable].strip():
                raise ValueError(f"{variable} is set but empty; unset it to run without authentication")
        tokens = self.tokens
        if len({t.name for t in tokens}) < len(tokens):
            raise ValueError("two tokens have the same name")
        if len({t.token for t in tokens}) < len(tokens):
            raise ValueError("the same token is configured twice (api_token included)")
        return self

    @model_validator(mode="after")
    def _hard_time_limit_above_soft(self) -> Settings:
        if self.job_hard_time_limit_seconds is None:
            self.job_hard_time_limit_seconds = self.job_soft_time_limit_seconds + 600
        elif self.job_hard_time_limit_seconds <= self.job_soft_time_limit_seconds:
            # At the hard limit the process is killed: a job must get the soft limit's chance to fail cleanly first.
            raise ValueError("job_hard_time_limit_seconds must be above job_soft_time_limit_seconds")
        return self

    @property
    def tokens(self) -> tuple[ApiToken, ...]:
        """Every token the API accepts; none means no authentication."""
        single = (ApiToken("api_token", "write", self.api_token),) if self.api_token else ()
        return single + self.api_tokens

    @property
    def mnist_dir(self) -> Path:
        return self.data_dir or self.home / "data"

    @property
    def broker(self) -> str:
        return self.broker_url or "filesystem://localhost/"

    @property
    def broker_dir(self) -> Path:
        """Where the embedded (filesystem) broker keeps its messages."""
        return self.home / "broker"

    @property
    def database(self) -> str:
        url = self.database_url or f"sqlite:///{self.home / 'registry.db'}"
        # A bare postgresql:// would pick psycopg2, which is not a dependency; psycopg 3 is.
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return url

    @property
    def artifacts(self) -> Path:
        return self.artifact_dir or self.home / "artifacts"

    @property
    def heartbeat_seconds(self) -> float:
        """How often a running job and a live worker are stamped: several stamps fit in the stale
        window, so one late stamp never fails a live job or hides a live worker."""
        return self.job_stale_seconds / 4

    @property
    def api_torch_threads(self) -> int:
        # All cores for torch would spin its OpenMP threads against the event loop and the decoders:
        # measured on 2 busy cores, a batch-32 forward took 10x longer with 2 threads than with 1.
        return self.inference_threads or max(1, (os.cpu_count() or 1) // 2)


@lru_cache
def get_settings() -> Settings:
    return Settings()
