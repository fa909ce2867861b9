"""Supervision and recovery, each fault injected into real processes: the worker under `serve`
killed, a worker killed mid-job, Redis restarted without persistence while a job waits, Redis
down, and the API killed mid-job.

The distributed tests run against a redis-server of their own (stopping it loses every message,
as restarting a Redis without persistence does) and a SQLite registry shared by their API and
worker processes, with short timeouts: a worker or job unseen for STALE seconds is lost, a queued
job's message is re-sent after REQUEUE_AFTER seconds beside an idle worker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from api_helpers import (
    TINY_GAUSSIAN, assert_error, long_gaussian_job, registry_counts, submit, wait_finished, wait_for_job,
)
from conftest import REPO, Service, ServiceProcess, free_port, service_env, start_service, start_worker

STALE = 6
REQUEUE_AFTER = 3
TINY_JOB = {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}}
QUEUE = "training"  # the default queue: each test has a Redis of its own


class RedisServer:
    """redis-server on a free port, keeping nothing on disk."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_dir / "redis.log"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{self.log_path.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path: Path, data_dir: Path, own_redis: RedisServer) -> dict[str, str]:
    return service_env(tmp_path, data_dir, broker_url=own_redis.url, job_stale_seconds=str(STALE),
                       requeue_after_seconds=str(REQUEUE_AFTER))


@pytest.fixture
def api(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Service, ServiceProcess]]:
    """`serve --no-worker`: probed on /healthz, since /readyz also wants a live worker."""
    url, process = start_service(["serve", "--no-worker"], env, tmp_path, "api", probe="/healthz")
    yield Service(url, env), process
    process.stop()


def wait_readyz(client: httpx.Client, status: int, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == status:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz did not answer {status} within {timeout}s: {response.text}")
        time.sleep(0.1)


def worker_children(pid: int) -> list[int]:
    """The process ids of the `classcomp worker` children of process `pid`."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            command = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended while we looked
            continue
        if int(fields[1]) == pid and command[-2:] == [b"worker", b""]:
            children.append(int(stat.parent.name))
    return children


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_serve_restarts_a_killed_worker_and_readiness_follows_it(tmp_path, data_dir):
    env = service_env(tmp_path, data_dir, job_stale_seconds=str(STALE))
    url, serve = start_service(["serve"], env, tmp_path, "serve")  # /readyz answers 200 once its worker is live
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            assert client.get("/readyz").json()["workers"] == {"live": 1, "busy": 0}
            [worker] = worker_children(serve.process.pid)
            os.killpg(worker, signal.SIGKILL)  # the worker and its pool process, as the OOM killer might

            assert_error(wait_readyz(client, 503, timeout=10), 503, "not_ready", "no live worker")
            job = submit(client, TINY_JOB)  # accepted meanwhile: it waits queued for the next worker
            assert wait_readyz(client, 200).json()["workers"]["live"] == 1
            [replacement] = worker_children(serve.process.pid)
            assert replacement != worker
            job = wait_finished(client, job["id"], timeout=120)
            assert job["status"] == "succeeded", (job["error_code"], job["error"])
        assert f"the worker {worker} exited (signal 9); restarting it in 1 s" in serve.log_tail(100_000)
    finally:
        serve.stop()
    assert serve.process.returncode == 0
    assert not alive(replacement)  # stopping serve stopped its worker


def test_a_job_lost_with_its_worker_fails_within_the_stale_timeout(api, env, tmp_path):
    service, _ = api
    worker = start_worker(env, tmp_path, "worker-1")
    replacement = None
    try:
        with service.client() as client:
            job = submit(client, long_gaussian_job())
            wait_for_job(client, job["id"], lambda j: j["status"] == "running" and j["metrics"], timeout=120)
            assert client.get("/readyz").json()["workers"] == {"live": 1, "busy": 1}

            worker.kill()
            killed_at = time.monotonic()
            job = wait_finished(client, job["id"], timeout=STALE + 30)
            assert time.monotonic() - killed_at < STALE + 5
            assert job["status"] == "failed" and job["error_code"] == "worker_lost", job
            assert f"worker lost: no heartbeat for {STALE} seconds" in job["error"]
            assert job["model_ids"] == []
            assert_error(wait_readyz(client, 503, timeout=STALE), 503, "not_ready", "no live worker")

            replacement = start_worker(env, tmp_path, "worker-2")
            assert client.get("/readyz").json()["workers"] == {"live": 1, "busy": 0}
            new = wait_finished(client, submit(client, TINY_JOB)["id"], timeout=120)
            assert new["status"] == "succeeded", (new["error_code"], new["error"])
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "failed"  # not brought back to life
    finally:
        worker.stop()
        if replacement is not None:
            replacement.stop()


def test_a_message_lost_with_redis_is_sent_again_once_a_worker_idles(api, env, own_redis, tmp_path):
    service, api_process = api
    with service.client() as client, own_redis.client() as broker:
        job = submit(client, TINY_JOB)
        assert broker.llen(QUEUE) == 1
        own_redis.stop()
        own_redis.start()  # empty: the message is gone, the job still queued in the registry
        assert broker.llen(QUEUE) == 0
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"

        worker = start_worker(env, tmp_path)
        try:
            job = wait_finished(client, job["id"], timeout=REQUEUE_AFTER + 60)
            assert job["status"] == "succeeded", (job["error_code"], job["error"])
            assert len(job["model_ids"]) == 1
            assert f"re-sent the message of job {job['id']}" in api_process.log_tail(100_000)

            # A duplicate, as a second sweeping API or a redelivery would send, is skipped and acknowledged.
            send = f"from service import queue; queue.send_job({job['id']!r})"
            inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLASSCOMP_")}
            subprocess.run([sys.executable, "-c", send], env={**inherited, **env}, cwd=REPO, check=True, timeout=60)
            deadline = time.monotonic() + 30
            while f"skipping job {job['id']}: it is no longer queued" not in worker.log_tail(100_000):
                assert time.monotonic() < deadline, worker.log_tail()
                time.sleep(0.2)
            time.sleep(1)  # the acknowledgement follows the task's return
            assert broker.llen(QUEUE) == 0 and broker.hlen("unacked") == 0
            assert client.get(f"/v1/jobs/{job['id']}").json() == job
        finally:
            worker.stop()


def test_while_redis_is_down_reads_work_and_submissions_are_refused_without_a_trace(api, env, own_redis, tmp_path):
    service, _ = api
    worker = start_worker(env, tmp_path)
    try:
        with service.client() as client:
            done = wait_finished(client, submit(client, TINY_JOB)["id"], timeout=120)
            assert done["status"] == "succeeded", (done["error_code"], done["error"])
            assert wait_readyz(client, 200).json()["broker"] == "ok"
            counts = registry_counts(client)

            own_redis.stop()
            assert_error(client.post("/v1/jobs", json=TINY_JOB), 503, "broker_unavailable", "broker is unreachable")
            message = assert_error(client.get("/readyz"), 503, "not_ready", "broker unreachable")
            assert "no live worker" not in message and "registry" not in message  # the worker still stamps
            listed = client.get("/v1/jobs")
            assert listed.status_code == 200 and [j["id"] for j in listed.json()["items"]] == [done["id"]]
            assert client.get(f"/v1/jobs/{done['id']}").json() == done
            assert client.get(f"/v1/models/{done['model_ids'][0]}").status_code == 200
            assert registry_counts(client) == counts  # the refused submission left nothing behind
    finally:
        worker.stop()


def test_an_api_restarted_mid_job_loses_nothing(api, env, tmp_path):
    service, api_process = api
    worker = start_worker(env, tmp_path)
    try:
        with service.client() as client:
            job = submit(client, long_gaussian_job(epochs=8))
            job = wait_for_job(client, job["id"], lambda j: j["status"] == "running" and j["metrics"], timeout=120)
        api_process.kill()  # the worker trains on, recording each epoch in the registry

        url, restarted = start_service(["serve", "--no-worker"], env, tmp_path, "api-restarted", probe="/readyz")
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                seen = client.get(f"/v1/jobs/{job['id']}").json()
                assert seen["status"] in ("running", "succeeded") and len(seen["metrics"]) >= len(job["metrics"]), seen
                job = wait_finished(client, job["id"], timeout=240)
                assert job["status"] == "succeeded", (job["error_code"], job["error"])
                assert [r["epoch"] for r in job["metrics"]] == list(range(1, 9))
                [model_id] = job["model_ids"]
                assert model_id in [m["id"] for m in client.get("/v1/models").json()["items"]]
        finally:
            restarted.stop()
    finally:
        worker.stop()
