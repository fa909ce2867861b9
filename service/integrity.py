"""A model's files checked against the SHA-256 its worker recorded when it registered the model.

The API hashes the weights whenever it reads them for a client: loading a model into its cache
(the bytes hashed are the bytes loaded) and serving a download. A file that does not match, or
weights or config that cannot be read, answer 409 `artifact_corrupt`; a directory or weights file
that is gone answers 410 `artifact_missing`, not a 503: retrying does not bring files back, someone
has to restore them (or delete the model). Either error names the model; never a 500, never
predictions from damaged tensors. Nothing is held against a model: restored files work again.

Each verdict is remembered with the weights file's signature (inode, size, mtime_ns) taken before
hashing. A cached model is used only while the latest verdict on its weights is good and the file
still has that signature: replaced, rewritten, truncated or deleted, it is loaded (and so hashed)
again instead of answering from memory. The model resource shows the verdict: GET of one model
hashes only when there is none for the file as it is now (about 0.1 s for 45 MB, then a stat per
GET); listings never hash, they stat. Damage that leaves the signature alone (bit rot) is found by
the next load or download, which always hash.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import torch

from ml import artifacts
from ml.artifacts import ArtifactError, ArtifactMissing, LoadedModel
from service import registry, storage
from service.errors import ApiError
from service.schemas import ArtifactStatus

Signature = tuple[int, int, int]

UNVERIFIED = "registered before checksums were recorded: its weights cannot be checked"


def signature(model_id: str) -> Signature | None:
    """(inode, size, mtime_ns) of a model's weights file; None if it is gone."""
    try:
        stat = storage.weights_path(model_id).stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def api_error(model_id: str, exc: ArtifactError) -> ApiError:
    if isinstance(exc, ArtifactMissing):
        return ApiError(410, "artifact_missing", f"the files of model {model_id} are gone ({exc}); "
                        "restore its directory in the artifact store, or delete the model")
    return ApiError(409, "artifact_corrupt", f"the files of model {model_id} are damaged ({exc}); "
                    "restore its directory in the artifact store, or delete the model and train it again")


@dataclass(frozen=True)
class Verdict:
    signature: Signature | None  # of the weights file before it was read
    status: str  # ok, unverified, corrupt or missing
    detail: str
    checked_at: datetime

    @property
    def good(self) -> bool:
        return self.status in ("ok", "unverified")


class ArtifactVerifier:
    """The latest verdict on each model's weights in this process."""

    def __init__(self) -> None:
        self._verdicts: dict[str, Verdict] = {}
        self._lock = threading.Lock()

    def _record(self, model_id: str, sig: Signature | None, sha256: str | None, error: ArtifactError | None) -> Verdict:
        if error is not None:
            status, detail = ("missing" if isinstance(error, ArtifactMissing) else "corrupt"), str(error)
        elif sha256 is None:
            status, detail = "unverified", UNVERIFIED
        else:
            status, detail = "ok", "the weights match the SHA-256 recorded at registration"
        verdict = Verdict(sig, status, detail, datetime.now(UTC))
        with self._lock:
            self._verdicts[model_id] = verdict
        return verdict

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._verdicts.pop(model_id, None)

    def trusted(self, model_id: str) -> bool:
        """Whether what was loaded from this model's weights may still be used: the latest verdict
        was good, and it was about the file that is there now."""
        with self._lock:
            verdict = self._verdicts.get(model_id)
        return verdict is not None and verdict.good and verdict.signature == signature(model_id)

    def load(self, model_id: str, device: torch.device) -> LoadedModel:
        """The model, loaded only if its weights match the checksum recorded for it."""
        sha256 = registry.weights_sha256(model_id)
        # Taken before reading: if the file changes meanwhile, this verdict is stale, never wrongly current.
        sig = signature(model_id)
        try:
            loaded = artifacts.load(storage.model_dir(model_id), device, sha256)
        except ArtifactError as exc:
            self._record(model_id, sig, sha256, exc)
            raise api_error(model_id, exc) from exc
        self._record(model_id, sig, sha256, None)
        return loaded

    def _check(self, model: registry.Model) -> tuple[Verdict, ArtifactError | None]:
        sig = signature(model.id)
        try:
            if sig is None:
                raise ArtifactMissing(f"no weights file at {storage.weights_path(model.id)}")
            if model.weights_sha256 is not None:
                artifacts.verify(storage.model_dir(model.id), model.weights_sha256)
        except ArtifactError as exc:
            return self._record(model.id, sig, model.weights_sha256, exc), exc
        return self._record(model.id, sig, model.weights_sha256, None), None

    def verify(self, model: registry.Model) -> None:
        """Hash the weights now (before a download); an ApiError naming the model if they are not as registered."""
        _, error = self._check(model)
        if error is not None:
            raise api_error(model.id, error) from error

    def status(self, model: registry.Model, check: bool) -> ArtifactStatus:
        """The verdict on the file as it is now; with `check`, hashing it if there is none yet."""
        sig = signature(model.id)
        if sig is None:
            return ArtifactStatus(status="missing", detail=f"no weights file at {storage.weights_path(model.id)}",
                                  checked_at=datetime.now(UTC))
        with self._lock:
            verdict = self._verdicts.get(model.id)
        if verdict is None or verdict.signature != sig:
            if model.weights_sha256 is None:
                return ArtifactStatus(status="unverified", detail=UNVERIFIED, checked_at=None)
            if not check:
                return ArtifactStatus(status="unchecked", checked_at=None,
                                      detail="not hashed since the API started or since the file last changed")
            verdict, _ = self._check(model)
        return ArtifactStatus(status=verdict.status, detail=verdict.detail, checked_at=verdict.checked_at)
