"""The client commands of `classcomp` (each a call of classcomp.client) against a running (embedded) service."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from api_helpers import TINY_ERROR_ANALYSIS, long_gaussian_job, submit, wait_finished, wait_for_job
from PIL import Image

CLASSCOMP = [sys.executable, "-m", "service.cli"]


def classcomp(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLASSCOMP, *args, "--url", service.url], capture_output=True, text=True, timeout=180)


# A VGG on the Gaussian images (1000 for training), one epoch: seconds.
GAUSSIAN_VGG = ("--model", "vgg", "--dataset", "gaussian", "--image-size", "32", "--width", "0.125", "--epochs", "1")


def test_submit_wait_jobs_predict_reconstruct_and_embed(embedded_service, mnist_pngs, tmp_path):
    done = classcomp(embedded_service, "submit", "--model", "vae-kmeans", "--image-size", "32", "--width", "0.125",
                     "--epochs", "1", "--wait")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded" and job["progress"] == {"epoch": 1, "epochs": 1}
    bar = done.stderr.replace("\r", "\n")  # the progress bar, fed by the job's event stream
    assert "1/1" in bar and "ETA" in bar, bar

    listed = classcomp(embedded_service, "jobs", "--status", "succeeded")
    assert listed.returncode == 0 and job["id"] in listed.stdout

    images = [str(path) for path, _ in mnist_pngs[:4]]
    predicted = classcomp(embedded_service, "predict", job["model_ids"][0], *images)
    assert predicted.returncode == 0, predicted.stderr
    labels = [p["label"] for p in json.loads(predicted.stdout)["predictions"]]
    assert sum(p == label for p, (_, label) in zip(labels, mnist_pngs[:4])) >= 3  # one epoch of training

    reconstructed = classcomp(embedded_service, "reconstruct", job["model_ids"][0], *images[:2], "-o", str(tmp_path))
    assert reconstructed.returncode == 0, reconstructed.stderr
    for image in images[:2]:
        assert Image.open(tmp_path / f"{Path(image).stem}.png").size == (28, 28)  # each input's own size
    as_arrays = classcomp(embedded_service, "reconstruct", job["model_ids"][0], images[0])
    assert json.loads(as_arrays.stdout)["image_size"] == 32
    embedded = classcomp(embedded_service, "embed", job["model_ids"][0], *images)
    assert embedded.returncode == 0 and len(json.loads(embedded.stdout)["embeddings"]) == 4


def test_wait_for_a_submitted_job_then_the_model_commands(embedded_service, tmp_path):
    submitted = classcomp(embedded_service, "submit", *GAUSSIAN_VGG)
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    waited = classcomp(embedded_service, "wait", job_id)
    assert waited.returncode == 0, waited.stderr
    job = json.loads(waited.stdout)
    assert job["status"] == "succeeded" and "1/1" in waited.stderr.replace("\r", "\n")
    model_id = job["model_ids"][0]

    listed = classcomp(embedded_service, "model", "list", "--architecture", "vgg", "--dataset", "gaussian",
                       "--sort=-accuracy", "--limit", "200")
    assert listed.returncode == 0 and model_id in listed.stdout, listed.stderr
    shown = classcomp(embedded_service, "model", "show", model_id)
    assert json.loads(shown.stdout)["id"] == model_id
    assert json.loads(classcomp(embedded_service, "model", "metrics", model_id).stdout)["epochs"] == [1]
    weights = tmp_path / "vgg.safetensors"
    assert classcomp(embedded_service, "model", "weights", model_id, "-o", str(weights)).returncode == 0
    assert weights.stat().st_size > 0
    curves = tmp_path / "curves.png"
    drawn = classcomp(embedded_service, "model", "figure", model_id, "training-curves", "-o", str(curves))
    assert drawn.returncode == 0, drawn.stderr
    assert Image.open(curves).format == "PNG"

    deleted = classcomp(embedded_service, "model", "delete", model_id)
    assert deleted.returncode == 0, deleted.stderr
    gone = classcomp(embedded_service, "model", "show", model_id)
    assert gone.returncode != 0 and "404 model_not_found" in gone.stderr


def test_names_and_aliases(embedded_service, mnist_pngs):
    name = f"cli-test-{uuid.uuid4().hex[:8]}"
    ids = []
    for _ in range(2):
        done = classcomp(embedded_service, "submit", *GAUSSIAN_VGG, "--name", name, "--wait")
        assert done.returncode == 0, done.stderr
        ids.append(json.loads(done.stdout)["model_ids"][0])
    assert json.loads(classcomp(embedded_service, "model", "names", name).stdout)["versions"] == [1, 2]

    aliased = classcomp(embedded_service, "model", "alias", name, "prod", "1")
    assert aliased.returncode == 0 and json.loads(aliased.stdout)["aliases"] == {"prod": 1}, aliased.stderr
    predicted = classcomp(embedded_service, "predict", f"{name}@prod", str(mnist_pngs[0][0]))
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(classcomp(embedded_service, "model", "show", f"{name}/2").stdout)["id"] == ids[1]
    listed = classcomp(embedded_service, "model", "list", "--name", name)
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ids[::-1]
    assert f"{name}/1" in listed.stdout and "prod" in listed.stdout
    names = classcomp(embedded_service, "model", "names", "--limit", "200")
    assert any(line.split()[:2] == [name, "2"] and "prod=1" in line for line in names.stdout.splitlines()), names.stdout

    removed = classcomp(embedded_service, "model", "unalias", name, "prod")
    assert removed.returncode == 0, removed.stderr
    gone = classcomp(embedded_service, "predict", f"{name}@prod", str(mnist_pngs[0][0]))
    assert gone.returncode != 0 and "404" in gone.stderr


def test_client_errors_are_one_line(embedded_service):
    result = classcomp(embedded_service, "predict", "0123456789abcdef0123456789abcdef", __file__)
    assert result.returncode != 0
    assert "there is no model" in result.stderr and "404 model_not_found" in result.stderr


def test_cancel_a_job_then_cancelling_it_again_is_one_line(embedded_service):
    with embedded_service.client() as client:
        job = submit(client, long_gaussian_job())
        wait_for_job(client, job["id"], lambda j: j["status"] == "running")
    cancelled = classcomp(embedded_service, "cancel", job["id"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancel_requested"] is True
    with embedded_service.client() as client:
        assert wait_finished(client, job["id"])["status"] == "cancelled"
    again = classcomp(embedded_service, "cancel", job["id"])
    assert again.returncode != 0 and "409 job_finished" in again.stderr


def test_report_as_markdown_json_and_png(embedded_service, tmp_path):
    with embedded_service.client() as client:
        job = wait_finished(client, submit(client, TINY_ERROR_ANALYSIS)["id"])
        assert job["status"] == "succeeded", job
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
    markdown = classcomp(embedded_service, "report", job["id"])
    assert markdown.returncode == 0 and "### Excess-risk decomposition" in markdown.stdout
    as_json = classcomp(embedded_service, "report", job["id"], "--format", "json")
    assert json.loads(as_json.stdout) == report
    plot = tmp_path / "plot.png"
    png = classcomp(embedded_service, "report", job["id"], "--format", "png", "-o", str(plot))
    assert png.returncode == 0 and plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
