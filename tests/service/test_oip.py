"""The Open Inference Protocol (/v2) on the embedded service, called by Triton's own client (tritonclient)
as a KServe or Triton user would: its binary inputs and outputs and its JSON ones give exactly /v1 predict's
probabilities; the metadata and health routes; and every bad request a 4xx in the protocol's error shape,
{"error": "message"}, that leaves the service answering as before."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from api_helpers import submit, wait_finished
from conftest import read_idx
from PIL import Image
from tritonclient.utils import InferenceServerException

NAME = "oip-vgg-mnist-3v7"
SIZE = 32
CLASSES = [3, 7]  # labels that are not class indices, so that `label` is told from `class_index`
# The same pixels through the same normalisation and model: equal (measured: 0), but for the rounding a
# forward pass's batch composition may bring.
TOLERANCE = 1e-6
UNKNOWN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def model(client) -> dict:
    """The smallest VGG there is, one epoch of MNIST 3 vs 7, registered under NAME."""
    body = {"kind": "train", "model": "vgg", "name": NAME,
            "dataset": {"name": "mnist", "classes": CLASSES, "image_size": SIZE},
            "training": {"epochs": 1, "width": 0.03125, "batch_size": 128}}
    job = wait_finished(client, submit(client, body)["id"])
    assert job["status"] == "succeeded", job
    return client.get(f"/v1/models/{job['model_ids'][0]}").json()


@pytest.fixture(scope="module")
def digits(data_dir) -> tuple[np.ndarray, list[int]]:
    """Eight MNIST test 3s and 7s, zero-padded to the model's 32x32 (no resampling), 8-bit; and their labels."""
    raw = data_dir / "MNIST" / "raw"
    images, labels = read_idx(raw / "t10k-images-idx3-ubyte"), read_idx(raw / "t10k-labels-idx1-ubyte")
    kept = np.flatnonzero(np.isin(labels, CLASSES))[:8]
    pad = (SIZE - 28) // 2
    return np.pad(images[kept], ((0, 0), (pad, pad), (pad, pad))), labels[kept].tolist()


@pytest.fixture(scope="module")
def triton_client(embedded_service):
    url = embedded_service.url.removeprefix("http://")
    with triton.InferenceServerClient(url=url, network_timeout=120) as client:
        yield client


def v1_predict(client, model_id: str, body: dict | None = None, files: list | None = None) -> list[dict]:
    response = client.post(f"/v1/models/{model_id}/predict", json=body, files=files)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def probabilities_of(predictions: list[dict]) -> np.ndarray:
    return np.array([[p["probabilities"][str(c)] for c in CLASSES] for p in predictions])


def tensor(array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    infer_input = triton.InferInput("image", list(array.shape), datatype)
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


def outputs(binary: bool, names=("probabilities", "class_index", "label")) -> list[triton.InferRequestedOutput]:
    return [triton.InferRequestedOutput(name, binary_data=binary) for name in names]


@pytest.mark.parametrize("binary_input", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_output", [True, False], ids=["binary-out", "json-out"])
def test_tritonclient_fp32_infer_equals_v1_predict(client, triton_client, model, digits, binary_input, binary_output):
    pixels = (digits[0] / 255).astype(np.float32)
    expected = v1_predict(client, model["id"], {"pixels": pixels.tolist()})
    result = triton_client.infer(model["id"], [tensor(pixels[:, None], "FP32", binary_input)],
                                 outputs=outputs(binary_output), request_id="req-1")
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (8, 2)
    difference = np.abs(got - probabilities_of(expected)).max()
    print(f"binary in {binary_input}, out {binary_output}: max |v2 - v1| {difference:.3g}")
    assert difference <= TOLERANCE
    assert result.as_numpy("class_index").tolist() == [p["class_index"] for p in expected]
    assert result.as_numpy("label").tolist() == [p["label"] for p in expected]
    assert set(result.as_numpy("label").tolist()) <= set(CLASSES)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("req-1", NAME, str(model["version"]))
    assert all(("parameters" in o) == binary_output for o in response["outputs"])


def test_uint8_of_shape_n_s_s_equals_v1_predict_of_the_same_pngs(client, triton_client, model, digits, tmp_path):
    images, labels = digits
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    expected = probabilities_of(v1_predict(client, model["id"], files=[("files", p.read_bytes()) for p in paths]))
    # No outputs named: the client asks for all of them, in binary.
    result = triton_client.infer(model["id"], [tensor(images, "UINT8", True)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities", "class_index", "label"]
    assert np.abs(result.as_numpy("probabilities") - expected).max() <= TOLERANCE
    # The trained model reads most of these digits right: the labels are the dataset's.
    assert np.mean(result.as_numpy("label") == labels) >= 0.75


def test_only_the_outputs_asked_for(triton_client, model, digits):
    pixels = (digits[0][:2, None] / 255).astype(np.float32)
    result = triton_client.infer(model["id"], [tensor(pixels, "FP32", True)], outputs=outputs(False, ["label"]))
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


def test_name_and_version_routes(client, triton_client, model, digits):
    pixels = (digits[0][:3, None] / 255).astype(np.float32)
    by_id = triton_client.infer(model["id"], [tensor(pixels, "FP32", True)]).as_numpy("probabilities")
    version = str(model["version"])
    for name, model_version in ((NAME, version), (NAME, ""), (f"{NAME}@latest", "")):
        result = triton_client.infer(name, [tensor(pixels, "FP32", True)], model_version=model_version)
        assert (result.get_response()["model_name"], result.get_response()["model_version"]) == (NAME, version)
        assert np.array_equal(result.as_numpy("probabilities"), by_id)
        assert triton_client.is_model_ready(name, model_version)
        assert triton_client.get_model_metadata(name, model_version)["versions"] == [version]
    assert not triton_client.is_model_ready(NAME, str(model["version"] + 1))
    with pytest.raises(InferenceServerException) as raised:
        triton_client.infer(NAME, [tensor(pixels, "FP32", True)], model_version=str(model["version"] + 1))
    assert raised.value.status() == "404" and NAME in str(raised.value)


def test_server_health_and_metadata(triton_client, embedded_service, model):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    metadata = triton_client.get_server_metadata()
    assert metadata["name"] == "classcomp" and "binary_tensor_data" in metadata["extensions"]
    assert triton_client.is_model_ready(model["id"])
    assert not triton_client.is_model_ready(UNKNOWN)
    assert triton_client.get_model_metadata(model["id"]) == {
        "name": NAME,
        "versions": [str(model["version"])],
        "platform": "pytorch",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, SIZE, SIZE]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]},
                    {"name": "class_index", "datatype": "INT64", "shape": [-1]},
                    {"name": "label", "datatype": "INT64", "shape": [-1]}],
    }
    assert httpx.get(f"{embedded_service.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{embedded_service.url}/v2/health/ready").json() == {"ready": True}


def protocol_error(response: httpx.Response, status: int, *in_message: str) -> None:
    """The status, and the protocol's error shape: one key, `error`, a string."""
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    for fragment in in_message:
        assert fragment in body["error"], body


def binary_body(request: dict, data: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(request).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}


def image_input(shape: list[int], datatype: str = "FP32", **fields) -> dict:
    return {"inputs": [{"name": "image", "shape": shape, "datatype": datatype, **fields}]}


def test_bad_requests_are_4xx_in_the_protocol_shape_and_change_nothing(client, triton_client, model, digits):
    pixels = (digits[0][:2, None] / 255).astype(np.float32)
    before = triton_client.infer(model["id"], [tensor(pixels, "FP32", True)]).as_numpy("probabilities")
    infer = f"/v2/models/{model['id']}/infer"
    one = [0.5] * SIZE * SIZE

    protocol_error(client.post(f"/v2/models/{UNKNOWN}/infer", json=image_input([1, 1, SIZE, SIZE], data=one)),
                   404, UNKNOWN)
    protocol_error(client.get(f"/v2/models/{UNKNOWN}"), 404)
    protocol_error(client.get(f"/v2/models/{UNKNOWN}/ready"), 404)
    protocol_error(client.get("/v2/no-such-route"), 404)
    protocol_error(client.post(infer, json=image_input([1, 1, 28, 28], data=[0.5] * 28 * 28)), 400, "[N, 1, 32, 32]")
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE], data=one[1:])), 400, "1023 elements")
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE], "FP64", data=one)), 400, "FP32", "UINT8")
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE], data=[2.0] * SIZE * SIZE)), 400, "[0, 1]")
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE], "UINT8", data=[0.5] * SIZE * SIZE)),
                   400, "whole numbers")
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE], data=[True] * SIZE * SIZE)), 400)
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE])), 400, "no data")
    protocol_error(client.post(infer, json={**image_input([1, 1, SIZE, SIZE], data=one), "outputs": [{"name": "logits"}]}),
                   400, "logits")
    protocol_error(client.post(infer, content=b"{not json"), 400)
    protocol_error(client.post(infer, json={"inputs": []}), 400)
    protocol_error(client.post(infer, json=image_input([1, 1, SIZE, SIZE], data=one, parameters={
        "shared_memory_region": "region"})), 400, "shared-memory")
    # Binary data whose declared size is not the tensor's, or not what follows the JSON.
    data = np.full((1, 1, SIZE, SIZE), 0.5, np.float32).tobytes()
    for declared, sent, fragment in ((len(data), data[:-4], "follow the JSON"), (len(data) - 4, data[:-4], "4096")):
        body, headers = binary_body(image_input([1, 1, SIZE, SIZE], parameters={"binary_data_size": declared}), sent)
        protocol_error(client.post(infer, content=body, headers=headers), 400, fragment)
    body, headers = binary_body(image_input([1, 1, SIZE, SIZE], parameters={"binary_data_size": len(data)}), data)
    protocol_error(client.post(infer, content=body, headers={**headers, "Inference-Header-Content-Length": "99999"}),
                   400, "Inference-Header-Content-Length")
    protocol_error(client.post(infer, content=body, headers={**headers, "Content-Encoding": "gzip"}), 415, "gzip")

    # tritonclient's own errors carry the message as a string.
    with pytest.raises(InferenceServerException) as raised:
        triton_client.infer(model["id"], [tensor(pixels.astype(np.float64), "FP64", True)])
    assert raised.value.status() == "400" and "FP32" in str(raised.value)
    with pytest.raises(InferenceServerException) as raised:
        triton_client.infer(model["id"], [tensor(pixels[:, :, :28, :28].copy(), "FP32", True)])
    assert raised.value.status() == "400" and "shape" in str(raised.value)
    with pytest.raises(InferenceServerException) as raised:
        triton_client.infer(UNKNOWN, [tensor(pixels, "FP32", True)])
    assert raised.value.status() == "404"

    after = triton_client.infer(model["id"], [tensor(pixels, "FP32", True)]).as_numpy("probabilities")
    assert np.array_equal(before, after)
