"""A model as an ONNX file (ml/onnx_export.py), for onnxruntime, KServe, Triton and the like.

Exported on every request, not cached: an export takes seconds, is asked for once per deployment
rather than per prediction, and a copy beside the weights would double a model's disk use.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response

from ml import onnx_export
from service.api.deps import ModelCacheDep, ModelRef, SessionDep, get_model_or_404
from service.errors import ApiError
from service.schemas import MODEL_ERROR_RESPONSES

router = APIRouter(prefix="/v1/models", tags=["models"], responses=MODEL_ERROR_RESPONSES)

# ONNX has no registered media type (IANA lists none; Python's mimetypes knows no .onnx): opaque bytes,
# as the safetensors weights are served.
ONNX_MEDIA_TYPE = "application/octet-stream"
Part = Literal["classifier", "encoder", "decoder"]


@router.get(
    "/{ref:model_ref}/export.onnx",
    response_class=Response,
    responses={200: {"content": {ONNX_MEDIA_TYPE: {}}, "description": "the ONNX model file"}},
    summary="The model, or one part of a VAE, as an ONNX file with a dynamic batch dimension",
    description=(
        "`part=classifier` (default, every model): input `image` (batch, 1, S, S), float32 in [-1, 1] (grayscale "
        "pixels p as 2p/255 - 1 at the model's side S); outputs `probabilities` (batch, K) and `class_index` as "
        "`predict` gives them, with `logits` (CNNs), `scores` and for two classes `margin` (VAE + SVM), or `cluster` "
        "and `distance` (VAE + K-means). VAEs also have `part=encoder` (`image` to `latent_mean`, `latent_logvar`, "
        "as `embed`) and `part=decoder` (`latent` (batch, D) to `image` in [-1, 1]); a CNN answers 409 "
        "`part_not_applicable` for those. The file's metadata (`classcomp.classes`, `classcomp.class_names`, "
        "`classcomp.image_size`, ...) says how to feed and read it. Exported on each request: seconds."
    ),
)
def export_onnx(
    ref: ModelRef,
    session: SessionDep,
    cache: ModelCacheDep,
    part: Annotated[Part, Query(description="which graph: classifier, or a VAE's encoder or decoder")] = "classifier",
) -> Response:
    model = get_model_or_404(session, ref)
    loaded = cache.get(model.id)
    metadata = {"classcomp.model_id": model.id, "classcomp.name": model.name, "classcomp.version": str(model.version)}
    try:
        content = onnx_export.export(loaded, part, metadata)
    except onnx_export.PartNotApplicable as exc:
        raise ApiError(409, "part_not_applicable", str(exc)) from exc
    stem = f"{model.name}-{model.version}"
    filename = f"{stem}.onnx" if part == "classifier" else f"{stem}-{part}.onnx"
    return Response(content, media_type=ONNX_MEDIA_TYPE, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
