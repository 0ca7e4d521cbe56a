"""Dynamic micro-batching: one queue, one inference worker (thread + engine) per device.

Requests are queued as single images. Each worker takes the oldest waiting image and every other
waiting image of the same size, up to ``max_batch``, waiting at most ``max_wait`` after the oldest
one arrived for more of that size to come; then it runs the engine on its own thread (never on
the event loop) and hands each request its slice. Images of other sizes stay queued in arrival
order for the next batch, so mixed sizes are never stacked together (research/deploy.md 5.2).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from server.engines import Engine, EngineOutput
from server.metrics import ServerMetrics


class QueueFull(RuntimeError):
    """The queue holds ``max_queue`` images already: answer 503 with Retry-After."""


@dataclass
class Segmentation:
    """One image's result and where its time went."""

    labels: np.ndarray  # (H, W) uint8
    confidence: np.ndarray | None  # (H, W) float32
    queue_s: float
    infer_s: float
    batch_size: int


@dataclass
class _Job:
    image: np.ndarray  # (H, W, 3) uint8
    confidence: bool
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple[int, int]:
        return self.image.shape[:2]


class MicroBatcher:
    """``await submit(image)`` -> :class:`Segmentation`; batches across concurrent requests."""

    def __init__(
        self, engines: list[Engine], max_batch: int, max_wait_s: float, max_queue: int,
        metrics: ServerMetrics | None = None,
    ):  # fmt: skip
        if not engines:
            raise ValueError("MicroBatcher needs at least one engine")
        self.engines = engines
        limits = [e.info.max_batch for e in engines if e.info.max_batch]
        self.max_batch = min([max_batch, *limits])
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.metrics = metrics
        self._pending: deque[_Job] = deque()
        self._wakeups: list[asyncio.Event] = []
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"infer-{e.info.device}") for e in engines
        ]
        self._workers: list[asyncio.Task] = []
        self._busy = 0

    # ------------------------------------------------------------------ public

    def start(self) -> None:
        for engine, executor in zip(self.engines, self._executors, strict=True):
            wakeup = asyncio.Event()
            self._wakeups.append(wakeup)
            self._workers.append(asyncio.create_task(self._work(engine, executor, wakeup)))

    @property
    def depth(self) -> int:
        return len(self._pending)

    @property
    def idle(self) -> bool:
        return not self._pending and self._busy == 0

    def free_slots(self) -> int:
        return self.max_queue - len(self._pending)

    def submit(self, image: np.ndarray, confidence: bool = False) -> asyncio.Future:
        """Queue one (H, W, 3) uint8 image; the future resolves to a :class:`Segmentation`."""
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} images are queued (the limit is {self.max_queue})")
        job = _Job(image, confidence, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._report_depth()
        for wakeup in self._wakeups:
            wakeup.set()
        return job.future

    async def warmup(self, sizes: list[tuple[int, int]], runs: int) -> None:
        """Run every engine on its own thread at each size, batch 1 and ``max_batch``."""
        loop = asyncio.get_running_loop()
        batches = sorted({1, self.max_batch})
        for engine, executor in zip(self.engines, self._executors, strict=True):
            for height, width in sizes:
                for batch in batches:
                    dummy = np.zeros((batch, height, width, 3), dtype=np.uint8)
                    for _ in range(runs):  # with confidence where there is one: the larger path
                        await loop.run_in_executor(executor, engine.infer, dummy, engine.info.has_confidence)

    async def close(self, timeout: float) -> None:
        """Let queued images finish (up to ``timeout`` s), then stop the workers and threads."""
        deadline = time.perf_counter() + timeout
        while not self.idle and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(QueueFull("the server is shutting down"))
        self._pending.clear()
        for executor in self._executors:
            executor.shutdown(wait=True)

    # ------------------------------------------------------------------ worker

    async def _work(self, engine: Engine, executor: ThreadPoolExecutor, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch(wakeup)
            if not jobs:
                continue
            self._busy += 1
            try:
                await self._run(loop, engine, executor, jobs)
            finally:
                self._busy -= 1

    async def _next_batch(self, wakeup: asyncio.Event) -> list[_Job]:
        while True:
            self._drop_cancelled()
            if self._pending:
                break
            wakeup.clear()
            await wakeup.wait()
        key = self._pending[0].key
        deadline = self._pending[0].enqueued + self.max_wait_s
        while self._count(key) < self.max_batch:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            wakeup.clear()
            try:
                await asyncio.wait_for(wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
            if not self._pending or self._pending[0].key != key:
                return []  # another worker took them; start over
        return self._take(key)

    def _count(self, key: tuple[int, int]) -> int:
        return sum(1 for job in self._pending if job.key == key)

    def _take(self, key: tuple[int, int]) -> list[_Job]:
        """Remove and return up to ``max_batch`` live jobs of size ``key``, oldest first."""
        taken, kept = [], deque()
        for job in self._pending:
            if job.key == key and len(taken) < self.max_batch and not job.future.done():
                taken.append(job)
            elif not job.future.done():
                kept.append(job)
        self._pending = kept
        self._report_depth()
        return taken

    def _drop_cancelled(self) -> None:
        if any(job.future.done() for job in self._pending):
            self._pending = deque(job for job in self._pending if not job.future.done())
            self._report_depth()

    async def _run(self, loop, engine: Engine, executor: ThreadPoolExecutor, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        want_confidence = any(job.confidence for job in jobs)
        batch = np.stack([job.image for job in jobs])
        try:
            out: EngineOutput = await loop.run_in_executor(executor, engine.infer, batch, want_confidence)
        except Exception as exc:  # hand the failure to every waiting request
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        infer_s = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe_batch(len(jobs), infer_s)
        for i, job in enumerate(jobs):
            if job.future.done():  # the request timed out or its client went away
                continue
            conf = out.confidence[i] if (job.confidence and out.confidence is not None) else None
            job.future.set_result(
                Segmentation(out.labels[i], conf, started - job.enqueued, infer_s, len(jobs))
            )

    def _report_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
