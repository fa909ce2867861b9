"""Every setting, read from CLASSCOMP_* environment variables in this one place."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLASSCOMP_")

    home: Path = Path.home() / ".classcomp"
    data_dir: Path | None = None
    download: bool = False
    device: str | None = None

    @property
    def mnist_dir(self) -> Path:
        return self.data_dir or self.home / "data"


@lru_cache
def get_settings() -> Settings:
    return Settings()
