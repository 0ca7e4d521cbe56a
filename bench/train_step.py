"""Seconds per training iteration and peak memory of each UDA method, random weights and data.

One full iteration as ``training/loop.py`` runs it (method step on 2 source + 2 target crops,
backward, AdamW step, EMA update), on synthetic crops whose labels are 32x32 blocks of random
classes. Each method runs in a fresh process so its peak memory is its own: on a GPU
``torch.cuda.max_memory_allocated``, on the CPU the process's peak resident set (which includes
the interpreter and libraries, about 0.5 GB, and is therefore an upper bound).

    PYTHONPATH=. python bench/train_step.py --preset cluda-daformer-mitb5 --crop 512 --iters 10
    PYTHONPATH=. python bench/train_step.py --crop 128 --iters 3 --warmup 1   # CPU-sized
    PYTHONPATH=. python bench/train_step.py --preset cluda-hrda-mitb5 --crop 1024 \
        --methods dacs,cluda,cluda+mic                                   # HRDA (GPU, paper sizes)

A method ``NAME+mic`` adds MIC's masked target loss (``uda.mic=true``). HRDA presets train
multi-resolution (context view + detail crop per pass, the teacher's full HRDA inference).
``confeti`` times its joint stage 1 (segmenter + translator, every term on; ``--set
confeti.stage=2`` for the frozen-translator stage):

    PYTHONPATH=. python bench/train_step.py --preset confeti-dlv2-r101 --methods confeti --crop 512
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="cluda-daformer-mitb5")
    parser.add_argument("--methods", default="source-only,dacs,cluda")
    parser.add_argument("--crop", type=int, default=512, help="square crop side (paper: 512)")
    parser.add_argument("--batch", type=int, default=2, help="crops per domain (paper: 2)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def block_labels(batch: int, size: int, num_classes: int, gen: torch.Generator) -> torch.Tensor:
    """(B, size, size) labels: 32x32 blocks of random classes (so ClassMix and CL see classes)."""
    cells = max(1, size // 32)
    coarse = torch.randint(0, num_classes, (batch, 1, cells, cells), generator=gen).float()
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()


def measure(preset: str, method_name: str, crop: int, batch: int, iters: int, warmup: int,
            overrides: list[str], device_name: str) -> dict:  # fmt: skip
    """Build the networks as the loop does and time ``iters`` iterations after ``warmup``."""
    from cluda_deploy.config import resolve_config
    from cluda_deploy.inference import pick_device
    from cluda_deploy.models import create_segmenter
    from training.ema import create_teacher, ema_alpha, ema_update
    from training.feature_distance import frozen_encoder
    from training.loop import autocast_context
    from training.methods import Networks, StepBatch, create_method
    from training.optim import build_optimizer

    base, mic = method_name.removesuffix("+mic"), method_name.endswith("+mic")
    # CONFETI: the joint stage (=2 via --set), with every iteration-gated term on from step 0
    confeti = ["confeti.stage=1", "confeti.contrast_start=-1", "confeti.cam_mix_start=-1",
               "confeti.proto_warmup_iters=-1"] if base == "confeti" else []  # fmt: skip
    cfg = resolve_config(preset, [f"train.method={base}", f"data.crop_size={crop}x{crop}",
                                  f"uda.mic={mic}", *confeti, *overrides])  # fmt: skip
    device = pick_device(device_name)
    torch.manual_seed(0)
    student = create_segmenter(cfg.model).to(device).train()
    method = create_method(base, cfg)
    for module in method.trainable_modules().values():  # CLUDA's weighting head on HRDA
        module.to(device)
    for module in method.state_modules().values():  # CONFETI's translator, EMA heads, prototypes
        module.to(device)
    extra_optimizers = list(method.extra_optimizers().values())  # CONFETI's translator Adam
    nets = Networks(
        method.student_forward(student),
        create_teacher(student) if method.uses_teacher else None,
        frozen_encoder(student.backbone) if method.uses_imnet else None,
    )
    optimizer = build_optimizer(student, cfg.optim, fused=device.type == "cuda",
                                extra_modules=method.optimizer_modules())  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + iters):
        batch_data = StepBatch(
            torch.randn(batch, 3, crop, crop, generator=gen).to(device),
            block_labels(batch, crop, cfg.model.num_classes, gen).to(device),
            torch.randn(batch, 3, crop, crop, generator=gen).to(device),
        )
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for extra in extra_optimizers:
            extra.zero_grad(set_to_none=True)
        with autocast_context(device, cfg.train.amp):
            out = method.step(nets, batch_data, i)
        torch.stack([v.float() for v in out.losses.values()]).sum().backward()
        optimizer.step()
        for extra in extra_optimizers:
            extra.step()
        if nets.teacher is not None:
            ema_update(nets.teacher, student, ema_alpha(i + 1, cfg.uda.ema_alpha))
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
        peak_kind = "cuda max_memory_allocated"
    else:
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
        peak_kind = "process peak RSS"
    return {
        "method": method_name, "preset": preset, "crop": crop, "batch": batch,
        "backbone": cfg.model.backbone, "embed_dim": cfg.model.embed_dim,
        "hrda": cfg.model.hrda.enabled, "detail_crop": cfg.model.hrda.detail_crop_size,
        "cl_grid": cfg.uda.cl_grid, "amp": cfg.train.amp if device.type == "cuda" else "off",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "median_s_per_iter": statistics.median(times),
        "min_s_per_iter": min(times), "iters": iters, "peak_memory_gib": round(peak_gib, 2),
        "peak_memory_kind": peak_kind, "losses": sorted(out.losses),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for method in [m for m in args.methods.split(",") if m]:
        with ctx.Pool(1) as pool:  # a fresh process per method: its own peak memory
            rows.append(pool.apply(measure, (args.preset, method, args.crop, args.batch, args.iters,
                                             args.warmup, args.overrides, args.device)))  # fmt: skip
    print("| method | preset | crop | batch | device | s/iter (median) | peak memory (GiB) |")
    print("|---|---|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['preset']} | {r['crop']} | {r['batch']}+{r['batch']} | "
              f"{r['device']} | {r['median_s_per_iter']:.3f} | {r['peak_memory_gib']:.2f} |")  # fmt: skip
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()  # fmt: skip
        machine = {"platform": platform.platform(), "torch": torch.__version__, "commit": commit}
        args.json.write_text(json.dumps({"rows": rows, "machine": machine}, indent=2))
    return rows


if __name__ == "__main__":
    main()
