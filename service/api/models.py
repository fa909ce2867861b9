"""The model registry: list, describe, metrics, weights, delete.

A model's description includes the status of its files (service/integrity.py): one model's GET
hashes its weights when this process has no verdict on the file as it is now; a listing only
stats each file, reporting what is known and `unchecked` for the rest.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from service import registry, storage
from service.api.deps import ModelCacheDep, SessionDep, get_model_or_404
from service.schemas import MODEL_ERROR_RESPONSES, ModelMetrics, ModelOut, Page

router = APIRouter(prefix="/v1/models", tags=["models"], responses=MODEL_ERROR_RESPONSES)

# safetensors has no registered media type; like the Hugging Face Hub, serve it as opaque bytes.
SAFETENSORS_MEDIA_TYPE = "application/octet-stream"


@router.get("", response_model=Page[ModelOut], summary="List models, newest first")
def list_models(
    session: SessionDep,
    cache: ModelCacheDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    items, total = registry.list_models(session, limit, offset)
    items = [ModelOut.of(model, cache.verifier.status(model, check=False)) for model in items]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{model_id}", response_model=ModelOut,
            summary="A model's config, size, training time, final metrics and the status of its files")
def get_model(model_id: str, session: SessionDep, cache: ModelCacheDep) -> ModelOut:
    model = get_model_or_404(session, model_id)
    return ModelOut.of(model, cache.verifier.status(model, check=True))


@router.get("/{model_id}/metrics", response_model=ModelMetrics, summary="Per-epoch metric series")
def get_metrics(model_id: str, session: SessionDep) -> ModelMetrics:
    history = get_model_or_404(session, model_id).history
    names = sorted({k for record in history for k in record} - {"epoch", "epochs", "phase"})
    return ModelMetrics(
        model_id=model_id,
        epochs=[r["epoch"] for r in history],
        phases=[r["phase"] for r in history],
        series={name: [r.get(name) for r in history] for name in names},
    )


@router.get(
    "/{model_id}/weights",
    response_class=FileResponse,
    summary="The weights as a safetensors file",
    description="Hashed before they are sent: 409 `artifact_corrupt` if they do not match the SHA-256 recorded "
    "at registration (the model's `weights_sha256`), 410 `artifact_missing` if they are gone.",
    responses={200: {"content": {SAFETENSORS_MEDIA_TYPE: {}}}},
)
def get_weights(model_id: str, session: SessionDep, cache: ModelCacheDep) -> FileResponse:
    cache.verifier.verify(get_model_or_404(session, model_id))
    return FileResponse(storage.weights_path(model_id), media_type=SAFETENSORS_MEDIA_TYPE,
                        filename=f"{model_id}.safetensors")


@router.delete("/{model_id}", status_code=204, summary="Delete a model and its artifacts")
def delete_model(model_id: str, session: SessionDep, cache: ModelCacheDep) -> Response:
    registry.delete_model(session, get_model_or_404(session, model_id))
    storage.remove(model_id)
    cache.evict(model_id)
    return Response(status_code=204)
