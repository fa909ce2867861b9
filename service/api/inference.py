"""Predict, reconstruct and embed on uploaded images (multipart `files`) or pixel arrays (JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from torch import Tensor

from ml.artifacts import LoadedModel
from service import inference, registry
from service.api.deps import ModelCacheDep, ModelRef, resolve_or_404
from service.errors import ApiError
from service.inference import Batch, ModelCache, Upload
from service.schemas import (
    IMAGES_REQUEST_BODY,
    MODEL_ERROR_RESPONSES,
    EmbedResponse,
    PixelsRequest,
    PredictResponse,
    ReconstructResponse,
)

router = APIRouter(prefix="/v1/models", tags=["inference"], responses=MODEL_ERROR_RESPONSES)

Inputs = list[Upload] | list[Tensor]


def parse_pixels(body: bytes) -> list[Tensor]:
    """A JSON pixel request's images. For the threadpool, in a decode slot: the parsed lists take tens of
    bytes a pixel, and seconds for a large body."""
    try:
        with inference.decode_slots:
            images = inference.pixel_images(PixelsRequest.model_validate_json(body).pixels)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from exc
    inference.release_freed_memory(sum(image.numel() for image in images))
    return images


async def read_inputs(request: Request) -> Inputs:
    """The images of a request: uploads undecoded (decoding is blocking work for the threadpool), pixel arrays parsed."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        async with request.form() as form:
            uploads = []
            for part in form.getlist("files"):
                if not isinstance(part, UploadFile):
                    raise ApiError(422, "invalid_request", "files: each part must be a file, not a text field")
                declared = (part.content_type or "").lower()
                if declared and not declared.startswith("image/") and declared != "application/octet-stream":
                    raise ApiError(415, "unsupported_media_type",
                                   f"{part.filename} was sent as {declared}; send PNG or JPEG images")
                uploads.append(Upload(part.filename or "upload", declared or None, await part.read()))
        if not uploads:
            raise ApiError(422, "invalid_request", "files: send one or more images in the multipart field `files`")
        return uploads
    if media_type == "application/json":
        return await run_in_threadpool(parse_pixels, await request.body())
    raise ApiError(415, "unsupported_media_type",
                   "send images as multipart/form-data (field `files`) or pixel arrays as application/json")


def load(cache: ModelCache, ref: str, vae_only: bool = False) -> tuple[str, LoadedModel]:
    """For the threadpool: the id of the model `ref` names, and the model. The registry is asked (404 for
    an unknown ref) unless `ref` is the id of a cached model whose files have not changed, so that predict
    by id opens no SQL session: a cached model was registered when it loaded, deleting it through this API
    evicts it, and deleting it through another API process removes its weights file, which the cache's stat
    of that file notices, and then the registry's 404. Names and aliases are looked up on every request,
    so a request after an alias moved is served by the version it points at now."""
    model_id, loaded = ref, cache.cached(ref)
    if loaded is None:
        with registry.session_scope() as session:
            model_id = resolve_or_404(session, ref).id
        loaded = cache.get(model_id)
    if vae_only:
        inference.vae(loaded)
    return model_id, loaded


def to_batch(inputs: Inputs, loaded: LoadedModel) -> Batch:
    size = loaded.config.dataset.image_size
    if inputs and isinstance(inputs[0], Upload):
        return inference.batch_from_uploads(inputs, size)
    return inference.batch_from_pixels(inputs, size)


def load_batch(cache: ModelCache, ref: str, inputs: Inputs) -> tuple[str, LoadedModel, Batch]:
    model_id, loaded = load(cache, ref)
    return model_id, loaded, to_batch(inputs, loaded)


@router.post(
    "/{ref:model_ref}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Labels and class probabilities per image",
    description="Concurrent requests to one model share forward passes (CLASSCOMP_BATCH_MAX_SIZE, "
    "CLASSCOMP_BATCH_MAX_DELAY_MS). 413 for images over the pixel budgets (CLASSCOMP_MAX_IMAGE_PIXELS, "
    "CLASSCOMP_MAX_REQUEST_PIXELS), checked before anything is decoded.",
    openapi_extra=IMAGES_REQUEST_BODY,
)
async def predict(ref: ModelRef, request: Request, cache: ModelCacheDep) -> dict:
    # A cached model's request by id takes two thread hand-offs, decoding in the threadpool and the pass in the
    # batcher's thread: each costs the event loop time, and on busy cores a wait for the thread to run.
    # An unknown ref is a 404 before the body is read; a name or alias is resolved once, here.
    model_id = ref if ref in cache else (await run_in_threadpool(load, cache, ref))[0]
    inputs = await read_inputs(request)
    model_id, loaded, batch = await run_in_threadpool(load_batch, cache, model_id, inputs)
    predictions = await request.app.state.predict_batcher.predict(loaded, batch.x)
    return {"model_id": model_id, "predictions": predictions}


@router.post(
    "/{ref:model_ref}/reconstruct",
    response_model=ReconstructResponse,
    summary="VAE reconstructions",
    description="With `Accept: image/png` and one image, a PNG of the input's size; otherwise JSON arrays "
    "at the model's image size. 409 for a model without a VAE.",
    openapi_extra=IMAGES_REQUEST_BODY,
    responses={200: {"content": {"image/png": {}}}},
)
async def reconstruct(ref: ModelRef, request: Request, cache: ModelCacheDep):
    model_id, loaded = await run_in_threadpool(load, cache, ref, True)
    inputs = await read_inputs(request)
    as_png = "image/png" in request.headers.get("accept", "") and len(inputs) == 1

    def run() -> Response | dict:
        batch = to_batch(inputs, loaded)
        images = inference.reconstruct(loaded, batch)
        if as_png:
            return Response(inference.to_png(images[0], batch.sizes[0]), media_type="image/png")
        return {"model_id": model_id, "image_size": images.shape[-1], "reconstructions": images.tolist()}

    return await run_in_threadpool(run)


@router.post(
    "/{ref:model_ref}/embed",
    response_model=EmbedResponse,
    summary="VAE latent mean and log-variance per image",
    openapi_extra=IMAGES_REQUEST_BODY,
)
async def embed(ref: ModelRef, request: Request, cache: ModelCacheDep) -> dict:
    model_id, loaded = await run_in_threadpool(load, cache, ref, True)
    inputs = await read_inputs(request)

    def run() -> list[dict]:
        mean, logvar = inference.encode(loaded, to_batch(inputs, loaded))
        return [{"mean": m, "logvar": v} for m, v in zip(mean.float().cpu().tolist(), logvar.float().cpu().tolist())]

    return {"model_id": model_id, "embeddings": await run_in_threadpool(run)}
