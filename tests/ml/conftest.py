import pytest

from ml.config import DatasetConfig
from ml.data import load_dataset


@pytest.fixture(scope="session")
def mnist32(data_dir):
    """MNIST 0 vs 1 at 32x32, the CPU-sized setting every ml test trains on."""
    return load_dataset(DatasetConfig(image_size=32), data_dir)
