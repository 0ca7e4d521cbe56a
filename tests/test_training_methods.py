"""One step of each UDA method on a tiny model: loss terms, gradients, what stays frozen."""

from __future__ import annotations

import pytest
import torch

from cluda_deploy.config import resolve_config
from cluda_deploy.models import create_segmenter
from training.ema import create_teacher
from training.feature_distance import frozen_encoder
from training.methods import Networks, SegmenterForward, StepBatch, create_method, method_names


def setup(method: str, **sets):
    sets = {"uda.fd_lambda": 0.005, **sets}  # the demo preset turns it off (no ImageNet weights)
    cfg = resolve_config("demo", [f"train.method={method}", *(f"{k}={v}" for k, v in sets.items())])
    torch.manual_seed(0)
    student = create_segmenter(cfg.model)
    nets = Networks(SegmenterForward(student), create_teacher(student),
                    frozen_encoder(student.backbone))  # fmt: skip
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, :32, :32] = 13  # a car block, so feature distance has thing cells
    labels[0, -4:] = 255
    batch = StepBatch(torch.randn(2, 3, 64, 64), labels, torch.randn(2, 3, 64, 64))
    return cfg, student, nets, batch


def test_registry_lists_the_four_methods():
    assert method_names() == ["cluda", "confeti", "dacs", "source-only"]
    with pytest.raises(ValueError, match="known methods: cluda, confeti, dacs, source-only"):
        create_method("mic", resolve_config("demo"))


@pytest.mark.parametrize(
    ("method", "terms"),
    [
        ("source-only", {"source_ce"}),
        ("dacs", {"source_ce", "feature_distance", "mix_ce"}),
        ("cluda", {"source_ce", "feature_distance", "source_contrast", "mix_ce", "mix_contrast"}),
    ],
)
def test_step_terms_and_gradients(method, terms):
    cfg, student, nets, batch = setup(method)
    teacher_before = {k: v.clone() for k, v in nets.teacher.state_dict().items()}
    out = create_method(method, cfg).step(nets, batch, iteration=0)
    assert set(out.losses) == terms
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in nets.teacher.parameters())
    assert all(p.grad is None for p in nets.imnet_backbone.parameters())
    for (
        key,
        value,
    ) in nets.teacher.state_dict().items():  # the loop, not the step, moves the teacher
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, teacher_before[key]), key
    if method != "source-only":
        assert 0.0 <= float(out.scalars["pseudo_weight"]) <= 1.0
        assert out.images["mixed_image"].shape == (2, 3, 64, 64)
        assert out.images["mixed_label"].shape == (2, 64, 64)
        # at step 0 the student encoder equals its frozen copy (no drop path in the demo model)
        assert out.losses["feature_distance"].item() == pytest.approx(0.0, abs=1e-6)


def test_switches_remove_terms():
    cfg, _, nets, batch = setup("cluda", **{"uda.fd_lambda": 0, "uda.cl_on_source": False})
    method = create_method("cluda", cfg)
    assert not method.uses_imnet
    assert set(method.step(nets, batch, 0).losses) == {"source_ce", "mix_ce", "mix_contrast"}


def test_pseudo_label_weight_and_margins():
    cfg, _, nets, batch = setup("dacs", **{"uda.pseudo_ignore_top": 3,
                                           "uda.pseudo_ignore_bottom": 5})  # fmt: skip
    labels, weight, quality = create_method("dacs", cfg).pseudo_label(
        nets.teacher, batch.target_images
    )
    assert labels.shape == (2, 64, 64)
    assert (weight[:, :3] == 0).all() and (weight[:, -5:] == 0).all()
    assert torch.allclose(weight[:, 3:-5], quality)
    assert nets.teacher.training  # batch statistics, dropout off
