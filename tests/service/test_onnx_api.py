"""GET /v1/models/{id}/export.onnx on the embedded service: the downloaded file, run by onnxruntime on
PNG digits, gives what /v1 predict, embed and reconstruct give, within 1e-4; errors in the API's shape;
`classcomp export` writes the same bytes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from api_helpers import assert_error, files_of
from PIL import Image

from ml.data import to_model_input

CLASSCOMP = [sys.executable, "-m", "service.cli"]
TOLERANCE = 1e-4


def download(client, model_id: str, part: str = "classifier") -> bytes:
    response = client.get(f"/v1/models/{model_id}/export.onnx", params={"part": part})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    model = client.get(f"/v1/models/{model_id}").json()
    suffix = "" if part == "classifier" else f"-{part}"
    assert response.headers["content-disposition"] == f'attachment; filename="{model["name"]}-{model["version"]}{suffix}.onnx"'
    return response.content


def session(data: bytes) -> tuple[ort.InferenceSession, dict[str, str]]:
    """An onnxruntime session of the file, and the file's metadata."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the test machine's cores are shared with the service
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return sess, sess.get_modelmeta().custom_metadata_map


def run(sess: ort.InferenceSession, x: np.ndarray) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x})))


def model_inputs(paths, image_size: int) -> np.ndarray:
    """The PNGs as the model's input: their grey pixels through the preprocessing the service applies."""
    pixels = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("L"))) for p in paths])
    return to_model_input(pixels, image_size).numpy()


@pytest.mark.parametrize("kind", ["vgg", "vae-svm", "vae-kmeans"])
def test_classifier_equals_predict(client, analysis_models, mnist_pngs, kind):
    model_id = analysis_models[kind]
    sess, meta = session(download(client, model_id))
    assert meta["classcomp.model_id"] == model_id and meta["classcomp.model"] == kind
    classes = [str(c) for c in json.loads(meta["classcomp.classes"])]
    assert sess.get_inputs()[0].shape == ["batch", 1, int(meta["classcomp.image_size"]), int(meta["classcomp.image_size"])]
    paths = [p for p, _ in mnist_pngs[:8]]
    worst = 0.0
    for batch in (paths[:3], paths[3:]):  # one graph, two batch sizes
        got = run(sess, model_inputs(batch, int(meta["classcomp.image_size"])))
        response = client.post(f"/v1/models/{model_id}/predict", files=files_of(batch))
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        expected = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
        worst = max(worst, np.abs(got["probabilities"] - expected).max())
        assert worst <= TOLERANCE
        assert got["class_index"].tolist() == [p["class_index"] for p in predictions]
        if kind == "vae-kmeans":
            assert got["cluster"].tolist() == [p["cluster"] for p in predictions]
            assert np.abs(got["distance"] - [p["distance"] for p in predictions]).max() <= TOLERANCE
    print(f"{kind}: max |onnx - predict| of the probabilities {worst:.3g}")


def test_vae_encoder_and_decoder_equal_embed_and_reconstruct(client, analysis_models, mnist_pngs):
    model_id = analysis_models["vae-svm"]
    encoder, meta = session(download(client, model_id, "encoder"))
    decoder, _ = session(download(client, model_id, "decoder"))
    assert meta["classcomp.part"] == "encoder"
    paths = [p for p, _ in mnist_pngs[:5]]
    latent = run(encoder, model_inputs(paths, int(meta["classcomp.image_size"])))
    embedded = client.post(f"/v1/models/{model_id}/embed", files=files_of(paths)).json()["embeddings"]
    mean = np.abs(latent["latent_mean"] - [e["mean"] for e in embedded]).max()
    logvar = np.abs(latent["latent_logvar"] - [e["logvar"] for e in embedded]).max()
    # reconstruct answers the decoded mean on [0, 1]; the decoder's image is on the model's [-1, 1].
    image = run(decoder, latent["latent_mean"])["image"][:, 0]
    reconstructed = client.post(f"/v1/models/{model_id}/reconstruct", files=files_of(paths)).json()["reconstructions"]
    decoded = np.abs(np.clip((image + 1) / 2, 0, 1) - reconstructed).max()
    print(f"vae-svm: max |onnx - api| mean {mean:.3g}, logvar {logvar:.3g}, reconstruction {decoded:.3g}")
    assert max(mean, logvar, decoded) <= TOLERANCE


def test_errors_are_the_api_shape(client, analysis_models):
    assert_error(client.get("/v1/models/0123456789abcdef0123456789abcdef/export.onnx"), 404, "model_not_found")
    assert_error(client.get(f"/v1/models/{analysis_models['vgg']}/export.onnx", params={"part": "encoder"}),
                 409, "part_not_applicable", "no VAE")
    assert_error(client.get(f"/v1/models/{analysis_models['vgg']}/export.onnx", params={"part": "head"}),
                 422, "invalid_request", "part")


def test_cli_export_writes_the_same_bytes(embedded_service, client, analysis_models, tmp_path):
    model_id = analysis_models["vae-kmeans"]
    out = tmp_path / "model.onnx"
    done = subprocess.run([*CLASSCOMP, "export", model_id, "-o", str(out), "--url", embedded_service.url],
                          check=False, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == download(client, model_id)
    onnx.checker.check_model(onnx.load(out))

    missing = subprocess.run([*CLASSCOMP, "export", "0123456789abcdef0123456789abcdef", "-o", str(tmp_path / "x.onnx"),
                              "--url", embedded_service.url], check=False, capture_output=True, text=True, timeout=180)
    assert missing.returncode != 0 and "404 model_not_found" in missing.stderr
    assert not (tmp_path / "x.onnx").exists()
