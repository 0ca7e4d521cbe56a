"""Bounded HTTP load on a real ``cluda serve`` process over loopback, at several concurrencies.

For each concurrency C, C clients send ``--requests`` POST /v1/segment requests in all (raw PNG
body, label PNG back) and the run reports requests/s, p50/p99 latency, errors, the mean batch
size, and the ratio of HTTP throughput to the engine's own throughput in the same run: images the
engine segmented per second of engine time, read from the server's /metrics
(``cluda_batch_size_sum`` / ``cluda_batch_inference_seconds_sum``) before and after the level. A
ratio of 1 means the HTTP layer (read, decode, queue, encode, respond) costs no engine time.

    PYTHONPATH=. python bench/serve.py --size 256x512 --concurrency 1,8,32 --json serve.json
    PYTHONPATH=. python bench/serve.py --model runs/gta2cs/checkpoints/best.pt --device cuda:0

Without ``--model`` a demo-preset checkpoint with random weights is made in a temp folder.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from server.process import ServerProcess


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint or exported model (default: demo)")
    parser.add_argument("--size", default="256x512", help="request image HxW")
    parser.add_argument("--image", type=Path, default=None, help="send this image instead (resized to --size)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per level (default max(16, 2 x concurrency))")  # fmt: skip
    parser.add_argument("--device", default="cpu", help="server --device")
    parser.add_argument("--max-batch", type=int, default=8, help="server --max-batch")
    parser.add_argument("--max-wait-ms", type=float, default=10.0, help="server --max-wait-ms")
    parser.add_argument("--threads", type=int, default=1, help="torch/ORT threads in the server (OMP_NUM_THREADS)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    return parser.parse_args(argv)


def request_body(size: tuple[int, int], image: Path | None) -> bytes:
    height, width = size
    if image is not None:
        array = np.asarray(Image.open(image).convert("RGB").resize((width, height), Image.BILINEAR))
    else:  # a smooth gradient plus noise: roughly photo-like PNG size and decode cost
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
        array = np.clip(ramp + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def scrape(client: httpx.Client) -> dict[str, float]:
    """The counters the ratio needs, from /metrics."""
    text = client.get("/metrics").text
    values = {}
    for name in ("cluda_batch_size_sum", "cluda_batch_size_count", "cluda_batch_inference_seconds_sum"):
        match = re.search(rf"^{name} ([0-9.eE+-]+)$", text, flags=re.MULTILINE)
        values[name] = float(match.group(1)) if match else 0.0
    return values


async def load(url: str, body: bytes, concurrency: int, total: int) -> tuple[list[float], list[str], float]:
    """``total`` requests from ``concurrency`` clients; (latencies of successes, errors, wall s)."""
    latencies: list[float] = []
    errors: list[str] = []
    remaining = total
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    response = await client.post("/v1/segment", content=body, headers={"Content-Type": "image/png"})
                except httpx.HTTPError as exc:
                    errors.append(type(exc).__name__)
                    continue
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - start)
                else:
                    errors.append(str(response.status_code))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, errors, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_level(url: str, body: bytes, concurrency: int, total: int) -> dict:
    with httpx.Client(base_url=url, timeout=60) as client:
        before = scrape(client)
        latencies, errors, wall = asyncio.run(load(url, body, concurrency, total))
        after = scrape(client)
    images = after["cluda_batch_size_sum"] - before["cluda_batch_size_sum"]
    batches = after["cluda_batch_size_count"] - before["cluda_batch_size_count"]
    engine_s = after["cluda_batch_inference_seconds_sum"] - before["cluda_batch_inference_seconds_sum"]
    http_rps = len(latencies) / wall
    engine_ips = images / engine_s if engine_s else float("nan")
    return {
        "concurrency": concurrency, "requests": total, "ok": len(latencies), "errors": len(errors),
        "error_kinds": sorted(set(errors)), "wall_s": round(wall, 3), "requests_per_s": round(http_rps, 3),
        "p50_ms": round(1e3 * percentile(latencies, 50), 1), "p99_ms": round(1e3 * percentile(latencies, 99), 1),
        "mean_batch": round(images / batches, 2) if batches else None,
        "engine_images_per_s": round(engine_ips, 3), "http_over_engine": round(http_rps / engine_ips, 3),
    }  # fmt: skip


def machine(threads: int) -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "server_threads": threads, "python": platform.python_version(),
        "torch": str(torch.__version__), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": commit, "load_average": os.getloadavg(),
    }  # fmt: skip


def demo_checkpoint(folder: Path) -> Path:
    import torch

    from cluda_deploy.checkpoint import save_checkpoint
    from cluda_deploy.config import get_preset
    from cluda_deploy.labels import cityscapes_label_space
    from cluda_deploy.models import create_segmenter

    torch.manual_seed(0)
    cfg = get_preset("demo")
    return save_checkpoint(folder / "demo.pt", config=cfg, label_space=cityscapes_label_space(),
                           state_dict=create_segmenter(cfg.model).state_dict())  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    height, width = (int(v) for v in args.size.split("x"))
    levels = [int(c) for c in args.concurrency.split(",")]
    body = request_body((height, width), args.image)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or demo_checkpoint(Path(tmp))
        server = ServerProcess(model, [
            "--device", args.device, "--warmup-size", args.size, "--max-batch", str(args.max_batch),
            "--max-wait-ms", str(args.max_wait_ms), "--max-queue", str(4 * max(levels) + 8),
            "--request-timeout-s", "600"],
            env={"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                 "CLUDA_SERVE_ACCESS_LOG": "false"})  # fmt: skip
        try:
            url = server.wait_ready(timeout=600)
            asyncio.run(load(url, body, 1, 2))  # first requests outside the measurement
            rows = [run_level(url, body, c, args.requests or max(16, 2 * c)) for c in levels]
        finally:
            server.stop()
    header = ["concurrency", "requests", "errors", "requests_per_s", "p50_ms", "p99_ms", "mean_batch",
              "engine_images_per_s", "http_over_engine"]  # fmt: skip
    print(f"model {Path(model).name}, {args.size} PNG ({len(body)} bytes), device {args.device}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---:|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(row[h]) for h in header) + " |")
    if args.json:
        record = {"model": str(model), "size": args.size, "png_bytes": len(body), "device": args.device,
                  "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "machine": machine(args.threads),
                  "levels": rows}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=2))
    return rows


if __name__ == "__main__":
    main()
