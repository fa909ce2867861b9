"""The model registry: list, describe, metrics, weights, delete; names, versions and aliases.

Every model route takes a model ref: the id, `name/version`, `name@alias` or a bare name (its newest
version), resolved to one model at the start of the request (service.registry.get_model).

A model's description includes the status of its files (service/integrity.py): one model's GET
hashes its weights when this process has no verdict on the file as it is now; a listing only
stats each file, reporting what is known and `unchecked` for the rest.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from service import registry, storage
from service.api.deps import ModelCacheDep, ModelRef, SessionDep, get_model_or_404
from service.errors import ApiError
from service.schemas import (
    MODEL_ERROR_RESPONSES, AliasName, AliasRequest, ModelMetrics, ModelOut, ModelSort, Page, RegisteredModelOut,
)

router = APIRouter(prefix="/v1/models", tags=["models"], responses=MODEL_ERROR_RESPONSES)
names_router = APIRouter(prefix="/v1/registered-models", tags=["models"], responses=MODEL_ERROR_RESPONSES)

# safetensors has no registered media type; like the Hugging Face Hub, serve it as opaque bytes.
SAFETENSORS_MEDIA_TYPE = "application/octet-stream"


@router.get("", response_model=Page[ModelOut], summary="List models: filtered, sorted, a page at a time")
def list_models(
    session: SessionDep,
    cache: ModelCacheDep,
    name: Annotated[str | None, Query(description="only the versions of this registered name")] = None,
    architecture: Annotated[str | None, Query(description="only this architecture, e.g. vgg")] = None,
    dataset: Annotated[str | None, Query(description="only this dataset: mnist, fashion-mnist or gaussian")] = None,
    condition: Annotated[str | None, Query(description="only this training condition: vanilla, imbalance, noisy")] = None,
    sort: Annotated[ModelSort, Query(description="the order (`-` for descending; accuracy is the final "
                                     "validation accuracy); ties newest first")] = "-date",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    where = registry.ModelFilter(name=name, architecture=architecture, dataset=dataset, condition=condition)
    items, total = registry.list_models(session, where, sort, limit, offset)
    items = [ModelOut.of(model, cache.verifier.status(model, check=False)) for model in items]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@router.get("/{ref:model_ref}/metrics", response_model=ModelMetrics, summary="Per-epoch metric series")
def get_metrics(ref: ModelRef, session: SessionDep) -> ModelMetrics:
    model = get_model_or_404(session, ref)
    history = model.history
    names = sorted({k for record in history for k in record} - {"epoch", "epochs", "phase"})
    return ModelMetrics(
        model_id=model.id,
        epochs=[r["epoch"] for r in history],
        phases=[r["phase"] for r in history],
        series={name: [r.get(name) for r in history] for name in names},
    )


@router.get(
    "/{ref:model_ref}/weights",
    response_class=FileResponse,
    summary="The weights as a safetensors file",
    description="Hashed before they are sent: 409 `artifact_corrupt` if they do not match the SHA-256 recorded "
    "at registration (the model's `weights_sha256`), 410 `artifact_missing` if they are gone.",
    responses={200: {"content": {SAFETENSORS_MEDIA_TYPE: {}}}},
)
def get_weights(ref: ModelRef, session: SessionDep, cache: ModelCacheDep) -> FileResponse:
    model = get_model_or_404(session, ref)
    cache.verifier.verify(model)
    return FileResponse(storage.weights_path(model.id), media_type=SAFETENSORS_MEDIA_TYPE,
                        filename=f"{model.id}.safetensors")


@router.get("/{ref:model_ref}", response_model=ModelOut,
            summary="A model's config, size, training time, final metrics and the status of its files")
def get_model(ref: ModelRef, session: SessionDep, cache: ModelCacheDep) -> ModelOut:
    model = get_model_or_404(session, ref)
    return ModelOut.of(model, cache.verifier.status(model, check=True))


@router.delete("/{ref:model_ref}", status_code=204,
               summary="Delete a model and its artifacts (and the aliases that point at it)")
def delete_model(ref: ModelRef, session: SessionDep, cache: ModelCacheDep) -> Response:
    model = get_model_or_404(session, ref)
    registry.delete_model(session, model)
    storage.remove(model.id)
    cache.evict(model.id)
    return Response(status_code=204)


# Names and aliases, as MLflow's registry has them: an alias is a movable pointer at one version.

NamePath = Annotated[str, Path(description="a registered name", examples=["vgg-mnist-0v1-vanilla"])]


@names_router.get("", response_model=Page[RegisteredModelOut], summary="The registered names, by name")
def list_names(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict:
    items, total = registry.list_names(session, limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def _name_or_404(session: Session, name: str) -> registry.NameSummary:
    summary = registry.get_name(session, name)
    if summary is None:
        raise ApiError(404, "name_not_found", f"there is no registered name {name!r}")
    return summary


@names_router.get("/{name}", response_model=RegisteredModelOut, summary="A name's versions and aliases")
def get_name(name: NamePath, session: SessionDep) -> registry.NameSummary:
    return _name_or_404(session, name)


@names_router.put(
    "/{name}/aliases/{alias}",
    response_model=RegisteredModelOut,
    summary="Point an alias at a version: create it, or move it",
    description="The move is one statement: a request naming `name@alias` is served by the old version or "
    "the new one, never neither. `latest` is reserved (`name@latest` is always the newest version).",
)
def set_alias(name: NamePath, alias: Annotated[AliasName, Path(description="the alias")],
              body: Annotated[AliasRequest, Body()], session: SessionDep) -> registry.NameSummary:
    if alias == registry.LATEST:
        raise ApiError(422, "invalid_request", "alias: `latest` is reserved: name@latest is always the newest version")
    _name_or_404(session, name)
    model = registry.get_model(session, f"{name}/{body.version}")
    if model is None:
        raise ApiError(404, "version_not_found", f"{name!r} has no version {body.version}")
    registry.set_alias(session, model, alias)
    return _name_or_404(session, name)


@names_router.delete("/{name}/aliases/{alias}", status_code=204, summary="Remove an alias")
def delete_alias(name: NamePath, alias: Annotated[str, Path(description="the alias")], session: SessionDep) -> Response:
    if not registry.delete_alias(session, name, alias):
        raise ApiError(404, "alias_not_found", f"{name!r} has no alias {alias!r}")
    return Response(status_code=204)
