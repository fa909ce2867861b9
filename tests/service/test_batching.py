"""Concurrent predict requests share forward passes (micro-batching) and each still gets exactly its own
predictions; a bad request in the crowd fails alone; a sustained load of 32 clients sees no errors."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api_helpers import assert_error, small_train_job, submit, wait_finished
from conftest import Service, service_env, start_service

IMAGES = 16


@pytest.fixture(scope="module")
def batching_service(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Service]:
    home = tmp_path_factory.mktemp("batching")
    env = service_env(home, data_dir)
    url, process = start_service(["serve"], env, home, "serve-batching")
    yield Service(url, env)
    process.stop()


@pytest.fixture(scope="module")
def client(batching_service: Service) -> Iterator[httpx.Client]:
    with batching_service.client() as client:
        yield client


@pytest.fixture(scope="module")
def predict_url(client: httpx.Client) -> str:
    # Trained on MNIST, so that its probabilities differ from digit to digit and a mix-up would show.
    job = submit(client, small_train_job("vgg", epochs=1))
    job = wait_finished(client, job["id"])
    assert job["status"] == "succeeded", job
    return f"/v1/models/{job['model_ids'][0]}/predict"


@pytest.fixture(scope="module")
def digits(mnist_pngs) -> list[bytes]:
    return [path.read_bytes() for path, _ in mnist_pngs[:IMAGES]]


@pytest.fixture(scope="module")
def alone(client, predict_url, digits) -> list[dict]:
    """Each digit's prediction from a request of its own, with nothing else in flight."""
    predictions = []
    for data in digits:
        response = client.post(predict_url, files=[("files", ("digit.png", data, "image/png"))])
        assert response.status_code == 200, response.text
        predictions.extend(response.json()["predictions"])
    assert len({round(p["probabilities"]["0"], 6) for p in predictions}) > IMAGES // 2, "the digits should differ"
    return predictions


def same_prediction(got: dict, expected: dict) -> bool:
    """The label exactly; probabilities to float32 rounding, which depends on the batch's size."""
    return (got["label"] == expected["label"] and got["class_index"] == expected["class_index"]
            and got["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6))


def shared_passes(client: httpx.Client) -> float:
    """Forward passes so far that served more than one image."""
    text = client.get("/metrics").text
    count = float(re.search(r"^classcomp_predict_batch_size_count (\S+)$", text, re.M)[1])
    single = float(re.search(r'^classcomp_predict_batch_size_bucket\{le="1\.0"\} (\S+)$', text, re.M)[1])
    return count - single


def test_concurrent_requests_share_passes_and_each_gets_its_own_predictions(client, batching_service, predict_url,
                                                                            digits, alone):
    before = shared_passes(client)
    for _ in range(5):  # all at once usually batches in the first round; timing on a busy machine may not
        barrier = threading.Barrier(IMAGES + 4)
        responses: dict[str, httpx.Response] = {}

        def send(name: str, data: bytes) -> None:
            with batching_service.client() as own:
                barrier.wait()
                responses[name] = own.post(predict_url, files=[("files", (name, data, "image/png"))])

        requests = [(f"digit-{i}.png", data) for i, data in enumerate(digits)]
        requests += [(f"broken-{i}.png", data[: len(data) // 2]) for i, data in enumerate(digits[:4])]
        threads = [threading.Thread(target=send, args=request) for request in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for i, expected in enumerate(alone):
            response = responses[f"digit-{i}.png"]
            assert response.status_code == 200, response.text
            (got,) = response.json()["predictions"]
            assert same_prediction(got, expected), (i, got, expected)
        for i in range(4):
            assert_error(responses[f"broken-{i}.png"], 400, "invalid_image", f"broken-{i}.png")
        if shared_passes(client) > before:
            break
    assert shared_passes(client) > before, "no forward pass served more than one image"


def test_a_request_of_many_images_is_split_back_in_order(client, predict_url, digits, alone):
    response = client.post(predict_url, files=[("files", (f"d{i}.png", data, "image/png")) for i, data in enumerate(digits)])
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(alone)
    assert all(same_prediction(got, expected) for got, expected in zip(predictions, alone))


def test_32_clients_for_20_seconds_get_no_errors(batching_service, predict_url, digits, alone, capsys):
    clients, seconds = 32, 20.0
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds

    def run(index: int) -> None:
        data, expected = digits[index % IMAGES], alone[index % IMAGES]
        with batching_service.client() as own:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    response = own.post(predict_url, files=[("files", ("digit.png", data, "image/png"))])
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                elif not same_prediction(response.json()["predictions"][0], expected):
                    errors.append(f"client {index} got another image's prediction")

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    quantiles = statistics.quantiles(latencies, n=100)
    with capsys.disabled():
        print(f"\n{clients} clients, {elapsed:.0f} s: {len(latencies)} predictions, {len(latencies) / elapsed:.1f}/s, "
              f"p50 {quantiles[49] * 1000:.0f} ms, p99 {quantiles[98] * 1000:.0f} ms, {len(errors)} errors")
    assert errors == []
    assert len(latencies) > clients
