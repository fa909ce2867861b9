"""Inference input budgets: images over the pixel limits are refused from their header, before any
decoding, so a small file of huge dimensions costs the API no memory; large allowed images leave no
memory behind; pixel arrays are real numbers in [0, 1] and count against the same limits; error
messages show no heap addresses.

Memory is read from /proc/PID/status of the `serve` process, which runs the API (uvicorn) itself.
Its peak (VmHWM) is reset before each measurement by writing 5 to /proc/PID/clear_refs.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from api_helpers import TINY_GAUSSIAN, assert_error, registry_counts, submit, wait_finished
from conftest import service_env, start_service
from PIL import Image

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="reads memory from Linux /proc")

# Small limits, so that both are quick to exceed with cheap files. A 3000x3000 RGB image decodes to
# 36 MB (Pillow keeps RGB in 4 bytes a pixel): one decode of any refused request would show.
IMAGE_BUDGET = 3000 * 3000
REQUEST_BUDGET = 2 * IMAGE_BUDGET
# Handling a refused request allocates a few MB at most (its body, its parse).
REFUSED_PEAK_MIB = 30


@dataclass
class Api:
    url: str
    pid: int
    home: Path

    def memory_mib(self, field: str = "VmRSS") -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        raise AssertionError(f"no {field} in /proc/{self.pid}/status")

    def reset_peak(self) -> float:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self.memory_mib("VmHWM")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Api]:
    home = tmp_path_factory.mktemp("budgets")
    env = service_env(home, data_dir, max_image_pixels=str(IMAGE_BUDGET), max_request_pixels=str(REQUEST_BUDGET))
    url, process = start_service(["serve"], env, home, "serve-budgets")
    yield Api(url, process.process.pid, home)
    process.stop()


@pytest.fixture(scope="module")
def client(api: Api) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def predict_url(client: httpx.Client) -> str:
    job = submit(client, {"kind": "train", "model": "vgg", "dataset": TINY_GAUSSIAN, "training": {"epochs": 1, "width": 0.125}})
    job = wait_finished(client, job["id"])
    assert job["status"] == "succeeded", job
    url = f"/v1/models/{job['model_ids'][0]}/predict"
    for _ in range(3):  # the model loaded and the paths warmed before anything is measured
        assert client.post(url, files=[("files", ("small.png", png("L", 28, 28), "image/png"))]).status_code == 200
    return url


def png(mode: str, width: int, height: int, color: int | tuple = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_small_file_of_huge_dimensions_is_refused_before_decoding(api, client, predict_url):
    bomb = png("L", 13000, 13000)  # 164 KB that would decode to 169 MB
    assert len(bomb) < 200_000
    before = registry_counts(client)
    start_peak = api.reset_peak()
    response = client.post(predict_url, files=[("files", ("bomb.png", bomb, "image/png"))])
    assert_error(response, 413, "image_too_large", "bomb.png", "13000x13000", str(IMAGE_BUDGET), "CLASSCOMP_MAX_IMAGE_PIXELS")
    # Over Pillow's own decompression-bomb limit too (twice 89 megapixels), which refuses it on opening.
    beyond_pillow = client.post(predict_url, files=[("files", ("bigger.png", png("1", 15000, 15000), "image/png"))])
    assert_error(beyond_pillow, 413, "image_too_large", "bigger.png", str(IMAGE_BUDGET), "CLASSCOMP_MAX_IMAGE_PIXELS")
    assert api.memory_mib("VmHWM") - start_peak < REFUSED_PEAK_MIB
    assert registry_counts(client) == before


def test_a_request_over_the_request_budget_is_refused_before_decoding(api, client, predict_url):
    # Each image is within the image budget; together they are 1.5 times the request budget.
    images = [("files", (f"photo-{i}.png", png("RGB", 3000, 3000, (200, 40, 90)), "image/png")) for i in range(3)]
    before = registry_counts(client)
    start_peak = api.reset_peak()
    response = client.post(predict_url, files=images)
    assert_error(response, 413, "too_many_pixels", str(3 * IMAGE_BUDGET), str(REQUEST_BUDGET),
                 "CLASSCOMP_MAX_REQUEST_PIXELS")
    assert api.memory_mib("VmHWM") - start_peak < REFUSED_PEAK_MIB
    assert registry_counts(client) == before


def test_memory_returns_near_its_baseline_after_a_burst_of_large_images(api, client, predict_url, capsys):
    allowed = png("RGB", 3000, 3000, (30, 160, 220))  # exactly the image budget: 36 MB decoded
    assert client.post(predict_url, files=[("files", ("warm-up.png", allowed, "image/png"))]).status_code == 200
    time.sleep(0.5)
    baseline = api.memory_mib()
    api.reset_peak()
    statuses: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=api.url, timeout=120) as own:
            statuses.append(own.post(predict_url, files=[("files", ("large.png", allowed, "image/png"))]).status_code)

    threads = [threading.Thread(target=send) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = api.memory_mib("VmHWM")
    time.sleep(0.5)
    after = api.memory_mib()
    with capsys.disabled():
        print(f"\nAPI RSS around 16 concurrent 9-megapixel RGB PNGs: baseline {baseline:.0f} MiB, "
              f"peak {peak:.0f} MiB, after {after:.0f} MiB")
    assert statuses == [200] * 16
    # Without handing freed memory back, glibc kept about 40 MB per threadpool thread that had decoded
    # one of these (several hundred MB in all). What may remain is about one decode (36 MB) freed after
    # the last trim, and allocator slack.
    assert after - baseline < 100


@pytest.mark.parametrize(
    "body",
    [
        b'{"pixels": [[[false]]]}',
        b'{"pixels": [[[true, 0.5]]]}',
        b'{"pixels": [[["0.5"]]]}',
        b'{"pixels": [[[null]]]}',
        b'{"pixels": [[[NaN]]]}',
        b'{"pixels": [[[Infinity]]]}',
        b'{"pixels": [[[-Infinity]]]}',
        b'{"pixels": [[[1e400]]]}',
        b'{"pixels": [[[1.5]]]}',
        b'{"pixels": [[[-0.1]]]}',
    ],
)
def test_pixel_values_must_be_finite_numbers_in_the_unit_interval(client, predict_url, body):
    response = client.post(predict_url, content=body, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request", "pixels[0][0][0]")


def test_integer_pixel_values_are_numbers(client, predict_url):
    assert client.post(predict_url, json={"pixels": [[[0, 1], [1, 0]]]}).status_code == 200


def test_invalid_image_messages_show_no_heap_addresses(client, predict_url):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
    whole = buffer.getvalue()  # noise: its compressed data spans most of the file
    for name, data in [("notes.png", b"just text"), ("empty.png", b""), ("header-only.png", whole[:40]),
                       ("cut.png", whole[: len(whole) // 2]), ("bad-data.png", whole[:60] + b"\xff" * 40 + whole[100:])]:
        message = assert_error(client.post(predict_url, files=[("files", (name, data, "image/png"))]),
                               400, "invalid_image", name)
        assert not re.search(r"0x[0-9a-fA-F]{6,}|<_io\.", message), message


def test_pixel_arrays_count_against_the_same_budgets(api, data_dir, predict_url):
    """A second API on the same registry and artifacts, with budgets of a few pixels."""
    env = service_env(api.home, data_dir, max_image_pixels="100", max_request_pixels="150")
    url, process = start_service(["serve", "--no-worker"], env, api.home, "api-tiny-budgets", probe="/healthz")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            def pixels(height: int, width: int) -> list[list[float]]:
                return [[0.5] * width for _ in range(height)]

            assert client.post(predict_url, json={"pixels": [pixels(10, 10)]}).status_code == 200
            assert_error(client.post(predict_url, json={"pixels": [pixels(10, 11)]}), 413, "image_too_large",
                         "pixels[0]", "11x10", "CLASSCOMP_MAX_IMAGE_PIXELS")
            assert_error(client.post(predict_url, json={"pixels": [pixels(10, 10), pixels(8, 8)]}), 413,
                         "too_many_pixels", "164", "150", "CLASSCOMP_MAX_REQUEST_PIXELS")
            upload = [("files", ("eleven.png", png("L", 11, 10), "image/png"))]
            assert_error(client.post(predict_url, files=upload), 413, "image_too_large", "eleven.png")
    finally:
        process.stop()
