"""Micro-batching: concurrent predict requests of one model share forward passes.

Requests join with their images already decoded into model inputs. One inference thread runs every
forward pass, one at a time, so requests no longer compete for the cores with passes of their own.
A request to an idle batcher runs at once: a lone client waits for nothing. Requests that arrive
while a pass is in flight queue per model and go into the next pass together, up to `max_size`
images; a queue that is not full when its turn comes waits for more arrivals until its oldest
request has waited `max_delay` seconds.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from prometheus_client import Histogram
from torch import Tensor

from ml.artifacts import LoadedModel
from service import inference


@dataclass
class _Request:
    x: Tensor
    result: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


@dataclass
class _Queue:
    loaded: LoadedModel
    requests: list[_Request] = field(default_factory=list)
    images: int = 0

    def take(self, max_size: int) -> list[_Request]:
        """Whole requests, oldest first, up to `max_size` images; always at least one."""
        taken = [self.requests.pop(0)]
        images = len(taken[0].x)
        while self.requests and images + len(self.requests[0].x) <= max_size:
            images += len(self.requests[0].x)
            taken.append(self.requests.pop(0))
        self.images -= images
        return taken


class PredictBatcher:
    """Lives on one event loop: `predict` is awaited from request handlers, never called from threads."""

    def __init__(self, max_size: int, max_delay: float, batch_sizes: Histogram):
        self.max_size = max_size
        self.max_delay = max_delay
        self._batch_sizes = batch_sizes
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
        # Keyed by the loaded instance, not the model id: a model reloaded by the cache forms its own batches.
        self._queues: dict[int, _Queue] = {}
        self._runner: asyncio.Task | None = None
        self._arrival: asyncio.Future | None = None

    async def predict(self, loaded: LoadedModel, x: Tensor) -> list[dict]:
        """The predictions of inputs `x` (N, 1, S, S) of `loaded`, in order."""
        loop = asyncio.get_running_loop()
        request = _Request(x, loop.create_future())
        queue = self._queues.setdefault(id(loaded), _Queue(loaded))
        queue.requests.append(request)
        queue.images += len(x)
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)
        if self._runner is None or self._runner.done():
            self._runner = loop.create_task(self._run())
        return await request.result

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        first = True
        while self._queues:
            key, queue = next(iter(self._queues.items()))  # the model that has waited longest
            if not first:
                await self._wait_for_more(queue)
            first = False
            requests = queue.take(self.max_size)
            if not queue.requests:
                del self._queues[key]
            outcomes = await loop.run_in_executor(self._thread, self._forward, queue.loaded, requests)
            for request, outcome in zip(requests, outcomes):
                if request.result.done():  # the client went away
                    continue
                if isinstance(outcome, BaseException):
                    request.result.set_exception(outcome)
                else:
                    request.result.set_result(outcome)

    async def _wait_for_more(self, queue: _Queue) -> None:
        deadline = queue.requests[0].arrived + self.max_delay
        while queue.images < self.max_size and (left := deadline - time.monotonic()) > 0:
            self._arrival = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(self._arrival, left)
            except TimeoutError:
                break
            finally:
                self._arrival = None

    def _forward(self, loaded: LoadedModel, requests: list[_Request]) -> list[list[dict] | Exception]:
        """On the inference thread: one pass for all, split back per request."""
        x = requests[0].x if len(requests) == 1 else torch.cat([r.x for r in requests])
        try:
            predictions = inference.predict(loaded, x)
        except Exception as exc:
            if len(requests) == 1:
                return [exc]
            # Whatever broke the shared pass fails only the requests that break on their own.
            return [self._forward(loaded, [r])[0] for r in requests]
        self._batch_sizes.observe(len(x))
        outcomes, start = [], 0
        for request in requests:
            outcomes.append(predictions[start : start + len(request.x)])
            start += len(request.x)
        return outcomes
