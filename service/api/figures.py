"""The paper's figures of a trained model as PNG (ml.figures), computed on its own validation split.

GET figures are cached in the model's artifact directory (`figures/`): a t-SNE costs seconds and
a trained model never changes. Feature maps of an uploaded image (POST) are not cached.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from torch import Tensor

from ml import figures
from ml.artifacts import LoadedModel
from service import derived, inference
from service.api.deps import ModelCacheDep, ModelRef, SessionDep, get_model_or_404
from service.datasets import LazyValidationData, validation_data
from service.errors import ApiError
from service.inference import ModelCache, Upload
from service.schemas import MODEL_ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["figures"], responses=MODEL_ERROR_RESPONSES)

PNG_RESPONSE = {200: {"content": {"image/png": {}}, "description": "the figure as a PNG image"}}
FIGURE_NAMES = ", ".join(figures.FIGURES)


def _check_name(name: str) -> None:
    if name not in figures.FIGURES:
        raise ApiError(404, "figure_not_found", f"there is no figure {name!r}; the figures are {FIGURE_NAMES}")


def render(loaded: LoadedModel, name: str, image: Tensor | None = None) -> bytes:
    """The figure; a 409 when it does not exist for the model's kind. Data is loaded only if it is read."""
    data = LazyValidationData(loaded.config.dataset)
    history = loaded.metrics.get("history", [])
    try:
        return figures.render(name, loaded.model, data, history, image)  # type: ignore[arg-type]
    except figures.FigureNotApplicable as exc:
        raise ApiError(409, "figure_not_applicable", str(exc)) from exc


def _png(content: bytes, cache: str | None = None) -> Response:
    return Response(content, media_type="image/png", headers={"X-Cache": cache} if cache else None)


@router.get(
    "/{ref:model_ref}/figures/feature-maps.png",
    response_class=Response,
    responses=PNG_RESPONSE,
    summary="Feature maps (first and last conv layer) of a validation image, as PNG",
    description="CNNs only (409 `figure_not_applicable` for a VAE). POST an image to the same path for one of your own.",
)
def get_feature_maps(
    ref: ModelRef,
    session: SessionDep,
    cache: ModelCacheDep,
    index: Annotated[int, Query(ge=0, description="the validation image shown")] = 0,
) -> Response:
    return figure(ref, "feature-maps", index, session, cache)


# Declared after feature-maps.png, so that path reaches the route above with its `index`.
@router.get(
    "/{ref:model_ref}/figures/{name}.png",
    response_class=Response,
    responses=PNG_RESPONSE,
    summary="A figure of the paper for this model, as PNG",
    description=(
        f"`name` is one of {FIGURE_NAMES}. Training curves come from the model's per-epoch history; kernels and "
        "feature maps exist for the CNNs; t-SNE of the latent space, the latent classifiers (K-means labels, SVM "
        "hyperplane) and reconstructions for the VAEs (409 `figure_not_applicable` otherwise)."
    ),
)
def get_figure(
    ref: ModelRef,
    session: SessionDep,
    cache: ModelCacheDep,
    name: Annotated[str, Path(description=f"one of {FIGURE_NAMES}", examples=["training-curves"],
                              json_schema_extra={"enum": list(figures.FIGURES)})],
) -> Response:
    return figure(ref, name, 0, session, cache)


def figure(ref: str, name: str, index: int, session: Session, cache: ModelCache) -> Response:
    """A figure from the derived-file cache, or rendered and cached; feature maps of validation image `index`."""
    model_id = get_model_or_404(session, ref).id
    _check_name(name)
    filename = f"feature-maps-{index}.png" if name == "feature-maps" else f"{name}.png"
    cached = derived.read(model_id, "figures", filename)
    if cached is not None:
        return _png(cached, "hit")
    loaded = cache.get(model_id)
    image = None
    if index:
        x_val = validation_data(loaded.config.dataset).x_val
        if index >= len(x_val):
            raise ApiError(422, "invalid_request", f"query parameter index: the validation split has "
                           f"{len(x_val)} images (0 to {len(x_val) - 1})")
        image = x_val[index : index + 1]
    content = render(loaded, name, image)
    derived.write(model_id, "figures", filename, content)
    return _png(content, "miss")


async def read_upload(request: Request) -> Upload:
    """The one image of a multipart request (field `file`), undecoded."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "send the image as multipart/form-data in the field `file`")
    async with request.form() as form:
        parts = form.getlist("file")
        if len(parts) != 1 or not isinstance(parts[0], UploadFile):
            raise ApiError(422, "invalid_request", "file: send exactly one image file in the multipart field `file`")
        part = parts[0]
        declared = (part.content_type or "").lower()
        if declared and not declared.startswith("image/") and declared != "application/octet-stream":
            raise ApiError(415, "unsupported_media_type",
                           f"{part.filename} was sent as {declared}; send a PNG or JPEG image")
        return Upload(part.filename or "upload", declared or None, await part.read())


@router.post(
    "/{ref:model_ref}/figures/feature-maps.png",
    response_class=Response,
    responses=PNG_RESPONSE,
    summary="Feature maps (first and last conv layer) of an uploaded image, as PNG",
    description="The image (multipart field `file`, PNG or JPEG) is decoded and preprocessed as for predict. "
    "CNNs only (409 `figure_not_applicable` for a VAE). Not cached.",
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"],
    }}}}},
)
async def post_feature_maps(ref: ModelRef, request: Request, session: SessionDep, cache: ModelCacheDep) -> Response:
    def load() -> LoadedModel:
        return cache.get(get_model_or_404(session, ref).id)

    loaded = await run_in_threadpool(load)
    upload = await read_upload(request)

    def run() -> bytes:
        batch = inference.batch_from_uploads([upload], loaded.config.dataset.image_size)
        return render(loaded, "feature-maps", batch.x)

    return _png(await run_in_threadpool(run))
