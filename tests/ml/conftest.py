import os
from pathlib import Path

import pytest

from ml.config import DatasetConfig
from ml.data import load_dataset

DATA_DIR = Path(os.environ.get("CLASSCOMP_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def mnist32():
    """MNIST 0 vs 1 at 32x32, the CPU-sized setting every ml test trains on."""
    return load_dataset(DatasetConfig(image_size=32), DATA_DIR)
