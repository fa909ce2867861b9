"""The artifact store: one directory per model id under settings.artifacts (a shared volume when distributed).

Directories are written by ml.artifacts.save, which assembles them under a temporary name and
renames them into place, so a path returned here either holds a whole model or nothing.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from ml import artifacts
from service.settings import get_settings

MODEL_ID = re.compile(r"[0-9a-f]{32}")


def model_dir(model_id: str) -> Path:
    # Ids come from URLs and job bodies: never let one name a path outside the store.
    if not MODEL_ID.fullmatch(model_id):
        raise ValueError(f"{model_id!r} is not a model id")
    return get_settings().artifacts / model_id


def weights_path(model_id: str) -> Path:
    return model_dir(model_id) / artifacts.WEIGHTS


def remove(model_id: str) -> None:
    """Delete a model's directory: renamed aside first, so a reader never sees it half-deleted."""
    directory = model_dir(model_id)
    trash = directory.with_name(f".deleted-{model_id}")
    try:
        directory.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
