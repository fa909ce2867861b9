"""classcomp.client.Client against the embedded service, over real HTTP: train -> wait -> predict -> export
(run by onnxruntime), reports, cancellation, VAE endpoints, errors, and registered names and aliases."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import uuid

import numpy as np
import onnxruntime as ort
import pytest
from api_helpers import TINY_ERROR_ANALYSIS, TINY_GAUSSIAN, long_gaussian_job, small_train_job
from PIL import Image

from classcomp import ClassCompError, Client

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(embedded_service):
    with Client(embedded_service.url) as client:
        yield client


@pytest.fixture(scope="module")
def vgg(client) -> dict:
    """A VGG trained on MNIST 0 vs 1 through the client, and the epoch events its wait reported."""
    events = []
    job = client.wait(client.submit(small_train_job("vgg", epochs=2))["id"],
                      progress=lambda event, data: events.append((event, data)))
    assert job["status"] == "succeeded", job
    return {"job": job, "id": job["model_ids"][0], "events": events}


def tiny_gaussian(model: str, **fields) -> dict:
    """Keywords of Client.train for a job of about a second."""
    return {"model": model, "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}, **fields}


def probabilities(answer: dict) -> np.ndarray:
    return np.array([[p["probabilities"][label] for label in ("0", "1")] for p in answer["predictions"]])


def test_wait_reports_each_epoch_in_order(vgg):
    epochs = [data for event, data in vgg["events"] if event == "epoch"]
    assert [data["progress"] for data in epochs] == [{"epoch": 1, "epochs": 2}, {"epoch": 2, "epochs": 2}]
    assert [(data["index"], data["record"]["epoch"]) for data in epochs] == [(1, 1), (2, 2)]
    assert vgg["job"]["progress"] == {"epoch": 2, "epochs": 2}


def test_predict_takes_paths_arrays_and_pil_images_alike(client, vgg, mnist_pngs):
    path, label = mnist_pngs[0]
    pixels = np.array(Image.open(path))
    assert pixels.dtype == np.uint8 and pixels.shape == (28, 28)
    answers = {
        "path": client.predict(vgg["id"], path),
        "uint8 array": client.predict(vgg["id"], pixels),
        "float array": client.predict(vgg["id"], pixels / 255.0),
        "float32 array": client.predict(vgg["id"], (pixels / 255).astype(np.float32)),
        "PIL image": client.predict(vgg["id"], Image.open(path)),
        "bytes": client.predict(vgg["id"], path.read_bytes()),
    }
    expected = probabilities(answers["path"])
    for how, answer in answers.items():
        assert answer["model_id"] == vgg["id"] and len(answer["predictions"]) == 1, how
        assert answer["predictions"][0]["label"] == label, how
        assert np.abs(probabilities(answer) - expected).max() <= 1e-6, how

    # Many at once: a list of paths, and a stack (N, H, W) of either dtype, in order.
    paths = [p for p, _ in mnist_pngs[:20]]
    stack = np.stack([np.array(Image.open(p)) for p in paths])
    by_paths = client.predict(vgg["id"], paths)
    for answer in (client.predict(vgg["id"], stack), client.predict(vgg["id"], stack / 255.0)):
        assert np.abs(probabilities(answer) - probabilities(by_paths)).max() <= 1e-6
    labels = [p["label"] for p in by_paths["predictions"]]
    assert sum(got == want for got, (_, want) in zip(labels, mnist_pngs[:20])) >= 19, labels


def test_export_runs_in_onnxruntime_as_predict(client, vgg, mnist_pngs, tmp_path):
    onnx_file = tmp_path / "vgg.onnx"
    content = client.export(vgg["id"], onnx_file)
    assert onnx_file.read_bytes() == content
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the cores are shared with the service
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["classcomp.image_size"] == "32"
    # Digits padded to the model's 32 x 32, so that no resizing stands between the two.
    digits = np.stack([np.pad(np.array(Image.open(p)), 2) for p, _ in mnist_pngs[:6]])
    x = (digits[:, None].astype(np.float32) / 255) * 2 - 1
    (onnx_probabilities,) = session.run(["probabilities"], {session.get_inputs()[0].name: x})
    assert np.abs(onnx_probabilities - probabilities(client.predict(vgg["id"], digits))).max() <= 1e-4


def test_models_listing_and_one_model(client, vgg):
    listed = client.models(architecture="vgg", limit=200)
    assert vgg["id"] in [m["id"] for m in listed["items"]]
    assert {"items", "total", "limit", "offset"} <= set(listed)
    model = client.model(vgg["id"])
    assert model["id"] == vgg["id"] and model["model"] == "vgg" and model["job_id"] == vgg["job"]["id"]
    assert client.metrics(vgg["id"])["epochs"] == [1, 2]
    assert client.figure(vgg["id"], "training-curves").startswith(PNG)


def test_reconstruct_and_embed(client, mnist_pngs):
    job = client.wait(client.train(**tiny_gaussian("vae-kmeans"))["id"], progress=False)
    assert job["status"] == "succeeded", job
    vae = job["model_ids"][0]
    paths = [p for p, _ in mnist_pngs[:2]]
    images = np.stack([np.array(Image.open(p)) for p in paths]) / 255.0

    answer = client.reconstruct(vae, images)
    assert answer["image_size"] == 32 and len(answer["reconstructions"]) == 2
    array = client.reconstruct(vae, paths, format="numpy")
    assert array.shape == (2, 32, 32) and array.dtype == np.float32
    assert np.abs(array - np.asarray(answer["reconstructions"])).max() <= 1e-6
    png = client.reconstruct(vae, paths[0], format="png")
    assert Image.open(io.BytesIO(png)).size == (28, 28)  # the input's own size

    embeddings = client.embed(vae, images)["embeddings"]
    assert len(embeddings) == 2 and all(len(e["mean"]) == len(e["logvar"]) == 8 for e in embeddings)


def test_report_of_a_job(client):
    job = client.wait(client.submit(TINY_ERROR_ANALYSIS)["id"], progress=False)
    assert job["status"] == "succeeded", job
    report = client.report(job["id"])
    assert {m["model"] for m in report["models"]} == set(TINY_ERROR_ANALYSIS["models"])
    assert "### Excess-risk decomposition" in client.report(job["id"], format="md")
    assert client.report(job["id"], format="png").startswith(PNG)


def test_cancel_a_running_job(client):
    job = client.submit(long_gaussian_job())
    answers = []

    def cancel_at_the_first_epoch(event: str, data: dict) -> None:
        if event == "epoch" and not answers:
            answers.append(client.cancel(job["id"]))

    finished = client.wait(job["id"], progress=cancel_at_the_first_epoch)
    assert answers[0]["cancel_requested"] is True
    assert finished["status"] == "cancelled" and finished["progress"]["epoch"] < 500, finished
    with pytest.raises(ClassCompError) as error:
        client.cancel(job["id"])
    assert (error.value.status, error.value.code) == (409, "job_finished")


def test_errors_carry_the_api_status_and_code(client, embedded_service):
    unknown = "0123456789abcdef0123456789abcdef"
    for call in (lambda: client.model(unknown), lambda: client.predict(unknown, np.zeros((4, 4))),
                 lambda: client.export(unknown)):
        with pytest.raises(ClassCompError) as error:
            call()
        assert (error.value.status, error.value.code) == (404, "model_not_found"), error.value
        assert "there is no model" in error.value.message and str(error.value).endswith("(404 model_not_found)")
    with pytest.raises(ClassCompError) as error:
        client.wait(unknown)
    assert (error.value.status, error.value.code) == (404, "job_not_found")
    with pytest.raises(ClassCompError) as error:
        client.submit({"kind": "train", "model": "no-such-model"})
    assert (error.value.status, error.value.code) == (422, "invalid_request")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # a port that nothing listens on while it is held unlistened
        with Client(f"http://127.0.0.1:{s.getsockname()[1]}") as nowhere, pytest.raises(ClassCompError) as error:
            nowhere.jobs()
    assert error.value.status is None and error.value.code == "unreachable"


def test_images_the_client_refuses_before_sending(client, mnist_pngs):
    path = mnist_pngs[0][0]
    with pytest.raises(ValueError, match="call of their own"):
        client.predict("any", [path, np.zeros((4, 4))])
    with pytest.raises(TypeError, match="uint8"):
        client.predict("any", np.zeros((4, 4), dtype=np.int64))
    with pytest.raises(FileNotFoundError):
        client.predict("any", path.with_name("missing.png"))


def test_the_client_imports_neither_numpy_nor_pillow_nor_the_service():
    loaded = subprocess.run([sys.executable, "-c", "import sys, classcomp.client; print(' '.join(sys.modules))"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert not {"numpy", "PIL", "torch", "ml", "service", "workers"} & set(loaded)


def test_names_versions_and_aliases(client, mnist_pngs):
    name = f"client-test-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(2):
        job = client.wait(client.train(**tiny_gaussian("vgg"), name=name)["id"], progress=False)
        assert job["status"] == "succeeded", job
        ids.append(job["model_ids"][0])
    registered = client.registered_model(name)
    assert registered["versions"] == [1, 2] and registered["latest_version"] == 2 and registered["aliases"] == {}
    assert client.model(name)["id"] == ids[1] and client.model(f"{name}/1")["id"] == ids[0]
    assert [m["id"] for m in client.models(name=name)["items"]] == ids[::-1]

    assert client.set_alias(name, "prod", 1)["aliases"] == {"prod": 1}
    assert client.model(f"{name}@prod")["id"] == ids[0]
    path = mnist_pngs[0][0]
    assert probabilities(client.predict(f"{name}@prod", path)).tolist() == \
        probabilities(client.predict(ids[0], path)).tolist()
    assert client.set_alias(name, "prod", 2)["aliases"] == {"prod": 2}
    assert client.model(f"{name}@prod")["id"] == ids[1]
    assert client.model(ids[1])["aliases"] == ["prod"]
    assert name in [r["name"] for r in client.registered_models(limit=200)["items"]]

    client.delete_alias(name, "prod")
    assert client.registered_model(name)["aliases"] == {}
    with pytest.raises(ClassCompError) as error:
        client.model(f"{name}@prod")
    assert error.value.status == 404
