"""The client commands of `classcomp` against a running (embedded) service."""

from __future__ import annotations

import json
import subprocess
import sys

from api_helpers import TINY_ERROR_ANALYSIS, long_gaussian_job, submit, wait_finished, wait_for_job

CLASSCOMP = [sys.executable, "-m", "service.cli"]


def classcomp(service, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLASSCOMP, *args, "--url", service.url], capture_output=True, text=True, timeout=180)


def test_submit_wait_jobs_and_predict(embedded_service, mnist_pngs):
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
