"""A Python client of the classcomp service's HTTP API (v1), for a laptop talking to a server.

    from classcomp import Client

    with Client("http://gpu-box:8000") as client:
        job = client.wait(client.train("vgg", dataset={"image_size": 32}, training={"epochs": 2})["id"])
        client.predict(job["model_ids"][0], ["three.png", "seven.png"])

It imports httpx and the standard library only: numpy and Pillow are used when a numpy array or a PIL
image is passed (or an array asked for), and tqdm, for a progress bar, where it is installed. Nothing
of the service's own code is needed, so the package installs on a machine that only calls the API.

Methods return the API's JSON as dicts (files as bytes) and raise ClassCompError for any error
answer. A model `ref` is a model id, `name/version` (e.g. `vgg-mnist-0v1-vanilla/3`), `name@alias`
or a bare `name` (its latest version).

Images (`predict`, `reconstruct`, `embed`) are one image or a list of them, each a file path, the
bytes of a PNG or JPEG file, a PIL image, or a numpy array of one image (H, W) or of several
(N, H, W). Paths, bytes, PIL images and uint8 arrays (0-255) go up as files (multipart `files`;
PIL images and arrays encoded as PNG, which is lossless). Float arrays (values in [0, 1]) go up as
JSON pixel arrays, which keep their precision where a PNG would round them to 8 bits. The API takes
one or the other in a request, so one call sends float arrays alone, or no float array at all.
"""

from __future__ import annotations

import contextlib
import io
import json
import mimetypes
import os
import sys
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"

# (event, data) of a job's `status` and `epoch` events, as GET /v1/jobs/{id}/events sends them.
ProgressCallback = Callable[[str, dict], None]


class ClassCompError(Exception):
    """An error answer of the API (`status` its HTTP status, `code` and `message` its JSON error body),
    or no answer at all (`status` None, `code` `unreachable` or `timeout`)."""

    def __init__(self, status: int | None, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} ({self.status} {self.code})"

    @classmethod
    def of(cls, response: httpx.Response) -> ClassCompError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"])
        except (ValueError, KeyError, TypeError):
            # Not the API's error shape (a proxy's page, say): the status's name as the code, as the API names
            # its own errors of that kind.
            try:
                phrase = HTTPStatus(response.status_code).phrase
            except ValueError:
                phrase = "HTTP error"
            return cls(response.status_code, phrase.lower().replace(" ", "_").replace("-", "_"),
                       response.text.strip() or phrase)


class Client:
    """The service at `url` (default: CLASSCOMP_URL, else http://127.0.0.1:8000), authenticated with
    `token` (default: CLASSCOMP_API_TOKEN, the variable the service's own token is set by), `timeout`
    seconds a request. A context manager; `close()` releases its connections."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0):
        self.url = url or os.environ.get("CLASSCOMP_URL") or DEFAULT_URL
        self.timeout = timeout
        token = token or os.environ.get("CLASSCOMP_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._no_answer(exc) from exc
        if response.is_error:
            raise ClassCompError.of(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    def _no_answer(self, exc: httpx.TransportError) -> ClassCompError:
        if isinstance(exc, httpx.TimeoutException):
            return ClassCompError(None, "timeout",
                                  f"the service at {self.url} did not answer within {self.timeout:g} s")
        return ClassCompError(None, "unreachable", f"cannot reach the service at {self.url} ({exc})")

    @staticmethod
    def _model_path(ref: str, tail: str = "") -> str:
        # A ref's slash (name/version) and @ (name@alias) are part of the route: sent as they are.
        return f"/v1/models/{quote(ref, safe='/@')}{tail}"

    @staticmethod
    def _save(content: bytes, path: str | os.PathLike | None) -> bytes:
        if path is not None:
            Path(path).write_bytes(content)
        return content

    # Jobs

    def submit(self, body: dict[str, Any]) -> dict:
        """POST /v1/jobs: a job of any kind (`train`, `experiment`, `error-analysis`); the queued job."""
        return self._json("POST", "/v1/jobs", json=body)

    def train(self, model: str, *, dataset: dict | None = None, training: dict | None = None,
              name: str | None = None, **fields: Any) -> dict:
        """Submit a train job of `model` (an architecture); `dataset` and `training` as the API's train
        body, `name` the registered name its model becomes a version of (by default one derived from the
        run), `fields` anything else of that body (`init_from`)."""
        body = {"kind": "train", "model": model, "dataset": dataset or {}, "training": training or {}, **fields}
        if name is not None:
            body["name"] = name
        return self.submit(body)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        """A page of jobs, newest first: `{items, total, limit, offset}`."""
        params = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict:
        """The job, cancelled at once if it was queued; a running one ends `cancelled` within an epoch."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def report(self, job_id: str, format: Literal["json", "md", "png"] = "json") -> dict | str | bytes:
        """An experiment's or error analysis's report: a dict (json), Markdown text (md), or the error
        analysis's plot as PNG bytes (png)."""
        response = self._request("GET", f"/v1/jobs/{job_id}/report", params={"format": format})
        return response.json() if format == "json" else response.text if format == "md" else response.content

    def events(self, job_id: str, after: int = 0) -> Iterator[tuple[str, dict, int | None]]:
        """(event, data, id) of GET /v1/jobs/{id}/events, resuming after epoch `after`, until the server
        closes the stream: `status` events, an `epoch` event (id n) per metrics record, then `end` with
        the finished job."""
        headers = {"Accept": "text/event-stream", "Last-Event-ID": str(after)}
        try:
            # No read timeout: the server sends a keep-alive comment while a job is quiet.
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                   timeout=httpx.Timeout(self.timeout, read=None)) as response:
                if response.is_error:
                    response.read()
                    raise ClassCompError.of(response)
                event, event_id, data = "message", None, []
                for line in response.iter_lines():
                    if line == "":
                        if data:
                            yield event, json.loads("\n".join(data)), event_id
                        event, event_id, data = "message", None, []
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            event = value
                        elif field == "id":
                            event_id = int(value)
                        elif field == "data":
                            data.append(value)
        except httpx.TransportError as exc:
            raise self._no_answer(exc) from exc

    def wait(self, job_id: str, progress: bool | ProgressCallback = True, retries: int = 5) -> dict:
        """Follow the job's event stream to its end and return the finished job (whatever its status).

        `progress`: True draws a bar of its epochs on stderr where tqdm is installed; a function is
        called with each `status` and `epoch` event as (event, data). A dropped stream is resumed after
        the last epoch seen, `retries` times at most."""
        with contextlib.ExitStack() as stack:
            on_event = _progress_bar(stack, job_id) if progress is True else progress or None
            seen = 0
            for attempt in range(retries + 1):
                try:
                    for event, data, event_id in self.events(job_id, after=seen):
                        if event == "end":
                            return data
                        if event == "epoch":
                            seen = event_id
                        if on_event:
                            on_event(event, data)
                except ClassCompError as exc:
                    if exc.status is not None:
                        raise
                    if attempt == retries:
                        message = f"lost the event stream of job {job_id}: {exc.message}"
                        raise ClassCompError(None, exc.code, message) from exc
                time.sleep(1)
        # Streams that kept closing before the end (a restarting server): the job as it is now.
        return self.job(job_id)

    # Models

    def models(self, name: str | None = None, architecture: str | None = None, dataset: str | None = None,
               condition: str | None = None, sort: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        """A page of models, `{items, total, limit, offset}`, filtered by registered name, architecture
        (`vgg`, ...), dataset (`mnist`, ...) and condition, sorted by `sort`: date, accuracy, name,
        architecture, dataset or condition, descending with a leading `-` (the server's default: -date)."""
        filters = {"name": name, "architecture": architecture, "dataset": dataset, "condition": condition, "sort": sort}
        params = {"limit": limit, "offset": offset, **{k: v for k, v in filters.items() if v is not None}}
        return self._json("GET", "/v1/models", params=params)

    def model(self, ref: str) -> dict:
        """The model's config, size, training time, final metrics, name, version, aliases and file status."""
        return self._json("GET", self._model_path(ref))

    def metrics(self, ref: str) -> dict:
        """Its per-epoch series: `{model_id, epochs, phases, series: {metric: [value per epoch]}}`."""
        return self._json("GET", self._model_path(ref, "/metrics"))

    def delete(self, ref: str) -> None:
        self._request("DELETE", self._model_path(ref))

    def weights(self, ref: str, path: str | os.PathLike | None = None) -> bytes:
        """The safetensors weights, also written to `path` if given."""
        return self._save(self._request("GET", self._model_path(ref, "/weights")).content, path)

    def export(self, ref: str, path: str | os.PathLike | None = None,
               part: Literal["classifier", "encoder", "decoder"] = "classifier") -> bytes:
        """The model as an ONNX file (a VAE's `encoder` or `decoder` on their own), also written to `path`
        if given. The classifier's input `image` is (batch, 1, S, S) float32 in [-1, 1]: pixels p as
        2p/255 - 1 at the model's side S; its outputs `probabilities` and `class_index` as `predict`'s."""
        response = self._request("GET", self._model_path(ref, "/export.onnx"), params={"part": part})
        return self._save(response.content, path)

    def predict(self, ref: str, images: Any) -> dict:
        """`{model_id, predictions}`: per image its `label`, class `name`, `class_index` and `probabilities`
        (keyed by label), with `cluster` and `distance` (VAE + K-means) or `margin` (two-class VAE + SVM)."""
        return self._json("POST", self._model_path(ref, "/predict"), **_images_body(images))

    def reconstruct(self, ref: str, images: Any, format: Literal["json", "numpy", "png"] = "json") -> Any:
        """A VAE's reconstructions at the model's image size, values in [0, 1]: the API's JSON
        `{model_id, image_size, reconstructions}` (json), a float32 numpy array (N, S, S) (numpy), or for
        one image a PNG of that image's own size (png)."""
        path = self._model_path(ref, "/reconstruct")
        if format == "png":
            body = _images_body(images, one=True)
            return self._request("POST", path, headers={"Accept": "image/png"}, **body).content
        answer = self._json("POST", path, **_images_body(images))
        if format == "numpy":
            import numpy as np

            return np.asarray(answer["reconstructions"], dtype=np.float32)
        return answer

    def embed(self, ref: str, images: Any) -> dict:
        """A VAE's latent `mean` and `logvar` per image: `{model_id, embeddings}`."""
        return self._json("POST", self._model_path(ref, "/embed"), **_images_body(images))

    def figure(self, ref: str, name: str, index: int = 0, image: Any = None) -> bytes:
        """One of the paper's figures of the model as PNG bytes (`training-curves`, `kernels`, `feature-maps`,
        `latent-tsne`, `confusion-matrix`, ...: the API lists them). Feature maps are of validation image
        `index`, or of `image` (one image, not a float array)."""
        if image is not None:
            if name != "feature-maps":
                raise ValueError(f"only feature-maps is drawn for an image of your own, not {name}")
            body = _images_body(image, one=True)
            if "files" not in body:
                raise ValueError("feature maps are drawn of an image file, PIL image or uint8 array, not a float array")
            files = [("file", part) for _, part in body["files"]]
            return self._request("POST", self._model_path(ref, "/figures/feature-maps.png"), files=files).content
        params = {"index": index} if index else None
        return self._request("GET", self._model_path(ref, f"/figures/{name}.png"), params=params).content

    # Reports

    def wasserstein(self, ref: str, projections: int = 100, seed: int = 0, normalize: bool = True) -> dict:
        """A VAE's sliced Wasserstein-1 between each class's validation images and their reconstructions."""
        params = {"projections": projections, "seed": seed, "normalize": normalize}
        return self._json("GET", self._model_path(ref, "/reports/wasserstein"), params=params)

    def evaluate(self, ref: str, condition: str) -> dict:
        """Accuracy and confusion matrix on the validation images of `condition` (vanilla, imbalance, noisy)."""
        return self._json("GET", self._model_path(ref, "/reports/evaluation"), params={"condition": condition})

    def bayes_risk(self, mean0: Any, mean1: Any, cov0: Any, cov1: Any, **options: Any) -> dict:
        """The Bayes rule and risk of two Gaussian classes; `options` as the API's body (dim, prior1, ...)."""
        body = {"mean0": mean0, "mean1": mean1, "cov0": cov0, "cov1": cov1, **options}
        return self._json("POST", "/v1/reports/bayes-risk", json=body)

    # Registered names and aliases

    def registered_models(self, limit: int = 50, offset: int = 0) -> dict:
        """A page of registered names: `{name, latest_version, versions, aliases: {alias: version}}` each."""
        return self._json("GET", "/v1/registered-models", params={"limit": limit, "offset": offset})

    def registered_model(self, name: str) -> dict:
        return self._json("GET", f"/v1/registered-models/{quote(name, safe='')}")

    def set_alias(self, name: str, alias: str, version: int) -> dict:
        """Point `name@alias` at `version` (creating or moving the alias); the registered model."""
        return self._json("PUT", _alias_path(name, alias), json={"version": version})

    def delete_alias(self, name: str, alias: str) -> None:
        self._request("DELETE", _alias_path(name, alias))


def _alias_path(name: str, alias: str) -> str:
    return f"/v1/registered-models/{quote(name, safe='')}/aliases/{quote(alias, safe='')}"


def _progress_bar(stack: contextlib.ExitStack, job_id: str) -> ProgressCallback | None:
    """A progress callback drawing the job's epochs, status and ETA on stderr; None without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    bar = stack.enter_context(tqdm(total=None, unit="epoch", desc=f"job {job_id[:8]}", file=sys.stderr))

    def draw(event: str, data: dict) -> None:
        if event == "epoch":
            progress = data["progress"]
            if progress["epochs"] and bar.total != progress["epochs"]:
                bar.reset(total=progress["epochs"])
            bar.update(progress["epoch"] - bar.n)
        status = data.get("status", "running")
        eta = data.get("eta_seconds")
        bar.set_postfix_str(status if eta is None else f"{status}, ETA {eta:.0f} s")

    return draw


def _images_body(images: Any, one: bool = False) -> dict[str, Any]:
    """The request keywords that send `images`: multipart `files`, or JSON `pixels` for float arrays."""
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    files, pixels = [], []
    for position, item in enumerate(items):
        name = f"images[{position}]"
        if isinstance(item, (str, os.PathLike)):
            path = Path(item)
            if not path.is_file():
                raise FileNotFoundError(f"no such image file: {path}")
            media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            files.append((path.name, path.read_bytes(), media_type))
        elif isinstance(item, (bytes, bytearray)):
            # The server reads the format from the bytes themselves.
            files.append((name, bytes(item), "application/octet-stream"))
        elif _is_pil_image(item):
            files.append((f"{name}.png", _png(item), "image/png"))
        elif _is_array(item):
            array_files, array_pixels = _array_images(item, name)
            files += array_files
            pixels += array_pixels
        else:
            raise TypeError(f"{name}: an image is a file path, PNG or JPEG bytes, a PIL image or a numpy array, "
                            f"not {type(item).__name__}")
    if files and pixels:
        raise ValueError("float arrays go up as JSON pixels and other images as files, and one request is one or "
                         "the other: send the float arrays in a call of their own, or as uint8 (0-255)")
    if not files and not pixels:
        raise ValueError("no images given")
    if one and len(files) + len(pixels) != 1:
        raise ValueError(f"this takes exactly one image, not {len(files) + len(pixels)}")
    if pixels:
        return {"json": {"pixels": pixels}}
    return {"files": [("files", part) for part in files]}


def _is_pil_image(item: Any) -> bool:
    # Looked up, not imported: an object can only be a PIL image once its caller has imported Pillow.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(item, pil.Image)


def _is_array(item: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(item, numpy.ndarray)


def _array_images(array: Any, name: str) -> tuple[list[tuple[str, bytes, str]], list[list[list[float]]]]:
    """One image (H, W) or a stack (N, H, W): uint8 as PNG files, floats as pixel lists."""
    import numpy as np

    if array.ndim not in (2, 3):
        raise ValueError(f"{name}: an array is one image (H, W) or a stack of them (N, H, W), "
                         f"not of shape {array.shape}")
    stack = array[None] if array.ndim == 2 else array
    if array.dtype == np.uint8:
        from PIL import Image

        return [(f"{name}[{i}].png" if array.ndim == 3 else f"{name}.png", _png(Image.fromarray(image)),
                 "image/png") for i, image in enumerate(stack)], []
    if np.issubdtype(array.dtype, np.floating):
        return [], stack.tolist()
    raise TypeError(f"{name}: arrays are uint8 (0-255) or float (0-1), not {array.dtype}")


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
