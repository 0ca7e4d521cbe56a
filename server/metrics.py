"""Prometheus metrics of one server process (or of all ``--workers`` in multiprocess mode).

Request counts by route and status, per-stage latency histograms (decode, queue, infer, encode,
per request), queue depth, the batch-size histogram and per-batch engine time (their sums give
the engine's own throughput), and GPU memory in use when a CUDA device is present.
With ``PROMETHEUS_MULTIPROC_DIR`` set (``cluda serve --workers N`` sets it) every worker writes
its values there and ``/metrics`` adds them up (research/deploy.md 5.4).
"""

from __future__ import annotations

import os
import sys

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
STAGES = ("decode", "queue", "infer", "encode")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ServerMetrics:
    """The metric objects, on a registry of their own (so several apps can share a process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "cluda_http_requests", "HTTP requests by route, method and status code",
            ["route", "method", "status"], registry=reg,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "cluda_http_request_duration_seconds", "Whole-request latency by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "cluda_stage_duration_seconds", "Per-image latency by stage: decode, queue, infer, encode",
            ["stage"], buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.in_flight = Gauge(
            "cluda_http_requests_in_flight", "Requests being handled", registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.queue_depth = Gauge(
            "cluda_queue_depth", "Images waiting for an inference worker", registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.batch_size = Histogram(
            "cluda_batch_size", "Images per engine call", buckets=BATCH_BUCKETS, registry=reg
        )
        self.batch_seconds = Histogram(
            "cluda_batch_inference_seconds", "Engine time per batch", buckets=LATENCY_BUCKETS,
            registry=reg,
        )  # fmt: skip
        self.ready = Gauge(
            "cluda_ready", "1 when the engines are loaded and warmed up", registry=reg,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self.gpu_memory = Gauge(
            "cluda_gpu_memory_used_bytes", "GPU memory in use (all processes), from the driver",
            ["device"], registry=reg, multiprocess_mode="max",
        )  # fmt: skip
        self.gpu_memory_allocated = Gauge(
            "cluda_gpu_memory_allocated_bytes", "GPU memory held by this process' PyTorch allocator",
            ["device"], registry=reg, multiprocess_mode="livesum",
        )  # fmt: skip

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def update_gpu_memory(self) -> None:
        """Read GPU memory now (only where this process already uses torch with CUDA)."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            self.gpu_memory.labels(device=f"cuda:{index}").set(total - free)
            self.gpu_memory_allocated.labels(device=f"cuda:{index}").set(
                torch.cuda.memory_allocated(index)
            )

    def render(self) -> bytes:
        self.update_gpu_memory()
        directory = multiprocess_dir()
        if directory is None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=directory)
        return generate_latest(merged)
