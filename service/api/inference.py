"""Predict, reconstruct and embed on uploaded images (multipart `files`) or pixel arrays (JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ml.artifacts import LoadedModel
from service import inference
from service.api.deps import ModelCacheDep, SessionDep, get_model_or_404
from service.errors import ApiError
from service.inference import Batch, ModelCache, Upload
from service.schemas import (
    ERROR_RESPONSES,
    IMAGES_REQUEST_BODY,
    EmbedResponse,
    PixelsRequest,
    PredictResponse,
    ReconstructResponse,
)

router = APIRouter(prefix="/v1/models", tags=["inference"], responses=ERROR_RESPONSES)

Inputs = list[Upload] | list[list[list[float]]]


async def read_inputs(request: Request) -> Inputs:
    """The images of a request, undecoded (decoding is blocking work for the threadpool)."""
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
        try:
            return PixelsRequest.model_validate_json(await request.body()).pixels
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
    raise ApiError(415, "unsupported_media_type",
                   "send images as multipart/form-data (field `files`) or pixel arrays as application/json")


def load(session: Session, cache: ModelCache, model_id: str, vae_only: bool = False) -> LoadedModel:
    get_model_or_404(session, model_id)
    loaded = cache.get(model_id)
    if vae_only:
        inference.vae(loaded)
    return loaded


def to_batch(inputs: Inputs, loaded: LoadedModel) -> Batch:
    size = loaded.config.dataset.image_size
    if inputs and isinstance(inputs[0], Upload):
        return inference.batch_from_uploads(inputs, size)
    return inference.batch_from_pixels(inputs, size)


@router.post(
    "/{model_id}/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    summary="Labels and class probabilities per image",
    openapi_extra=IMAGES_REQUEST_BODY,
)
async def predict(model_id: str, request: Request, session: SessionDep, cache: ModelCacheDep) -> dict:
    loaded = await run_in_threadpool(load, session, cache, model_id)
    inputs = await read_inputs(request)

    def run() -> list[dict]:
        return inference.predict(loaded, to_batch(inputs, loaded))

    return {"model_id": model_id, "predictions": await run_in_threadpool(run)}


@router.post(
    "/{model_id}/reconstruct",
    response_model=ReconstructResponse,
    summary="VAE reconstructions",
    description="With `Accept: image/png` and one image, a PNG of the input's size; otherwise JSON arrays "
    "at the model's image size. 409 for a model without a VAE.",
    openapi_extra=IMAGES_REQUEST_BODY,
    responses={200: {"content": {"image/png": {}}}},
)
async def reconstruct(model_id: str, request: Request, session: SessionDep, cache: ModelCacheDep):
    loaded = await run_in_threadpool(load, session, cache, model_id, True)
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
    "/{model_id}/embed",
    response_model=EmbedResponse,
    summary="VAE latent mean and log-variance per image",
    openapi_extra=IMAGES_REQUEST_BODY,
)
async def embed(model_id: str, request: Request, session: SessionDep, cache: ModelCacheDep) -> dict:
    loaded = await run_in_threadpool(load, session, cache, model_id, True)
    inputs = await read_inputs(request)

    def run() -> list[dict]:
        mean, logvar = inference.encode(loaded, to_batch(inputs, loaded))
        return [{"mean": m, "logvar": v} for m, v in zip(mean.float().cpu().tolist(), logvar.float().cpu().tolist())]

    return {"model_id": model_id, "embeddings": await run_in_threadpool(run)}
