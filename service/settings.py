"""Every setting, read from CLASSCOMP_* environment variables in this one place.

Left unset, the broker, the registry and the artifact store all live under `home`, which is the
embedded mode: nothing to install or run but this package. Pointing `broker_url` at Redis and
`database_url` at PostgreSQL (and `artifact_dir` at a shared volume) is the distributed mode.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSCOMP_", env_ignore_empty=True)

    home: Path = Path.home() / ".classcomp"
    data_dir: Path | None = None
    download: bool = False
    device: str | None = None

    host: str = "127.0.0.1"
    port: int = 8000
    url: str = Field("http://127.0.0.1:8000", description="where the CLI's client commands find the API")
    broker_url: str | None = None
    database_url: str | None = None
    artifact_dir: Path | None = None
    queue: str = "training"
    model_cache_size: int = Field(4, ge=1)
    max_upload_bytes: int = Field(16 * 1024 * 1024, ge=1)
    job_stale_seconds: float = Field(60.0, gt=0, description="a running job with no heartbeat for this long is failed")
    dataset_cache_size: int = Field(2, ge=1, description="validation datasets kept loaded in the API for reports and figures")
    bayes_max_dim: int = Field(4096, ge=1, description="largest dimension of a Bayes-risk request with scalar or diagonal covariances")
    bayes_max_full_dim: int = Field(512, ge=1, description="largest dimension of a Bayes-risk request with a full covariance matrix")
    bayes_max_sample_entries: int = Field(
        100_000_000, ge=1, description="Monte-Carlo Bayes risk: the most n_samples x dimension a request may draw"
    )

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
        """Several heartbeats fit in the stale window, so one late beat never fails a live job."""
        return self.job_stale_seconds / 4


@lru_cache
def get_settings() -> Settings:
    return Settings()
