"""AdamW with DAFormer's parameter groups and the mmcv poly schedule with linear warm-up.

Reference: research/cluda.md section 2.9 (configs/_base_/schedules/adamw.py, mmcv 1.3.7 LrUpdaterHook).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from cluda_deploy.config import OptimConfig

NO_DECAY_KEYS = ("norm", "pos_block")


def named_trainable_parameters(
    model: nn.Module, extra_modules: Mapping[str, nn.Module] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of ``model`` and of each ``extra_modules[key]`` as ``key.name``.

    Extra modules are a method's trainable heads (``UDAMethod.optimizer_modules``), named as the
    reference names them (CLUDA's weighting head is ``decode_head.feat_weighter``), so the key
    rules below apply to them as to the segmenter. Frozen and repeated parameters are left out.
    """
    named, seen = [], set()
    sources = [("", model), *sorted((extra_modules or {}).items())]
    for prefix, module in sources:
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            named.append((f"{prefix}.{name}" if prefix else name, param))
    return named


def param_groups(
    model: nn.Module, cfg: OptimConfig, extra_modules: Mapping[str, nn.Module] | None = None
) -> list[dict]:
    """Split parameters as mmcv's ``paramwise_cfg.custom_keys`` does for DAFormer.

    Names containing ``head`` get ``lr * head_lr_mult``; names containing ``norm`` or
    ``pos_block`` get no weight decay. Frozen parameters are left out. ``extra_modules``: see
    :func:`named_trainable_parameters`.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in named_trainable_parameters(model, extra_modules):
        is_head = "head" in name
        no_decay = any(key in name for key in NO_DECAY_KEYS)
        groups.setdefault((is_head, no_decay), []).append(param)
    out = []
    for (is_head, no_decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": cfg.lr * (cfg.head_lr_mult if is_head else 1.0),
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
                "name": f"{'head' if is_head else 'backbone'}{'/no_decay' if no_decay else ''}",
            }
        )
    return out


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    fused: bool = False,
    extra_modules: Mapping[str, nn.Module] | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` of ``model`` and the method's ``extra_modules``."""
    kwargs = {"fused": True} if fused else {}
    return torch.optim.AdamW(
        param_groups(model, cfg, extra_modules),
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        weight_decay=cfg.weight_decay,
        **kwargs,
    )


def lr_factor(step: int, max_iters: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at ``step`` (0-based), mmcv poly + linear warm-up.

    ``poly(t) = (1 - t/T)^power * (1 - min) + min``; during warm-up (t < W) it is scaled by
    ``1 - (1 - t/W) * (1 - warmup_ratio)``; with DAFormer's values the peak is 5.775e-5 at t=1500.
    """
    progress = min(step, max_iters) / max_iters
    factor = (1.0 - progress) ** cfg.poly_power * (1.0 - cfg.min_lr / cfg.lr) + cfg.min_lr / cfg.lr
    if step < cfg.warmup_iters:
        factor *= 1.0 - (1.0 - step / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, max_iters: int, cfg: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, max_iters, cfg)
    )
