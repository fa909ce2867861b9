"""Files derived from a model (reports, figures), cached inside its artifact directory.

They live under the model's directory (`reports/`, `figures/`), so deleting the model deletes
them with it. Each is written to a temporary file and renamed into place, so a reader finds a
whole file or none. Caching is best effort: a failed write is logged and the request still
gets its answer, and a model deleted while its file was computed is never recreated by it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from service import storage

logger = logging.getLogger(__name__)


def path(model_id: str, kind: str, filename: str) -> Path:
    return storage.model_dir(model_id) / kind / filename


def read(model_id: str, kind: str, filename: str) -> bytes | None:
    try:
        return path(model_id, kind, filename).read_bytes()
    except FileNotFoundError:
        return None


def write(model_id: str, kind: str, filename: str, content: bytes) -> None:
    target = path(model_id, kind, filename)
    try:
        # No parents=True: if the model was deleted meanwhile, its directory must stay gone.
        target.parent.mkdir(exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{filename}.", dir=target.parent)
    except FileNotFoundError:
        return
    except OSError:
        logger.warning("could not cache %s", target, exc_info=True)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        if not isinstance(exc, FileNotFoundError):  # deleted meanwhile: nothing to cache
            logger.warning("could not cache %s", target, exc_info=True)
