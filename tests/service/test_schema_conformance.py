"""The whole OpenAPI document fuzzed by schemathesis with every check, against a real service that
holds real models: no 5xx, and every answer as documented.

The service runs without a worker while it is fuzzed, so the jobs the fuzzer submits queue (and
the queue cap answers 429, as documented) instead of training on this machine's two cores. Its
models were trained before, by the same registry with a worker.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from api_helpers import TINY_GAUSSIAN, submit, wait_finished
from conftest import service_env, start_service

TOKEN = "schemathesis-token-0123456789"

# Each exception to "every schema-valid request is accepted" is a rule JSON Schema cannot state:
CONFIG = """
# Every check is on by default (all but max_response_time, which is not about conformance); command-line
# --checks would override the per-operation settings below.

# Fixed ids, so that the model and job routes are fuzzed past their 404s.
[parameters]
ref = "{model_id}"
job_id = "{job_id}"
model_name = "{model_name}"
model_version = "{model_version}"

# Readiness is 503 by design here: no worker is live while the API is fuzzed (test_recovery.py covers it).
[[operations]]
include-name = "GET /readyz"
checks.not_a_server_error.enabled = false
checks.positive_data_acceptance.expected-statuses = [503]

# A job is admitted by rules across fields (an image size the model's poolings divide, two different
# digits, unet-pretrained's resnet) and by this deployment's caps and memory estimate (settings); the
# queue holds at most 3 here (429).
[[operations]]
include-name = "POST /v1/jobs"
checks.positive_data_acceptance.expected-statuses = ["2xx", 422, 429]

# `format: binary` admits any bytes; only a decodable image is one (400 invalid_image), only PNG or JPEG
# is served (415 for a GIF or WebP), and its pixel count, read from its header, must fit the budgets
# (413). A JSON image's rows must all have one length (422).
[[operations]]
include-name-regex = "^POST .*/(predict|reconstruct|embed|feature-maps\\\\.png)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 409, 413, 415, 422]

# The validation split has as many images as it has (422 past its end); a VAE has no feature maps (409).
[[operations]]
include-name = "GET /v1/models/{{ref}}/figures/feature-maps.png"
checks.positive_data_acceptance.expected-statuses = ["2xx", 409, 422]

# A tensor must have the model's input name, shape and datatype, and as many elements as its shape, in the JSON
# or in the binary part the Inference-Header-Content-Length header delimits (400); compressed bodies are
# refused (415) and pixels count against the budgets (413).
[[operations]]
include-path-regex = "^/v2/models/.*/infer$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 413, 415]

# A covariance must be positive (definite, for a matrix), and the dimensions must agree.
[[operations]]
include-name = "POST /v1/reports/bayes-risk"
checks.positive_data_acceptance.expected-statuses = ["2xx", 422]
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_the_openapi_document_holds_under_fuzzing(tmp_path: Path, data_dir: Path) -> None:
    env = service_env(tmp_path, data_dir, api_token=TOKEN, max_queued_jobs="3")
    url, serve = start_service(["serve"], env, tmp_path, "serve-for-models")
    try:
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
            body = {"kind": "train", "model": "vae-kmeans", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}}
            job = wait_finished(client, submit(client, body)["id"])
            assert job["status"] == "succeeded", job
            model = client.get(f"/v1/models/{job['model_ids'][0]}").json()
    finally:
        serve.stop()

    url, api = start_service(["serve", "--no-worker"], env, tmp_path, "api-fuzzed", probe="/healthz")
    try:
        config = tmp_path / "schemathesis.toml"
        config.write_text(CONFIG.format(model_id=model["id"], job_id=job["id"], model_name=model["name"],
                                        model_version=model["version"]))
        result = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config), "run", f"{url}/openapi.json",
             "--header", f"Authorization: Bearer {TOKEN}",
             "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--workers", "1", "--seed", "1",
             # Deleting the one model would leave every other model route answering 404; deletion and its
             # roles are tested in test_e2e.py and test_auth.py.
             "--exclude-method", "DELETE"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
    finally:
        api.stop()
