"""Bearer tokens with a read or a write role, and the CORS policy.

With no token configured (CLASSCOMP_API_TOKEN, CLASSCOMP_API_TOKENS) the API is open, as it always
was, and `serve` warns when it listens beyond loopback. With tokens, two steps guard each request:

- AuthMiddleware identifies the caller from `Authorization: Bearer ...` before the body limit, so
  the body of a request without a valid token is never read: 401 without the header or with a
  malformed one, 403 with a token that is not configured. Only the public paths skip it.
- `authorize`, a dependency of every route, then needs the write role unless the route reads: a GET,
  or one of the READ_ONLY operations. The route decides, once routing has found it, so a new route
  needs the write role until it is declared read-only here.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import sys
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ApiError, error_response, speaks_protocol
from service.settings import ApiToken, Settings, get_settings

# The Open Inference Protocol's health routes are its clients' and orchestrators' probes.
PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
# The dashboard's shell and scripts (service/api/pages.py): code, no data; its data needs a token.
DASHBOARD_PAGE, DASHBOARD_ASSETS = "/", "/static/"
# POSTs that only compute an answer and change nothing, so a read token may call them.
READ_ONLY = frozenset({
    ("POST", "/v1/models/{ref}/predict"),
    ("POST", "/v1/models/{ref}/reconstruct"),
    ("POST", "/v1/models/{ref}/embed"),
    ("POST", "/v1/models/{ref}/figures/feature-maps.png"),
    ("POST", "/v1/reports/bayes-risk"),
    ("POST", "/v2/models/{model_name}/infer"),
    ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"),
})
WWW_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="classcomp"'}
_CALLER = "classcomp.caller"  # the ASGI scope key under which the middleware leaves the caller's token


def _digest(token: str) -> bytes:
    # Equal-length digests: comparing them reveals neither a token's length nor its prefix.
    return hashlib.sha256(token.encode("latin-1")).digest()


class Policy:
    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.tokens = [(_digest(token.token), token) for token in settings.tokens]
        docs = (app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url)
        self.public = {*PROBES, DASHBOARD_PAGE, *(["/metrics"] if settings.metrics_public else []), *filter(None, docs)}

    def is_public(self, path: str) -> bool:
        return path in self.public or path.startswith(DASHBOARD_ASSETS)

    def required_role(self, method: str, path: str) -> str | None:
        """'read', 'write', or None for a public path."""
        if self.is_public(path):
            return None
        return "read" if method == "GET" or (method, path) in READ_ONLY else "write"

    def identify(self, headers: Headers, path: str) -> ApiToken | JSONResponse:
        """The caller's token, or the refusal to send (in the error shape of `path`)."""
        values = headers.getlist("authorization")
        if not values:
            return error_response(401, "authentication_required",
                                  "this API needs an `Authorization: Bearer <token>` header", WWW_AUTHENTICATE, path)
        parts = values[0].split()
        if len(values) > 1 or len(parts) != 2 or parts[0].lower() != "bearer":
            return error_response(401, "invalid_authorization_header",
                                  "the Authorization header must be `Bearer <token>`, once", WWW_AUTHENTICATE, path)
        presented = _digest(parts[1])
        caller = None
        for digest, token in self.tokens:  # all of them, whichever matches: the time taken tells nothing
            if hmac.compare_digest(digest, presented):
                caller = token
        if caller is None:
            return error_response(403, "invalid_token", "the bearer token is not one this service accepts", path=path)
        return caller

    async def authorize(self, request: Request) -> None:
        # async although it never awaits: FastAPI runs a plain function dependency in its threadpool.
        path = request.scope["route"].path_format  # `{ref}`, as the OpenAPI document has it, not `{ref:model_ref}`
        if self.required_role(request.method, path) != "write":
            return
        caller: ApiToken = request.scope[_CALLER]
        if caller.role != "write":
            raise ApiError(403, "write_role_required", f"{request.method} {path} changes state and needs a token "
                           f"with the write role; {caller.name!r} has the {caller.role} role")

    def document(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Declares the bearer scheme (Swagger UI's Authorize button) and each operation's role."""
        def error(path: str) -> dict[str, Any]:
            shape = "InferenceErrorResponse" if speaks_protocol(path) else "ErrorResponse"
            return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}}}

        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http", "scheme": "bearer",
            "description": "a token of CLASSCOMP_API_TOKEN or CLASSCOMP_API_TOKENS; x-required-role names the role "
                           "each operation needs",
        }
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                role = self.required_role(method.upper(), path)
                if role is None:
                    operation["security"] = []
                    continue
                operation["security"] = [{"bearer": []}]
                operation["x-required-role"] = role
                operation["responses"]["401"] = {"description": "no or a malformed Authorization header", **error(path)}
                operation["responses"]["403"] = {"description": f"an unknown token, or one without the {role} role",
                                                 **error(path)}
        return schema


class AuthMiddleware:
    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = get_route_path(scope) if scope["type"] == "http" else ""
        if scope["type"] != "http" or self.policy.is_public(path):
            await self.app(scope, receive, send)
            return
        caller = self.policy.identify(Headers(scope=scope), path)
        if not isinstance(caller, ApiToken):
            await caller(scope, receive, send)
            return
        scope[_CALLER] = caller
        await self.app(scope, receive, send)


def install(app: FastAPI, settings: Settings) -> None:
    """Adds the auth middleware, then CORS outside it, to the middleware added so far, and the role check to
    the routes: call it before the routers are included, whose routes only take the app's dependencies then."""
    if settings.tokens:
        policy = Policy(app, settings)
        app.router.dependencies.append(Depends(policy.authorize))
        app.add_middleware(AuthMiddleware, policy=policy)
        generate = app.openapi
        app.openapi = lambda: policy.document(generate())
    if settings.cors_origins:
        # Outside the token check: a preflight carries no token, and a page is only shown a refusal
        # (its JSON error) when CORS headers come with it.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Location", "Retry-After"],
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name, which may resolve to any interface
        return False


def warn_if_open(host: str) -> None:
    """A loud warning when `serve` listens beyond loopback with no token configured."""
    if get_settings().tokens or _loopback(host):
        return
    rule = "*" * 100
    print(f"{rule}\nWARNING: classcomp serve listens on {host} with no API token: anyone who can reach this port can "
          f"delete models,\ncancel jobs and queue training. Set CLASSCOMP_API_TOKEN or CLASSCOMP_API_TOKENS "
          f"(README, Security).\n{rule}", file=sys.stderr, flush=True)
