"""Dynamic batching on one event loop: images from many requests gathered into one model batch."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch


class Batcher:
    """``await batcher(crop)`` -> that image's row of ``run_batch(stack of crops)``.

    One worker task takes the first queued image, then whatever else arrives within ``max_wait_s`` of it, up to
    ``max_batch_size`` images, and runs ``run_batch`` (``(N, ...)`` -> ``(N, ...)``) in a thread of its own, so the
    event loop keeps reading and decoding requests while the model runs (torch releases the GIL); the images that
    arrive meanwhile make the next batch. An image whose caller has gone (cancelled: the client disconnected, or its
    request timed out) is dropped before its batch runs. The queue itself is unbounded: the app bounds the requests it
    accepts (``Limits.max_queue``) and the images a request may carry (``Limits.max_files``)."""

    def __init__(self, run_batch: Callable[[torch.Tensor], torch.Tensor], max_batch_size: int, max_wait_s: float):
        self.run_batch, self.max_batch_size, self.max_wait_s = run_batch, max_batch_size, max_wait_s
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cspnet-forward")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work(), name="cspnet-batcher")

    async def stop(self) -> None:
        """Stop the worker (after the server has drained its requests) and fail whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("the server stopped before this image's batch ran"))
        self._pool.shutdown(wait=True)

    async def __call__(self, crop: torch.Tensor) -> torch.Tensor:
        if self._task is None or self._task.done():
            raise RuntimeError("the batcher is not running")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((crop, fut))
        return await fut  # cancelling the caller cancels fut, which the worker then skips

    async def _gather(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if not self._queue.empty():  # already here: no waiting
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                # a cancelled Queue.get leaves its item in the queue, so a timeout here loses nothing
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [(x, fut) for x, fut in await self._gather() if not fut.done()]
            if not batch:
                continue
            try:
                scores = await loop.run_in_executor(self._pool, self.run_batch, torch.stack([x for x, _ in batch]))
            except asyncio.CancelledError:  # stopped mid-batch: its callers are told, not left waiting
                for _, fut in batch:
                    fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - each caller gets the error; the worker keeps serving
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), row in zip(batch, scores):
                if not fut.done():
                    fut.set_result(row)
