"""``cluda adapt``: the UDA training loop, readable top to bottom.

config -> (DDP) -> datasets -> student, optimizer (resume) -> EMA teacher, frozen encoder ->
loaders -> loop {losses, backward, step, EMA update, log, evaluate, checkpoint}. The method
(training/methods) computes the loss terms of a step; everything else lives here. A first Ctrl-C
ends the loop after the current iteration with a checkpoint that resumes exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cluda_deploy.checkpoint import atomic_save, build_checkpoint, read_checkpoint
from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config
from cluda_deploy.evaluate import evaluate_pairs
from cluda_deploy.labels import label_space_for_source
from cluda_deploy.models import create_segmenter
from training.ddp import any_rank, barrier, init_distributed, shutdown, wrap_ddp
from training.ema import create_teacher, ema_alpha, ema_update
from training.feature_distance import frozen_encoder
from training.feed import build_step_loader, domain_dataset, source_picker, validation_pairs
from training.interrupt import StopRequest
from training.methods import Networks, StepBatch, create_method
from training.optim import build_optimizer, build_scheduler
from training.visualize import log_images

log = logging.getLogger("cluda.adapt")


@dataclass
class AdaptResult:
    run_dir: Path
    latest: Path
    best: Path | None
    iterations: int
    best_miou: float | None
    history: list[dict] = field(default_factory=list)
    interrupted: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensors(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def autocast_context(device: torch.device, amp: str):
    """bf16 (default) or fp16 autocast on CUDA; nothing on CPU or with amp='off'."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type="cuda", dtype=dtype)


def _resolve_resume(run_dir: Path, resume: bool | str | Path) -> Path | None:
    if not resume:
        return None
    path = run_dir / "checkpoints" / "latest.pt" if resume is True else Path(resume)
    if not path.is_file():
        raise FileNotFoundError(
            f"cannot resume: {path} does not exist; start without --resume or pass the run "
            "directory that holds checkpoints/latest.pt"
        )
    return path


def adapt(
    cfg: Config, run_dir: str | Path, resume: bool | str | Path = False, progress: bool = True
) -> AdaptResult:
    """Train ``cfg.train.method`` from ``cfg.data.source`` to ``cfg.data.target``; see module doc."""
    if cfg.train.method == "confeti" and cfg.confeti.stage == 0:  # CONFETI's stages, each a run
        from training.confeti.schedule import adapt_confeti

        return adapt_confeti(cfg, run_dir, resume, progress)
    run_dir = Path(run_dir)
    ctx = init_distributed(cfg.train.device)
    device, is_main = ctx.device, ctx.is_main
    if is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if device.type == "cpu" and not cfg.preset.startswith("demo"):
        log.warning("training on the CPU: expect hours per thousand iterations; use a GPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    label_space = label_space_for_source(cfg.data.source)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    seed_everything(cfg.train.seed + ctx.rank)  # ranks draw their own augmentations

    # --- data first: a missing dataset or class statistics fail before a slow model build
    method = create_method(cfg.train.method, cfg)
    source_set = domain_dataset(cfg, "source")
    source_pick = source_picker(cfg, source_set)  # rare-class sampling when uda.rcs
    target_set = domain_dataset(cfg, "target") if method.uses_target else None
    val_pairs = validation_pairs(cfg) if is_main else []

    # --- model, optimizer
    student = create_segmenter(cfg.model).to(device)
    if method.uses_imnet and cfg.model.pretrained is None:
        log.warning(
            "uda.fd_lambda > 0 without model.pretrained: the feature distance pulls the encoder "
            "towards its random initial weights; set model.pretrained (e.g. a local nvidia/mit-b5 "
            "folder) or --set uda.fd_lambda=0"
        )
    extra_modules = {name: m.to(device) for name, m in method.trainable_modules().items()}
    optimizer = build_optimizer(student, cfg.optim, extra_modules=method.optimizer_modules())
    scheduler = build_scheduler(optimizer, cfg.train.iters, cfg.optim)
    # A method's networks with their own optimizers (CONFETI's translator), stepped with the main one
    state_modules = {name: m.to(device) for name, m in method.state_modules().items()}
    extra_optimizers = method.extra_optimizers()
    use_scaler = device.type == "cuda" and cfg.train.amp == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    # --- resume
    start, best_miou, history, data = 0, None, [], None
    resume_path = _resolve_resume(run_dir, resume)
    if resume_path is not None:
        data = read_checkpoint(resume_path)
        state = data.get("training_state")
        if state is None:
            raise ValueError(f"{resume_path} holds no training state (an exported/final file?)")
        student.load_state_dict(data["state_dict"])
        for name, module in extra_modules.items():
            module.load_state_dict(state["extra_modules"][name])
        _restore_state_modules(data, resume_path, state_modules)
        for name, extra in extra_optimizers.items():
            extra.load_state_dict(state["extra_optimizers"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        start, best_miou = int(state["iteration"]), state.get("best_miou")
        history = list(state.get("history", []))
        log.info("resumed from %s at iteration %d", resume_path, start)
    if is_main:
        (run_dir / "config.json").write_text(cfg.to_json())

    # --- networks: DDP gives every rank rank 0's student; teacher and frozen encoder copy it
    student_forward = wrap_ddp(method.student_forward(student), ctx)
    teacher = create_teacher(student) if method.uses_teacher else None
    imnet_backbone = frozen_encoder(student.backbone) if method.uses_imnet else None
    if data is not None:
        _restore_frozen_networks(data, resume_path, teacher, imnet_backbone)
    nets = Networks(student_forward, teacher, imnet_backbone)

    # --- loaders: each step's crops are a pure function of (seed, step, rank): resume is exact
    rank, world = ctx.rank, ctx.world_size
    source_loader = build_step_loader(
        cfg, source_set, "source", start, device, source_pick, rank, world
    )
    target_loader = None
    if target_set is not None:
        target_loader = build_step_loader(
            cfg, target_set, "target", start, device, None, rank, world
        )

    writer = None
    if is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start or None)

    def save(name: str, iteration: int, rng: dict | None = None) -> Path:
        training_state = teacher_state = None
        if name == "latest":  # best.pt is a deployable file: the student only
            teacher_state = None if teacher is None else teacher.state_dict()
            training_state = {
                "iteration": iteration,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else None,
                "rng": rng or rng_state(),
                "best_miou": best_miou,
                "history": history,
                "extra_modules": {n: m.state_dict() for n, m in extra_modules.items()},
                "extra_optimizers": {n: o.state_dict() for n, o in extra_optimizers.items()},
                "imnet_backbone": None if imnet_backbone is None else imnet_backbone.state_dict(),
            }
        ckpt = build_checkpoint(
            config=cfg,
            label_space=label_space,
            state_dict=student.state_dict(),
            provenance={"iteration": iteration, "val_miou": best_miou if name == "best" else None},
            teacher_state_dict=teacher_state,
            training_state=training_state,
            mean=mean,
            std=std,
            modules={n: m.state_dict() for n, m in state_modules.items()},
        )
        return atomic_save(ckpt, run_dir / "checkpoints" / f"{name}.pt")

    def evaluate(iteration: int) -> None:
        nonlocal best_miou
        scores = evaluate_pairs(
            student, val_pairs, cfg.eval, label_space, mean, std, device, progress=False
        )
        record = {"iteration": iteration, **scores.to_dict()}
        history.append(record)
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / f"iter_{iteration:06d}.json").write_text(json.dumps(record, indent=2))
        writer.add_scalar("val/mIoU", scores.miou, iteration)
        for key, value in scores.subsets.items():
            writer.add_scalar(f"val/{key}", value, iteration)
        tqdm.write(f"[iter {iteration}] target {cfg.data.val_split} mIoU {100 * scores.miou:.2f}")
        if progress:
            tqdm.write(scores.table())
        if best_miou is None or scores.miou > best_miou:
            best_miou = scores.miou
            save("best", iteration)

    # --- the loop
    student.train()
    bar = tqdm(total=cfg.train.iters, initial=start, desc=f"adapt {method.name}",
               disable=not (progress and is_main), unit="it")  # fmt: skip
    done, interrupted, step_rng = start, False, None
    source_iter = iter(source_loader)
    target_iter = iter(target_loader) if target_loader is not None else None
    tic = time.perf_counter()
    try:
        with StopRequest() as stop:
            for iteration in range(start, cfg.train.iters):
                step_rng = rng_state()  # what an interrupt inside this step must save
                source = next(source_iter)
                target = next(target_iter)["image"] if target_iter is not None else None
                batch = StepBatch(
                    source_images=source["image"].to(device, non_blocking=True),
                    source_labels=source["label"].to(device, non_blocking=True),
                    target_images=None if target is None else target.to(device, non_blocking=True),
                )
                optimizer.zero_grad(set_to_none=True)
                for extra in extra_optimizers.values():
                    extra.zero_grad(set_to_none=True)
                with autocast_context(device, cfg.train.amp):
                    out = method.step(nets, batch, iteration)
                total = torch.stack([v.float() for v in out.losses.values()]).sum()
                scaler.scale(total).backward()
                scaler.step(optimizer)
                for extra in extra_optimizers.values():  # before update(): one scale for all
                    scaler.step(extra)
                scaler.update()
                scheduler.step()
                if teacher is not None:  # the reference's update at the start of the next step
                    ema_update(teacher, student, ema_alpha(iteration + 1, cfg.uda.ema_alpha))
                done = iteration + 1
                bar.update(1)

                if is_main and (done % cfg.train.log_interval == 0 or done == cfg.train.iters):
                    terms = {k: float(v.detach()) for k, v in out.losses.items()}
                    bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()})
                    scalars = {**terms, "total": float(total.detach()), **out.scalars}
                    for key, value in scalars.items():
                        writer.add_scalar(f"train/{key}", float(value), done)
                    for group in optimizer.param_groups:
                        writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], done)
                    writer.add_scalar(
                        "train/it_per_s", cfg.train.log_interval / (time.perf_counter() - tic), done
                    )
                    tic = time.perf_counter()
                if is_main and done % cfg.train.image_log_interval == 0:
                    log_images(writer, batch, out, label_space, mean, std, done)
                if done % cfg.train.eval_interval == 0 or done == cfg.train.iters:
                    if is_main:
                        evaluate(done)
                    barrier(ctx)
                stopping = any_rank(stop.requested, ctx)
                if is_main and (
                    stopping or done % cfg.train.checkpoint_interval == 0 or done == cfg.train.iters
                ):
                    save("latest", done)
                if stopping:
                    interrupted = True
                    tqdm.write(
                        f"stopped: saved latest.pt at iteration {done}; continue with --resume"
                    )
                    break
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the signal handler's reach
        interrupted = True
        if is_main:
            path = save("latest", done, rng=step_rng)
            tqdm.write(f"interrupted: saved {path} at iteration {done}; continue with --resume")
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        shutdown(ctx)
    best = run_dir / "checkpoints" / "best.pt"
    return AdaptResult(
        run_dir=run_dir,
        latest=run_dir / "checkpoints" / "latest.pt",
        best=best if best.is_file() else None,
        iterations=done if interrupted else cfg.train.iters,
        best_miou=best_miou,
        history=history,
        interrupted=interrupted,
    )


def _restore_state_modules(data: dict, path: Path | None, modules: dict) -> None:
    """Load a resumed run's ``state_modules`` (translator, EMA heads, prototypes, ...)."""
    stored = data.get("modules") or {}
    for name, module in modules.items():
        if name not in stored:
            method = data.get("provenance", {}).get("method", "?")
            raise ValueError(
                f"{path} has no {name!r} state (written by method {method!r}); resume with that "
                "method and its config, or start a new run"
            )
        module.load_state_dict(stored[name])


def _restore_frozen_networks(
    data: dict, path: Path | None, teacher: torch.nn.Module | None, imnet: torch.nn.Module | None
) -> None:
    """Load the EMA teacher and the frozen encoder of a resumed run."""
    method = data.get("provenance", {}).get("method", "?")
    if teacher is not None:
        if "teacher_state_dict" not in data:
            raise ValueError(
                f"{path} has no EMA teacher (written by method {method!r}); resume with that method"
            )
        teacher.load_state_dict(data["teacher_state_dict"])
    if imnet is not None:
        state = data["training_state"].get("imnet_backbone")
        if state is None:
            raise ValueError(
                f"{path} has no frozen ImageNet encoder (written by method {method!r}); resume "
                "with that method, or with --set uda.fd_lambda=0"
            )
        imnet.load_state_dict(state)
