"""The one exception type whose message a job shows its user as it is.

Anything else raised while a job runs is a bug (ours, or torch's, or scikit-learn's): the worker
logs its traceback and the job reports an internal error, never blaming the request.
"""

from __future__ import annotations


class UserError(Exception):
    """The request's or the environment's fault (missing data, a deleted source model), with a
    machine-readable `code` for clients."""

    code = "user_error"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
