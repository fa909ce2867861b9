"""Inference in the API process: a cache of loaded models, image decoding, predict / reconstruct / embed.

Everything here is blocking (Pillow, torch): routes call it through a threadpool. Images are
turned into model inputs by ml.data.to_model_input, the same function training data went
through, at the model's own image size.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ml import artifacts
from ml.artifacts import LoadedModel
from ml.data import to_model_input
from ml.models import predict as model_predict
from ml.models import vae_of
from ml.train import pick_device
from service import storage
from service.errors import ApiError

V = TypeVar("V")
IMAGE_FORMATS = ("PNG", "JPEG")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class LRUCache(Generic[V]):
    """The `size` most recently used values, each loaded once.

    One lock covers lookups and loads, so two requests for a cold key load it once.
    """

    def __init__(self, size: int):
        self.size = size
        self._values: OrderedDict[str, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            value = load()
            self._values[key] = value
            if len(self._values) > self.size:
                self._values.popitem(last=False)
            return value

    def evict(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)


class ModelCache:
    """The most recently used models, loaded once and kept on the inference device."""

    def __init__(self, size: int, device: str | None):
        self.device = pick_device(device)
        self._lru: LRUCache[LoadedModel] = LRUCache(size)

    def get(self, model_id: str) -> LoadedModel:
        return self._lru.get(model_id, lambda: artifacts.load(storage.model_dir(model_id), self.device))

    def evict(self, model_id: str) -> None:
        self._lru.evict(model_id)


@dataclass
class Upload:
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Batch:
    x: Tensor
    sizes: list[tuple[int, int]]  # each input's original (height, width)


def decode_image(upload: Upload) -> np.ndarray:
    """An uploaded PNG or JPEG as an 8-bit grayscale array (H, W)."""
    try:
        with Image.open(io.BytesIO(upload.data)) as image:
            if image.format not in IMAGE_FORMATS:
                raise ApiError(415, "unsupported_image_type",
                               f"{upload.filename} is a {image.format} image; send PNG or JPEG")
            image = ImageOps.exif_transpose(image)
            if image.mode in SIXTEEN_BIT_MODES:
                return (np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8)
            return np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ApiError(400, "invalid_image", f"{upload.filename} is not a readable PNG or JPEG image ({exc})") from exc


def batch_from_uploads(uploads: list[Upload], image_size: int) -> Batch:
    images = [decode_image(u) for u in uploads]
    x = torch.cat([to_model_input(torch.from_numpy(im.copy())[None], image_size) for im in images])
    return Batch(x, [im.shape for im in images])


def batch_from_pixels(pixels: list[list[list[float]]], image_size: int) -> Batch:
    # to_model_input expects [0, 255]; scaling floats (not rounding to uint8) keeps the client's precision.
    tensors = [torch.tensor(p, dtype=torch.float32) * 255 for p in pixels]
    x = torch.cat([to_model_input(t[None], image_size) for t in tensors])
    return Batch(x, [tuple(t.shape) for t in tensors])


def _on_device_of(model: torch.nn.Module, x: Tensor) -> Tensor:
    return x.to(next(model.parameters()).device)


def predict(loaded: LoadedModel, batch: Batch) -> list[dict]:
    out = {k: v.cpu().tolist() for k, v in model_predict(loaded.model, _on_device_of(loaded.model, batch.x)).items()}
    labels = [str(c) for c in loaded.classes]
    predictions = []
    for i, class_index in enumerate(out["class_index"]):
        p = {
            "label": loaded.classes[class_index],
            "class_index": class_index,
            "probabilities": dict(zip(labels, out["probabilities"][i])),
        }
        p.update({k: out[k][i] for k in ("cluster", "distance", "margin") if k in out})
        predictions.append(p)
    return predictions


def vae(loaded: LoadedModel) -> torch.nn.Module:
    try:
        return vae_of(loaded.model)
    except ValueError as exc:
        raise ApiError(409, "not_a_vae",
                       f"{exc}; only the VAE models (vae-svm, vae-kmeans, conv-vae-svm, conv-vae-kmeans) have one") from exc


@torch.inference_mode()
def encode(loaded: LoadedModel, batch: Batch) -> tuple[Tensor, Tensor]:
    model = vae(loaded)
    return model.encode(_on_device_of(model, batch.x))


@torch.inference_mode()
def reconstruct(loaded: LoadedModel, batch: Batch) -> Tensor:
    """Decoded latent means, (N, S, S) in [0, 1]."""
    mean, _ = encode(loaded, batch)
    return ((vae(loaded).decode(mean)[:, 0].float().cpu() + 1) / 2).clamp(0, 1)


def to_png(image: Tensor, size: tuple[int, int]) -> bytes:
    """A [0, 1] image as an 8-bit grayscale PNG resized to `size` (height, width)."""
    pixels = (image.numpy() * 255).round().astype(np.uint8)
    resized = Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    resized.save(buffer, format="PNG")
    return buffer.getvalue()
