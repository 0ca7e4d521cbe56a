"""Source-only vs DAFormer self-training (dacs) vs CLUDA on the procedural demo domains.

Every method trains the ``--preset`` (``demo``; ``demo-hrda`` for HRDA multi-resolution training)
for the same iterations with the same seeds, and the
final student (not the best checkpoint: that would select on the reporting set) is scored on the
demo target's val split. Prints a table of target mIoU per method (mean and per seed) and writes
JSON with the per-class IoU of every run.

    PYTHONPATH=. python bench/adaptation.py --iters 400 --seeds 0,1 --jobs 2 --json adaptation.json
    PYTHONPATH=. python bench/adaptation.py --preset demo-hrda --methods dacs,cluda,cluda+mic
    PYTHONPATH=. python bench/adaptation.py --preset demo-confeti --methods confeti --seeds 0,1

A method ``NAME+mic`` trains ``NAME`` with MIC's masked target loss (``uda.mic=true``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

DEFAULT_METHODS = ("source-only", "dacs", "cluda")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="demo",
                        help="a demo-domain preset: demo | demo-hrda | demo-confeti")  # fmt: skip
    parser.add_argument("--data-root", type=Path, default=Path("data/demo"))
    parser.add_argument("--runs", type=Path, default=Path("runs/bench-adaptation"))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--iters", type=int, default=None, help="default: the preset's")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for every run")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (1 thread each)")
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    return parser.parse_args(argv)


def run_one(data_root: Path, run_dir: Path, method: str, seed: int, iters: int | None,
            overrides: list[str], preset: str = "demo") -> dict:  # fmt: skip
    """Train one (method, seed) of ``preset`` and return its final target-val scores."""
    from cluda_deploy.config import resolve_config
    from training.loop import adapt

    if torch.get_num_threads() > 1 and multiprocessing.current_process().name != "MainProcess":
        torch.set_num_threads(1)
    base, mic = method.removesuffix("+mic"), method.endswith("+mic")
    sets = [f"data.root={data_root}", f"train.method={base}", f"train.seed={seed}"]
    if iters:
        sets.append(f"train.iters={iters}")
    if mic:
        sets.append("uda.mic=true")
    cfg = resolve_config(preset, sets + list(overrides))
    n = cfg.train.iters
    cfg.train.eval_interval = cfg.train.checkpoint_interval = n
    # CONFETI's two-stage schedule runs stage 1 (confeti.stage1_iters) before these n iterations
    trained = n + (cfg.confeti.stage1_iters if base == "confeti" and cfg.confeti.stages == 2 else 0)
    started = time.perf_counter()
    result = adapt(cfg, run_dir / f"{method}-seed{seed}", progress=False)
    seconds = time.perf_counter() - started
    final = result.history[-1]
    return {"method": method, "seed": seed, "iterations": n, "mIoU": final["mIoU"],
            "per_class_iou": final["per_class_iou"], "seconds": round(seconds, 1),
            "trained_iterations": trained, "seconds_per_iter": round(seconds / trained, 3)}  # fmt: skip


def summarize(runs: list[dict], methods: list[str]) -> list[dict]:
    rows = []
    for method in methods:
        scores = [r["mIoU"] for r in runs if r["method"] == method]
        rows.append({
            "method": method,
            "mean_mIoU": statistics.fmean(scores),
            "std_mIoU": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            "per_seed": scores,
            "seconds_per_iter": statistics.fmean(
                r["seconds_per_iter"] for r in runs if r["method"] == method
            ),
        })  # fmt: skip
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [
        "| method | target mIoU (mean) | std | per seed | s/iter |",
        "|---|---:|---:|---|---:|",
    ]
    for r in rows:
        seeds = ", ".join(f"{100 * s:.2f}" for s in r["per_seed"])
        lines.append(f"| {r['method']} | {100 * r['mean_mIoU']:.2f} | {100 * r['std_mIoU']:.2f} | "
                     f"{seeds} | {r['seconds_per_iter']:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from cluda_deploy.data import generate_demo_domains

    generate_demo_domains(args.data_root, workers=max(1, args.jobs))
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    jobs = [
        (args.data_root, args.runs, m, s, args.iters, args.overrides, args.preset)
        for s in seeds
        for m in methods
    ]
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            runs = list(pool.map(run_one, *zip(*jobs, strict=True)))
    else:
        runs = [run_one(*job) for job in jobs]
    rows = summarize(runs, methods)
    print(format_table(rows))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    report = {"preset": args.preset, "rows": rows, "runs": runs, "overrides": args.overrides,
              "seeds": seeds,
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads_per_run": 1 if args.jobs > 1 else torch.get_num_threads(),
                          "jobs": args.jobs, "commit": commit}}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
