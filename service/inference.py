"""Inference in the API process: a cache of loaded models, image decoding, predict / reconstruct / embed.

Everything here is blocking (Pillow, torch): routes call it through a threadpool, except predict's
forward passes, which service.batching runs for concurrent requests together. Images are turned
into model inputs by ml.data.to_model_input, the same function training data went through, at the
model's own image size, within the pixel budgets of the settings.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from ml.artifacts import LoadedModel
from ml.data import to_model_input
from ml.models import predict as model_predict
from ml.models import vae_of
from ml.train import pick_device
from service.errors import ApiError
from service.integrity import ArtifactVerifier
from service.settings import get_settings

V = TypeVar("V")
IMAGE_FORMATS = ("PNG", "JPEG")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
# v / 257 rounded: 65535 becomes 255, and no 16-bit value is half-way between two 8-bit ones.
_SIXTEEN_TO_EIGHT_BITS = [min(255, (v + 128) // 257) for v in range(65536)]
IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
# An image with more pixels than a square this many times the model's input side is shrunk to the input
# size by Pillow right after decoding, not by to_model_input as a float tensor four times its size. Pillow's
# antialiased bilinear resize is torch's: the inputs differ by about the rounding to 8 bits (measured at
# most 0.008 on the [-1, 1] scale, where one 8-bit step is 0.0078, JPEG draft decoding included).
LARGE_SIDE = 4
# Decoding (and parsing JSON pixel arrays) is CPU-bound: more at once than cores would only hold more memory.
decode_slots = threading.BoundedSemaphore(os.cpu_count() or 1)
# glibc keeps what a thread frees in that thread's arena, and each threadpool thread has its own, so
# a burst of large decodes would stay resident (measured: +680 MB after sixteen 16-megapixel PNGs);
# malloc_trim hands it back to the system. It takes about 15 ms, so only requests of a megapixel or
# more (25 ms of decoding at least) call it. Where the C library has none (musl, macOS), it is skipped.
_malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
TRIM_AFTER_PIXELS = 1 << 20


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

    def __contains__(self, key: str) -> bool:
        # Without the lock, which a load holds for seconds: for the event loop, which must not wait.
        return key in self._values

    def peek(self, key: str) -> V | None:
        """The value if it is cached, without loading it."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            return None

    def evict(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)


class ModelCache:
    """The most recently used models, loaded once and kept on the inference device.

    Loads are checked against the weights' recorded checksum (service.integrity); a cached model
    whose files changed or vanished since, or failed a later check, is loaded again, so damage
    answers 409 or 410 rather than predictions from memory of files that are no longer there.
    """

    def __init__(self, size: int, device: str | None):
        self.device = pick_device(device)
        self.verifier = ArtifactVerifier()
        self._lru: LRUCache[LoadedModel] = LRUCache(size)

    def get(self, model_id: str) -> LoadedModel:
        loaded = self._lru.get(model_id, lambda: self.verifier.load(model_id, self.device))
        if not self.verifier.trusted(model_id):
            self._lru.evict(model_id)
            loaded = self._lru.get(model_id, lambda: self.verifier.load(model_id, self.device))
        return loaded

    def __contains__(self, model_id: str) -> bool:
        """Whether the model is loaded, trusted or not; never waits."""
        return model_id in self._lru

    def cached(self, model_id: str) -> LoadedModel | None:
        """The model if it is loaded and its weights file is the one it was loaded from (a stat, no load)."""
        loaded = self._lru.peek(model_id)
        return loaded if loaded is not None and self.verifier.trusted(model_id) else None

    def evict(self, model_id: str) -> None:
        self._lru.evict(model_id)
        self.verifier.forget(model_id)


@dataclass
class Upload:
    filename: str
    content_type: str | None
    data: bytes


@dataclass
class Batch:
    x: Tensor
    sizes: list[tuple[int, int]]  # each input's original (height, width)


def check_pixels(shapes: list[tuple[str, int, int]]) -> int:
    """The pixels of all the (name, height, width) of a request; 413 for one image, or all together, over budget."""
    settings = get_settings()
    for name, height, width in shapes:
        if height * width > settings.max_image_pixels:
            raise ApiError(413, "image_too_large",
                           f"{name} is {width}x{height}, {height * width} pixels: more than the "
                           f"{settings.max_image_pixels} an image may have (CLASSCOMP_MAX_IMAGE_PIXELS)")
    total = sum(height * width for _, height, width in shapes)
    if total > settings.max_request_pixels:
        raise ApiError(413, "too_many_pixels",
                       f"the {len(shapes)} images hold {total} pixels in all: more than the "
                       f"{settings.max_request_pixels} a request may have (CLASSCOMP_MAX_REQUEST_PIXELS)")
    return total


def _invalid_image(name: str, exc: Exception) -> ApiError:
    # Pillow names an in-memory file by its repr, a heap address: nothing the client should see.
    reason = " ".join(_OBJECT_REPR.sub("", str(exc)).split())
    return ApiError(400, "invalid_image", f"{name} is not a readable PNG or JPEG image ({reason})")


def open_image(upload: Upload) -> Image.Image:
    """The upload with only its header read: format and size known, no pixel decoded."""
    try:
        image = Image.open(io.BytesIO(upload.data))
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large",
                       f"{upload.filename} has more pixels than Pillow will decode, and more than the "
                       f"{get_settings().max_image_pixels} an image may have (CLASSCOMP_MAX_IMAGE_PIXELS)") from exc
    except IMAGE_ERRORS as exc:
        raise _invalid_image(upload.filename, exc) from exc
    if image.format not in IMAGE_FORMATS:
        raise ApiError(415, "unsupported_image_type", f"{upload.filename} is a {image.format} image; send PNG or JPEG")
    return image


def decode(image: Image.Image, name: str, image_size: int) -> tuple[Tensor, tuple[int, int]]:
    """An opened image as a model input (1, 1, S, S), and its upright (height, width)."""
    width, height = image.size
    large = LARGE_SIDE * image_size
    try:
        with decode_slots, image:
            if image.format == "JPEG" and min(image.size) >= 2 * large:
                image.draft("L", (large, large))  # the decoder's own 1/2 to 1/8 scaling, in grey
            image.load()
            decoded = image.size
            ImageOps.exif_transpose(image, in_place=True)
            if image.size != decoded:
                width, height = height, width
            if image.mode in SIXTEEN_BIT_MODES:
                gray = image.convert("I").point(_SIXTEEN_TO_EIGHT_BITS, "L")
            else:
                gray = image if image.mode == "L" else image.convert("L")
            if gray.width * gray.height > large * large:
                gray = gray.resize((image_size, image_size), Image.Resampling.BILINEAR)
            pixels = torch.from_numpy(np.array(gray))
    except IMAGE_ERRORS as exc:
        raise _invalid_image(name, exc) from exc
    return to_model_input(pixels[None], image_size), (height, width)


def batch_from_uploads(uploads: list[Upload], image_size: int) -> Batch:
    """Every header is checked against the pixel budgets before any image is decoded; then one is
    decoded at a time and shrunk at once, so a request holds at most one full-size image."""
    images = [open_image(u) for u in uploads]
    pixels = check_pixels([(u.filename, image.height, image.width) for u, image in zip(uploads, images)])
    inputs = [decode(image, u.filename, image_size) for u, image in zip(uploads, images)]
    release_freed_memory(pixels)
    return Batch(torch.cat([x for x, _ in inputs]), [size for _, size in inputs])


def pixel_images(pixels: list[list[list[float]]]) -> list[Tensor]:
    """JSON pixel arrays within the pixel budgets, as float tensors (H, W) in [0, 255]."""
    check_pixels([(f"pixels[{i}]", len(p), len(p[0])) for i, p in enumerate(pixels)])
    # to_model_input expects [0, 255]; scaling floats (not rounding to uint8) keeps the client's precision.
    return [torch.tensor(p, dtype=torch.float32).mul_(255) for p in pixels]


def batch_from_pixels(images: list[Tensor], image_size: int) -> Batch:
    x = torch.cat([to_model_input(t[None], image_size) for t in images])
    return Batch(x, [tuple(t.shape) for t in images])


def release_freed_memory(pixels: int) -> None:
    """Once the decodes of a request of `pixels` pixels are freed: hand glibc's cached memory back."""
    if pixels >= TRIM_AFTER_PIXELS and _malloc_trim is not None:
        _malloc_trim(0)


def _on_device_of(model: torch.nn.Module, x: Tensor) -> Tensor:
    return x.to(next(model.parameters()).device)


@torch.inference_mode()
def predict(loaded: LoadedModel, x: Tensor) -> list[dict]:
    out = {k: v.cpu().tolist() for k, v in model_predict(loaded.model, _on_device_of(loaded.model, x)).items()}
    labels = [str(c) for c in loaded.classes]
    names = loaded.config.dataset.class_names
    predictions = []
    for i, class_index in enumerate(out["class_index"]):
        p = {
            "label": loaded.classes[class_index],
            "name": names[class_index],
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
