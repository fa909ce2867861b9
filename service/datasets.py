"""Validation data in the API process, for the reports and figures of a trained model.

A model's report or figure is computed on the validation split of the very dataset config it was
trained with (classes, image size, condition, seed), so it sees the images the model was scored on.
Loading MNIST and resizing it takes seconds, so the last few splits are kept in memory, keyed by
that config. Only the validation split is kept; the training split is dropped after loading.
"""

from __future__ import annotations

import dataclasses
import json
import threading

from ml.config import DatasetConfig
from ml.data import Dataset, MissingDataError, load_dataset
from service.errors import ApiError
from service.inference import LRUCache
from service.settings import get_settings


def _load_validation(cfg: DatasetConfig) -> Dataset:
    settings = get_settings()
    try:
        full = load_dataset(cfg, settings.mnist_dir, settings.download)
    except MissingDataError as exc:
        raise ApiError(503, "data_unavailable", str(exc)) from exc
    return dataclasses.replace(full, x_train=full.x_val[:0].clone(), y_train=full.y_val[:0].clone())


_cache: LRUCache[Dataset] | None = None
_cache_lock = threading.Lock()


def cache() -> LRUCache[Dataset]:
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = LRUCache(get_settings().dataset_cache_size)
        return _cache


def validation_data(cfg: DatasetConfig) -> Dataset:
    """The validation split of `cfg` (x_val, y_val, classes); x_train and y_train are empty."""
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return cache().get(key, lambda: _load_validation(cfg))


class LazyValidationData:
    """A Dataset stand-in that loads the split only when an attribute is read.

    ml.figures.render decides whether a figure applies to the model before it reads any data,
    so a figure that needs no data (training curves, kernels, uploaded feature maps) or that
    does not apply never loads MNIST.
    """

    def __init__(self, cfg: DatasetConfig):
        self._cfg = cfg
        self._data: Dataset | None = None

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._data is None:
            self._data = validation_data(self._cfg)
        return getattr(self._data, name)

