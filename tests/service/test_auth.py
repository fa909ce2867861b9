"""Bearer tokens with read and write roles, the public paths, CORS, and the warning of an open service.

The operations are enumerated from the service's own OpenAPI document, so a route added later is
tested here without anyone listing it.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import TINY_GAUSSIAN, assert_error, files_of, long_gaussian_job, submit, wait_finished
from conftest import CLASSCOMP, Service, ServiceProcess, free_port, service_env, start_service

READ_TOKEN = secrets.token_urlsafe(24)
WRITE_TOKEN = secrets.token_urlsafe(24)
WRONG_TOKEN = secrets.token_urlsafe(24)
ORIGIN = "https://dashboard.example"
SOME_ID = "0123456789abcdef0123456789abcdef"
PROBES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
# The non-GET operations a read token may call: they compute an answer and change nothing.
READ_ONLY = {
    ("POST", "/v1/models/{ref}/predict"),
    ("POST", "/v1/models/{ref}/reconstruct"),
    ("POST", "/v1/models/{ref}/embed"),
    ("POST", "/v1/models/{ref}/figures/feature-maps.png"),
    ("POST", "/v1/reports/bayes-risk"),
    ("POST", "/v2/models/{model_name}/infer"),
    ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"),
}
TINY_GAUSSIAN_JOB = {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}}


def client(url: str, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {token}"} if token else {})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Service]:
    """`classcomp serve` (with a worker, for one tiny model) with a read and a write token and one CORS origin."""
    home = tmp_path_factory.mktemp("auth-secured")
    env = service_env(home, data_dir, api_tokens=f"reader:read:{READ_TOKEN}, admin:write:{WRITE_TOKEN}",
                      cors_origins=ORIGIN)
    url, process = start_service(["serve"], env, home, "serve-with-tokens")
    yield Service(url, env)
    process.stop()


@pytest.fixture(scope="module")
def spec(secured: Service) -> dict:
    response = httpx.get(f"{secured.url}/openapi.json")
    assert response.status_code == 200  # open: it holds no data, and Swagger UI's Authorize button needs it
    return response.json()


def operations(spec: dict) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", SOME_ID, path)


def assert_refused(path: str, response: httpx.Response, status: int, code: str, *in_message: str) -> None:
    """assert_error; under /v2, the Open Inference Protocol's error shape, {"error": "message"}, without the code."""
    if not path.startswith("/v2"):
        assert_error(response, status, code, *in_message)
        return
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and all(fragment in body["error"] for fragment in in_message), body


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[Service, ServiceProcess]]:
    """An API on every interface with one (write) token, public metrics and no CORS setting."""
    home = tmp_path_factory.mktemp("auth-exposed")
    env = service_env(home, data_dir, api_token=WRITE_TOKEN, metrics_public="true")
    url, process = start_service(["serve", "--no-worker", "--host", "0.0.0.0"], env, home, "exposed-with-token",
                                 probe="/healthz")
    yield Service(url, env), process
    process.stop()


def test_every_operation_but_the_probes_needs_a_token(secured, spec):
    ops = operations(spec)
    assert ("DELETE", "/v1/models/{ref}") in ops and ("GET", "/metrics") in ops
    for method, path in ops:
        response = httpx.request(method, f"{secured.url}{concrete(path)}")
        if path in PROBES:
            assert response.status_code == 200, (method, path, response.text)
            assert spec["paths"][path][method.lower()]["security"] == []
            continue
        assert_refused(path, response, 401, "authentication_required", "Authorization: Bearer")
        assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
    for page in ("/docs", "/redoc"):
        assert httpx.get(f"{secured.url}{page}").status_code == 200
    scheme = spec["components"]["securitySchemes"]["bearer"]  # Swagger UI's Authorize button
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")


def test_every_state_changing_operation_needs_the_write_role(secured, spec):
    changing = [(method, path) for method, path in operations(spec) if method != "GET"]
    declared_read = {(m, p) for m, p in changing if spec["paths"][p][m.lower()]["x-required-role"] == "read"}
    assert declared_read == READ_ONLY
    assert {("POST", "/v1/jobs"), ("POST", "/v1/jobs/{job_id}/cancel"), ("DELETE", "/v1/models/{ref}")} <= set(changing)
    with client(secured.url, WRONG_TOKEN) as wrong, client(secured.url, READ_TOKEN) as reader:
        jobs_before = reader.get("/v1/jobs").json()["total"]
        for method, path in changing:
            url = concrete(path)
            assert_refused(path, httpx.request(method, f"{secured.url}{url}"), 401, "authentication_required")
            assert_refused(path, wrong.request(method, url), 403, "invalid_token")
            response = reader.request(method, url, json=TINY_GAUSSIAN_JOB)
            if (method, path) in READ_ONLY:
                assert response.status_code not in (401, 403), (method, path, response.text)
            else:
                assert_error(response, 403, "write_role_required", f"{method} {path}", "'reader' has the read role")
        assert reader.get("/v1/jobs").json()["total"] == jobs_before


@pytest.mark.parametrize("header", ["Basic YWRtaW46YWRtaW4=", "Bearer", f"Bearer {READ_TOKEN} extra", f"Token {READ_TOKEN}"])
def test_a_malformed_authorization_header_is_401(secured, header):
    response = httpx.get(f"{secured.url}/v1/jobs", headers={"Authorization": header})
    assert_error(response, 401, "invalid_authorization_header", "Bearer <token>")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_two_authorization_headers_are_401(secured):
    headers = [("Authorization", f"Bearer {READ_TOKEN}"), ("Authorization", f"Bearer {WRITE_TOKEN}")]
    assert_error(httpx.get(f"{secured.url}/v1/jobs", headers=headers), 401, "invalid_authorization_header")


def test_write_token_submits_cancels_and_deletes_read_token_lists_and_predicts(secured, mnist_pngs):
    with client(secured.url, WRITE_TOKEN) as admin, client(secured.url, READ_TOKEN) as reader:
        job = wait_finished(admin, submit(admin, TINY_GAUSSIAN_JOB)["id"])
        assert job["status"] == "succeeded", job
        model_id = job["model_ids"][0]

        assert job["id"] in [j["id"] for j in reader.get("/v1/jobs").json()["items"]]
        assert model_id in [m["id"] for m in reader.get("/v1/models").json()["items"]]
        assert reader.get(f"/v1/models/{model_id}").status_code == 200
        predicted = reader.post(f"/v1/models/{model_id}/predict", files=files_of([p for p, _ in mnist_pngs[:3]]))
        assert predicted.status_code == 200, predicted.text
        assert len(predicted.json()["predictions"]) == 3
        assert reader.get("/metrics").status_code == 200

        assert_error(reader.delete(f"/v1/models/{model_id}"), 403, "write_role_required")
        assert reader.get(f"/v1/models/{model_id}").status_code == 200

        long_job = submit(admin, long_gaussian_job())
        cancelled = admin.post(f"/v1/jobs/{long_job['id']}/cancel")
        assert cancelled.status_code in (200, 202), cancelled.text  # queued or already running
        assert wait_finished(admin, long_job["id"])["status"] == "cancelled"

        assert admin.delete(f"/v1/models/{model_id}").status_code == 204
        assert_error(reader.get(f"/v1/models/{model_id}"), 404, "model_not_found")


def test_the_dashboard_is_public_code_and_its_data_needs_a_token(secured):
    page = httpx.get(f"{secured.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    script = httpx.get(f"{secured.url}/static/js/lib.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert_error(httpx.get(f"{secured.url}/v1/jobs"), 401, "authentication_required")
    # Public by prefix, not by resemblance: a path merely starting like the assets' is guarded.
    assert_error(httpx.get(f"{secured.url}/staticfiles"), 401, "authentication_required")


def test_cors_preflight_answers_the_allowed_origin_only(secured):
    preflight = {"Access-Control-Request-Method": "DELETE", "Access-Control-Request-Headers": "authorization"}
    allowed = httpx.options(f"{secured.url}/v1/models/{SOME_ID}", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "DELETE" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()

    other = httpx.options(f"{secured.url}/v1/models/{SOME_ID}", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in other.headers
    assert "access-control-allow-origin" not in httpx.get(f"{secured.url}/v1/jobs", headers={
        "Origin": "https://evil.example", "Authorization": f"Bearer {READ_TOKEN}"}).headers

    # The allowed page is shown why it was refused.
    refused = httpx.get(f"{secured.url}/v1/jobs", headers={"Origin": ORIGIN})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN


def test_without_a_cors_setting_there_are_no_cors_headers(exposed):
    service, _ = exposed
    preflight = httpx.options(f"{service.url}/v1/jobs", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    answered = httpx.get(f"{service.url}/v1/jobs", headers={"Origin": ORIGIN, "Authorization": f"Bearer {WRITE_TOKEN}"})
    assert answered.status_code == 200
    for response in (preflight, answered):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")], response.headers


def test_metrics_can_be_made_public(exposed):
    service, _ = exposed
    response = httpx.get(f"{service.url}/metrics")
    assert response.status_code == 200 and "classcomp_http_requests_total" in response.text
    assert_error(httpx.get(f"{service.url}/v1/models"), 401, "authentication_required")


def run_client(service: Service, *args: str, token: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSCOMP_")}
    if token:
        env["CLASSCOMP_API_TOKEN"] = token
    return subprocess.run([*CLASSCOMP, *args, "--url", service.url], env=env, capture_output=True, text=True, timeout=120)


def test_client_commands_send_the_token_of_their_environment(exposed):
    service, _ = exposed
    with_token = run_client(service, "jobs", token=WRITE_TOKEN)
    assert with_token.returncode == 0, with_token.stderr
    assert "(0 of 0)" in with_token.stderr
    without = run_client(service, "jobs", token=None)
    assert without.returncode != 0
    assert "401 authentication_required" in without.stderr


def test_serve_warns_when_it_listens_beyond_loopback_without_a_token(tmp_path, data_dir, exposed):
    url, process = start_service(["serve", "--no-worker", "--host", "0.0.0.0"], service_env(tmp_path, data_dir), tmp_path,
                                 "exposed-without-token", probe="/healthz")
    try:
        log = process.log_tail(100_000)
        assert "WARNING: classcomp serve listens on 0.0.0.0 with no API token" in log
        assert "CLASSCOMP_API_TOKEN" in log
        # Without a token, the API is as open as it always was.
        assert httpx.get(f"{url}/v1/jobs").status_code == 200
        assert_error(httpx.delete(f"{url}/v1/models/{SOME_ID}"), 404, "model_not_found")
        assert "securitySchemes" not in httpx.get(f"{url}/openapi.json").json().get("components", {})
    finally:
        process.stop()
    _, with_token = exposed
    assert "WARNING" not in with_token.log_tail(100_000)


@pytest.mark.parametrize(("setting", "value", "complaint"), [
    ("api_tokens", f"ci:admin:{WRONG_TOKEN}", "the role 'admin' is neither read nor write"),
    ("api_tokens", "ci:read:0123456789", "entry 1 (ci): the token is shorter than 16 characters"),
    ("api_token", "", "CLASSCOMP_API_TOKEN is set but empty"),
])
def test_a_bad_token_setting_stops_serve_without_printing_the_token(tmp_path, data_dir, setting, value, complaint):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CLASSCOMP_")},
           **service_env(tmp_path, data_dir), f"CLASSCOMP_{setting.upper()}": value}
    result = subprocess.run([*CLASSCOMP, "serve", "--no-worker", "--port", str(free_port())], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr
    token = value.rpartition(":")[2]
    assert not token or token not in result.stderr
