"""Optimizer parameter groups and the mmcv poly + warm-up schedule (research/cluda.md 2.9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cluda_deploy.config import OptimConfig
from training.optim import build_optimizer, build_scheduler, lr_factor, param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.ModuleDict({"proj": nn.Linear(2, 2), "layer_norm": nn.LayerNorm(2)})
        self.decode_head = nn.Linear(2, 2)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)


def test_param_groups_follow_daformer_keys():
    model = Toy()
    cfg = OptimConfig()
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(groups) == {"backbone", "backbone/no_decay", "head"}
    assert groups["head"]["lr"] == pytest.approx(6e-4)
    assert groups["backbone"]["lr"] == pytest.approx(6e-5)
    assert groups["backbone/no_decay"]["weight_decay"] == 0.0
    assert groups["backbone"]["weight_decay"] == 0.01
    n_params = sum(len(g["params"]) for g in groups.values())
    assert n_params == 6  # frozen layer left out


def test_schedule_matches_mmcv_values():
    cfg = OptimConfig()
    # Peak after warm-up: lr * (1 - 1500/40000) = 5.775e-5 (research/cluda.md 2.9).
    assert cfg.lr * lr_factor(1500, 40000, cfg) == pytest.approx(5.775e-5)
    # Start of warm-up: poly(0) * warmup_ratio.
    assert lr_factor(0, 40000, cfg) == pytest.approx(1e-6)
    # Mid warm-up t=750: (1 - 750/40000) * (1 - 0.5 * (1 - 1e-6)).
    assert lr_factor(750, 40000, cfg) == pytest.approx((1 - 750 / 40000) * (1 - 0.5 * (1 - 1e-6)))
    assert lr_factor(40000, 40000, cfg) == 0.0


def test_scheduler_drives_group_lrs():
    model = Toy()
    cfg = OptimConfig(warmup_iters=2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, 10, cfg)
    for _ in range(5):
        opt.step()
        sched.step()
    head = next(g for g in opt.param_groups if g["name"] == "head")
    assert head["lr"] == pytest.approx(6e-4 * (1 - 5 / 10))
    assert isinstance(opt, torch.optim.AdamW)


def test_method_modules_join_the_groups_under_their_reference_names():
    model = Toy()
    weighter = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    shared = nn.ModuleDict({"again": model.decode_head})  # already in the model: counted once
    cfg = OptimConfig()
    groups = {
        g["name"]: g
        for g in param_groups(model, cfg, {"decode_head.feat_weighter": weighter, "x": shared})
    }
    head_ids = {id(p) for p in groups["head"]["params"]}
    # 'head' in 'decode_head.feat_weighter.0.weight': lr x10, as mmcv's custom_keys in CLUDA
    assert {id(weighter[0].weight), id(weighter[0].bias)} <= head_ids
    assert groups["head"]["lr"] == pytest.approx(6e-4) and groups["head"]["weight_decay"] == 0.01
    # '...feat_weighter.1.weight' has no 'norm' in its name: decay like any head weight
    assert {id(weighter[1].weight)} <= head_ids
    assert sum(len(g["params"]) for g in groups.values()) == 6 + 4
    opt = build_optimizer(model, cfg, extra_modules={"decode_head.feat_weighter": weighter})
    stepped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in stepped for p in weighter.parameters())
    plain = {g["name"]: g for g in param_groups(model, cfg, {"style": nn.Linear(2, 2)})}
    assert len(plain["backbone"]["params"]) == 2 + 2  # no 'head' in the name: base lr
