"""One error shape for every failure: {"error": {"code": "machine_code", "message": "human sentence"}}.

Routes raise ApiError; FastAPI's own errors (validation, unknown routes, wrong methods, bodies
over the size limit) and anything unexpected are rewritten into the same shape here. Under /v2,
the Open Inference Protocol's routes (service/api/oip.py), every failure takes that protocol's
shape instead, {"error": "human sentence"}: its clients read `error` as a string (tritonclient's
exception cannot even print an object there).
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

PROTOCOL_PREFIX = "/v2"


class ApiError(HTTPException):
    """A client-facing failure. An HTTPException, so FastAPI lets it through from wherever it is raised."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=message, headers=headers)
        self.code = code
        self.message = message


def not_found(kind: str, item_id: str) -> ApiError:
    return ApiError(404, f"{kind}_not_found", f"there is no {kind} with id {item_id!r}")


def speaks_protocol(path: str) -> bool:
    """Whether `path` (the route path, without any root path) is one of the Open Inference Protocol's."""
    return path == PROTOCOL_PREFIX or path.startswith(f"{PROTOCOL_PREFIX}/")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                   path: str = "") -> JSONResponse:
    """The error in the shape its path speaks: `path` is the request's route path."""
    body = {"error": message} if speaks_protocol(path) else {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def _location(error: dict[str, Any], body: Any) -> str:
    parts = list(error["loc"])
    if parts and parts[0] in ("query", "path", "header"):
        return f"{parts[0]} parameter {'.'.join(map(str, parts[1:]))}"
    if parts and parts[0] == "body":
        parts = parts[1:]
        # A discriminated union puts the tag it chose into the path; the client never wrote it.
        if parts and isinstance(body, dict) and parts[0] == body.get("kind"):
            parts = parts[1:]
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    if not path and "discriminator" in error.get("ctx", {}):
        path = error["ctx"]["discriminator"].strip("'")
    return path or "body"


def validation_message(errors: list[dict[str, Any]], body: Any = None, shown: int = 5) -> str:
    """'field.path: what is wrong' for the first few errors (a bad pixel array can have thousands)."""
    lines = []
    for error in errors[:shown]:
        if error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            msg = "unknown field"
        elif error["type"] == "missing":
            msg = "field required"
        else:
            msg = error["msg"].removeprefix("Value error, ")
        lines.append(f"{_location(error, body)}: {msg}")
    if len(errors) > shown:
        lines.append(f"and {len(errors) - shown} more errors")
    return "; ".join(lines)


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` with a 413: at once on their Content-Length, and while
    they are read when they declare none (chunked) or declare less than they send."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def error(self) -> ApiError:
        return ApiError(413, "payload_too_large",
                        f"the request body is larger than the limit of {self.max_bytes} bytes (CLASSCOMP_MAX_UPLOAD_BYTES)")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = self.error()
            await error_response(error.status_code, error.code, error.message,
                                 path=get_route_path(scope))(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.error()
            return message

        await self.app(scope, receive_within_limit, send)


def allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI document gives some operation at this path. Starlette's own 405 names
    only the methods of the first route that matched, and a path often has several routes."""
    methods: set[str] = set()
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.headers, get_route_path(request.scope))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", validation_message(list(exc.errors()), exc.body),
                              path=get_route_path(request.scope))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = get_route_path(request.scope)
        status = HTTPStatus(exc.status_code)
        code = status.phrase.lower().replace(" ", "_").replace("-", "_")
        message = exc.detail if isinstance(exc.detail, str) else status.phrase
        if exc.status_code == 404:
            message = f"there is no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = allowed_methods(request)
            message = f"{request.url.path} does not accept {request.method}; it accepts {', '.join(allowed)}"
            return error_response(405, code, message, {"Allow": ", ".join(allowed)}, path)
        return error_response(exc.status_code, code, message, exc.headers, path)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "the server failed to handle this request; see its log",
                              path=get_route_path(request.scope))
