"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session
from starlette.convertors import Convertor, register_url_convertor

from service import registry
from service.errors import ApiError, not_found
from service.inference import ModelCache
from service.settings import Settings, get_settings

SessionDep = Annotated[Session, Depends(registry.get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def swept_session(session: SessionDep, settings: SettingsDep) -> Session:
    """A session in which jobs whose worker died already read as failed, not as running."""
    registry.sweep_stale_jobs(settings.job_stale_seconds)
    return session


SweptSessionDep = Annotated[Session, Depends(swept_session)]


async def model_cache(request: Request) -> ModelCache:
    # async: FastAPI runs a plain function dependency in its threadpool, a hand-off for nothing.
    return request.app.state.model_cache


ModelCacheDep = Annotated[ModelCache, Depends(model_cache)]


class ModelRefConvertor(Convertor[str]):
    """`{ref:model_ref}` in a route: one path segment (an id, `name`, `name@alias`), or two when the second
    is a version number (`name/3`). So /v1/models/x/predict is never read as the model `x/predict`, and
    a GET there is a 405 of the predict route rather than a 404 of GET /v1/models/{ref}."""

    regex = r"[^/]+(?:/[0-9]+)?"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model_ref", ModelRefConvertor())

ModelRef = Annotated[str, Path(
    description="the model: its id, `name/version`, `name@alias`, or `name` alone (its newest version, as "
    "`name@latest`)")]


def model_not_found(ref: str) -> ApiError:
    return ApiError(404, "model_not_found", f"there is no model {ref!r} (a model id, name/version, name@alias or name)")


def get_model_or_404(session: Session, ref: str) -> registry.Model:
    model = registry.get_model(session, ref)
    if model is None:
        raise model_not_found(ref)
    return model


def resolve_or_404(session: Session, ref: str) -> registry.ModelKey:
    """The id, name and version of the model `ref` names, without loading its row."""
    key = registry.resolve(session, ref)
    if key is None:
        raise model_not_found(ref)
    return key


def get_job_or_404(session: Session, job_id: str) -> registry.Job:
    job = registry.get_job(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job
