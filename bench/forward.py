"""Forward time of each backbone (+ its usual head) at one input size: eval mode, no_grad.

Warm-up runs first, then the median of ``--repeats`` timed runs. Prints a table and, with
``--json``, writes it with the machine (torch version, device, CPU model, threads, git commit).

    PYTHONPATH=. python bench/forward.py --backbones mit_b0,mit_b5,resnet101 \
        --size 512x1024 --repeats 5 --json forward.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
import transformers

from cluda_deploy.config import ModelConfig
from cluda_deploy.models import backbone_names, create_segmenter

DEFAULT_BACKBONES = ("mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5", "resnet101")
# The head each backbone is used with in the papers: DAFormer on MiT, DeepLabV2 on ResNet-101.
DEFAULT_HEAD = {"resnet101": "deeplabv2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(DEFAULT_BACKBONES),
                        help=f"comma-separated, from: {', '.join(backbone_names())}")  # fmt: skip
    parser.add_argument("--head", default=None,
                        help="head for every backbone (default: deeplabv2 on resnet101, else daformer)")  # fmt: skip
    parser.add_argument("--size", default="512x1024", help="input HxW")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    return parser.parse_args(argv)


def time_forward(
    model: torch.nn.Module, images: torch.Tensor, warmup: int, repeats: int
) -> list[float]:
    """Seconds per forward for ``repeats`` runs after ``warmup`` untimed ones."""
    sync = torch.cuda.synchronize if images.device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(images)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                 if ln.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu_model": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_commit": commit,
        "load_avg_1_5_15m": load_average(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def load_average() -> list[float] | None:
    """1/5/15-minute load: on a shared machine other jobs inflate and scatter the times."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    load_before = load_average()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    height, width = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, height, width, device=device)

    results = []
    for backbone in [b for b in args.backbones.split(",") if b]:
        head = args.head or DEFAULT_HEAD.get(backbone, "daformer")
        model = create_segmenter(ModelConfig(backbone=backbone, head=head)).eval().to(device)
        times = time_forward(model, images, args.warmup, args.repeats)
        results.append({
            "backbone": backbone,
            "head": head,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "median_ms": round(statistics.median(times) * 1e3, 1),
            "min_ms": round(min(times) * 1e3, 1),
            "max_ms": round(max(times) * 1e3, 1),
            "repeats": len(times),
        })  # fmt: skip
        print_row(results[-1], header=len(results) == 1, flush=True)
        del model

    info = machine_info(device)
    print(f"\n{info['device_name']} ({info['device']}, {info['threads']} threads), torch "
          f"{info['torch']}, input {args.batch}x3x{height}x{width}, commit {info['git_commit']}, "
          f"load {load_before} -> {info['load_avg_1_5_15m']}")  # fmt: skip
    if args.json:
        payload = {"machine": info, "load_avg_before": load_before, "size": [height, width],
                   "batch": args.batch, "warmup": args.warmup, "results": results}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return results


def print_row(row: dict, header: bool, flush: bool = False) -> None:
    if header:
        print("| backbone | head | params (M) | median (ms) | min (ms) | max (ms) | runs |")
        print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| {row['backbone']} | {row['head']} | {row['params_m']} | {row['median_ms']} | "
          f"{row['min_ms']} | {row['max_ms']} | {row['repeats']} |", flush=flush)  # fmt: skip


if __name__ == "__main__":
    main()
