"""Liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["workers"]["live"] == 1  # serve's own worker


def test_metrics_count_requests_per_route_and_jobs_by_status(client):
    client.get("/v1/jobs/0123456789abcdef0123456789abcdef")
    text = client.get("/metrics").text
    assert 'classcomp_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}' in text
    assert 'classcomp_http_request_duration_seconds_count{method="GET",route="/v1/jobs/{job_id}"}' in text
    for status in ("queued", "running", "succeeded", "failed", "cancelled"):
        assert f'classcomp_jobs{{status="{status}"}}' in text


def test_openapi_has_examples_for_jobs_and_predict(client):
    spec = client.get("/openapi.json").json()
    job_body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert {"vgg", "vae-kmeans", "unet-pretrained"} <= set(job_body["examples"])
    predict_body = spec["paths"]["/v1/models/{ref}/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(predict_body)
    assert predict_body["application/json"]["examples"]


def test_unreachable_broker_fails_readiness_and_rejects_jobs_without_a_trace(service_without_broker):
    with service_without_broker.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        assert "broker unreachable" in ready.json()["error"]["message"]
        assert "registry" not in ready.json()["error"]["message"]
        response = client.post("/v1/jobs", json={"kind": "train", "model": "vgg", "dataset": {"image_size": 32}})
        assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
        assert client.get("/v1/jobs").json()["total"] == 0
