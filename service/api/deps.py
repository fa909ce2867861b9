"""Dependencies shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

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


# Routes take it as `{ref:path}`, since `name/version` holds a slash; the routes of one method with a
# suffix (`/{ref:path}/metrics`) are declared before the bare `/{ref:path}`, which would match them too.
ModelRef = Annotated[str, Path(
    description="the model: its id, `name/version`, `name@alias`, or `name` alone (its newest version, as "
    "`name@latest`)")]


def get_model_or_404(session: Session, ref: str) -> registry.Model:
    model = registry.get_model(session, ref)
    if model is None:
        raise ApiError(404, "model_not_found", f"there is no model {ref!r} (a model id, name/version, name@alias or name)")
    return model


def get_job_or_404(session: Session, job_id: str) -> registry.Job:
    job = registry.get_job(session, job_id)
    if job is None:
        raise not_found("job", job_id)
    return job
