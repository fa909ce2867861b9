"""Every client mistake gets its documented status and the JSON error shape, and changes nothing in the registry."""

from __future__ import annotations

import io

import pytest
from api_helpers import TINY_GAUSSIAN, assert_error, registry_counts, submit, wait_finished
from PIL import Image

@pytest.fixture(scope="module")
def cnn(client) -> dict:
    """A finished job and its model: a tiny VGG on synthetic images (a second)."""
    job = submit(client, {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}})
    job = wait_finished(client, job["id"])
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture
def unchanged(client):
    """Asserts after the test that the registry holds as many jobs and models as before it."""
    before = registry_counts(client)
    yield
    assert registry_counts(client) == before


def png_bytes(size=(28, 28)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("method", "path", "code"),
    [
        ("GET", "/v1/jobs/0123456789abcdef0123456789abcdef", "job_not_found"),
        ("POST", "/v1/jobs/0123456789abcdef0123456789abcdef/cancel", "job_not_found"),
        ("GET", "/v1/models/0123456789abcdef0123456789abcdef", "model_not_found"),
        ("GET", "/v1/models/nonsense/metrics", "model_not_found"),
        ("GET", "/v1/models/nonsense/weights", "model_not_found"),
        ("DELETE", "/v1/models/nonsense", "model_not_found"),
        ("GET", "/v3/anything", "not_found"),  # under /v2 the Open Inference Protocol answers (test_oip.py)
    ],
)
def test_unknown_ids_and_routes_are_404(client, unchanged, method, path, code):
    assert_error(client.request(method, path), 404, code)


def test_unknown_model_on_inference_is_404(client, unchanged):
    for action in ("predict", "reconstruct", "embed"):
        response = client.post(f"/v1/models/0123456789abcdef0123456789abcdef/{action}", files=[("files", ("a.png", png_bytes(), "image/png"))])
        assert_error(response, 404, "model_not_found")


def test_wrong_method_is_405_naming_every_method_of_the_path(client, unchanged):
    response = client.put("/v1/jobs")
    assert_error(response, 405, "method_not_allowed", "GET, POST")
    assert response.headers["allow"] == "GET, POST"
    # Two routes share this path (GET and DELETE); Starlette alone would name only the first.
    assert client.options("/v1/models/0123456789abcdef0123456789abcdef").headers["allow"] == "DELETE, GET"


@pytest.mark.parametrize("action", ["reconstruct", "embed"])
def test_vae_endpoints_on_a_cnn_are_409(client, cnn, unchanged, action):
    response = client.post(f"/v1/models/{cnn['model_ids'][0]}/{action}", files=[("files", ("a.png", png_bytes(), "image/png"))])
    assert_error(response, 409, "not_a_vae", "CNN")


def test_cancelling_a_finished_job_is_409(client, cnn, unchanged):
    assert_error(client.post(f"/v1/jobs/{cnn['id']}/cancel"), 409, "job_finished", "succeeded")
    assert client.get(f"/v1/jobs/{cnn['id']}").json()["status"] == "succeeded"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"model": "alexnet"}, "model"),
        ({"model": None}, "model"),
        ({"kind": "experimentz"}, "kind"),
        ({"training": {"epoch": 2}}, "training.epoch: unknown field"),
        ({"training": {"epochs": 0}}, "epochs must be between 1 and 1000"),
        ({"dataset": {"classes": [3, 3]}}, "classes"),
        ({"dataset": {"classes": [1, 12]}}, "classes"),
        ({"dataset": {"image_size": 40}}, "image_size must be a multiple of 32"),
        ({"dataset": {"condition": "foggy"}}, "dataset.condition"),
        ({"colour": "blue"}, "colour: unknown field"),
        ({"init_from": "0123456789abcdef0123456789abcdef"}, "init_from"),
        ({"model": "unet-pretrained"}, "init_from is required"),
        ({"model": "unet-pretrained", "init_from": "0123456789abcdef0123456789abcdef"}, "init_from"),
    ],
)
def test_invalid_job_config_is_422_naming_the_field(client, unchanged, change, field):
    body = {"kind": "train", "model": "vgg", "dataset": {"image_size": 32}, "training": {"epochs": 1}}
    for key, value in change.items():
        if value is None:
            body.pop(key)
        elif isinstance(value, dict):
            body[key] = {**body.get(key, {}), **value}
        else:
            body[key] = value
    assert_error(client.post("/v1/jobs", json=body), 422, "invalid_request", field)


def test_init_from_must_be_a_resnet(client, cnn, unchanged):
    body = {"kind": "train", "model": "unet-pretrained", "init_from": cnn["model_ids"][0],
            "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}}
    assert_error(client.post("/v1/jobs", json=body), 422, "invalid_request", "init_from", "resnet")


def test_malformed_json_is_422(client, unchanged):
    response = client.post("/v1/jobs", content=b'{"kind": "train",', headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request")


def test_corrupt_or_non_image_uploads(client, cnn, unchanged):
    url = f"/v1/models/{cnn['model_ids'][0]}/predict"
    truncated = png_bytes()[:40]
    assert_error(client.post(url, files=[("files", ("bad.png", truncated, "image/png"))]), 400, "invalid_image", "bad.png")
    assert_error(client.post(url, files=[("files", ("notes.png", b"just text", "image/png"))]), 400, "invalid_image")
    assert_error(client.post(url, files=[("files", ("notes.txt", b"just text", "text/plain"))]), 415, "unsupported_media_type")
    gif = io.BytesIO()
    Image.new("L", (8, 8)).save(gif, format="GIF")
    assert_error(client.post(url, files=[("files", ("a.gif", gif.getvalue(), "image/gif"))]), 415, "unsupported_image_type")
    assert_error(client.post(url, content=b"raw", headers={"content-type": "application/octet-stream"}), 415, "unsupported_media_type")
    assert_error(client.post(url, files=[("other", ("a.png", png_bytes(), "image/png"))]), 422, "invalid_request", "files")


def test_invalid_pixel_arrays_are_422(client, cnn, unchanged):
    url = f"/v1/models/{cnn['model_ids'][0]}/predict"
    assert_error(client.post(url, json={"pixels": [[[0.0, 1.5]]]}), 422, "invalid_request", "pixels[0][0][1]")
    assert_error(client.post(url, json={"pixels": [[[0.0, 0.5], [0.1]]]}), 422, "invalid_request", "same length")
    assert_error(client.post(url, json={"pixels": []}), 422, "invalid_request", "pixels")


def test_oversize_uploads_are_413(client, embedded_service, cnn, unchanged):
    limit = int(embedded_service.env["CLASSCOMP_MAX_UPLOAD_BYTES"])
    url = f"/v1/models/{cnn['model_ids'][0]}/predict"
    big = png_bytes() + b"\0" * limit
    assert_error(client.post(url, files=[("files", ("big.png", big, "image/png"))]), 413, "payload_too_large", str(limit))

    def chunks(head: bytes = b""):  # no Content-Length: the limit is enforced while reading
        yield head
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'

    response = client.post(url, content=chunks(part), headers={"content-type": "multipart/form-data; boundary=b"})
    assert_error(response, 413, "payload_too_large")
    assert_error(client.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"}), 413, "payload_too_large")
