"""One CONFETI step on a tiny model: loss terms per stage, where each gradient goes, what the
stylised source replaces; config overrides and presets."""

from __future__ import annotations

import pytest
import torch

from cluda_deploy.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConfetiConfig,
    ConfigError,
    config_from_dict,
    resolve_config,
)
from cluda_deploy.labels import label_space_for_source
from cluda_deploy.models import create_segmenter
from training.ema import create_teacher
from training.methods import Networks, SegmenterForward, StepBatch, create_method
from training.visualize import panel_row

# Every gate open from the first steps, no dropout and no augmentation: deterministic passes.
OPEN_GATES = {
    "confeti.contrast_start": -1, "confeti.cam_mix_start": -1, "confeti.proto_warmup_iters": 0,
    "model.dropout": 0.0, "uda.color_jitter_prob": 0.0, "uda.blur_prob": 0.0,
}  # fmt: skip
STAGE1_TERMS = {
    "source_ce", "source_cam", "source_contrast", "source_proto_reg", "consistency", "style_gan",
    "style_nce", "style_d", "mix_ce", "mix_cam", "mix_contrast", "mix_proto_reg",
    "target_contrast", "target_proto_reg",
}  # fmt: skip


def setup(stage: int, **sets):
    sets = {**OPEN_GATES, "confeti.stage": stage, **sets}
    cfg = resolve_config("demo-confeti", [f"{k}={v}" for k, v in sets.items()])
    torch.manual_seed(0)
    method = create_method("confeti", cfg)
    student = create_segmenter(cfg.model)
    nets = Networks(SegmenterForward(student), create_teacher(student))
    labels = torch.randint(0, 4, (2, 32, 32))
    labels[:, :, :16] = 13
    batch = StepBatch(torch.randn(2, 3, 32, 32), labels, torch.randn(2, 3, 32, 32))
    return cfg, method, student, nets, batch


def grads(module: torch.nn.Module) -> dict[str, bool]:
    return {n: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for n, p in module.named_parameters()}  # fmt: skip


def test_stage1_terms_and_where_their_gradients_go():
    cfg, method, student, nets, batch = setup(1)
    out = method.step(nets, batch, iteration=1)
    assert set(out.losses) == STAGE1_TERMS
    assert all(torch.isfinite(v) for v in out.losses.values())
    # the segmenter's supervised and mixed losses never reach the translator (detached s2t)
    (out.losses["source_ce"] + out.losses["mix_ce"] + out.losses["mix_contrast"]).backward(
        retain_graph=True
    )
    assert not any(grads(method.style).values())
    assert any(grads(student).values())
    clear = (student, method.style, method.heads)
    for module in clear:
        module.zero_grad(set_to_none=True)
    # the discriminator term trains D only; the generator terms G and F, not D
    out.losses["style_d"].backward(retain_graph=True)
    assert any(grads(method.style.discriminator).values())
    assert not any(grads(method.style.generator).values()) and not any(grads(student).values())
    for module in clear:
        module.zero_grad(set_to_none=True)
    (out.losses["style_gan"] + out.losses["style_nce"]).backward(retain_graph=True)
    assert any(grads(method.style.generator).values()) and any(
        grads(method.style.patch_mlp).values()
    )
    assert not any(grads(method.style.discriminator).values())
    for module in clear:
        module.zero_grad(set_to_none=True)
    # consistency: the generator and reg_proj only, never the student or the projection head
    out.losses["consistency"].backward()
    assert any(grads(method.style.generator).values())
    assert all(grads(method.heads.reg_proj).values())
    assert not any(grads(student).values())
    assert not any(grads(method.heads.projection_head).values())
    assert sorted(method.extra_optimizers()) == ["style"]
    assert set(method.optimizer_modules()) == {"confeti_heads"}  # the translator has its own Adam


def test_stylised_source_replaces_the_source_in_the_supervised_loss_and_classmix():
    cfg, method, student, nets, batch = setup(1)
    out = method.step(nets, batch, iteration=0)
    stylised = out.images["stylised_source_image"]
    panels = panel_row(batch, out, label_space_for_source("gta"), IMAGENET_MEAN, IMAGENET_STD)
    assert "stylised_source_image" in panels  # shown in TensorBoard next to the source crop
    assert stylised.shape == batch.source_images.shape
    assert not torch.allclose(stylised, batch.source_images)
    with torch.no_grad():
        logits = nets.student(stylised)[0]
    torch.testing.assert_close(out.images["source_logits"].detach(), logits)
    # every pixel of the mixed image is a stylised-source pixel or a target pixel, and both occur
    mixed = out.images["mixed_image"]
    from_source = (mixed == stylised).all(dim=1)
    from_target = (mixed == batch.target_images).all(dim=1)
    assert (from_source | from_target).all()
    assert from_source.any() and from_target.any()


def test_stage2_freezes_the_translator_and_drops_its_terms():
    cfg, method, student, nets, batch = setup(2)
    out = method.step(nets, batch, iteration=1)
    assert set(out.losses) == {"source_ce", "source_cam", "source_contrast", "source_proto_reg",
                               "mix_ce", "mix_cam", "mix_contrast", "mix_proto_reg"}  # fmt: skip
    assert method.style.discriminator is None and method.extra_optimizers() == {}
    assert not any(p.requires_grad for p in method.style.parameters())
    torch.stack(list(out.losses.values())).sum().backward()
    assert any(grads(student).values())


def test_prototypes_follow_the_warmup_then_cam_weights():
    cfg, method, student, nets, batch = setup(1, **{"confeti.proto_warmup_iters": 5})
    method.step(nets, batch, iteration=0)
    first = method.prototypes.prototypes.clone()
    assert first[13].norm() == pytest.approx(1.0, abs=1e-5)  # the pasted class is seen at once
    assert method.prototypes.counts.sum() > 0


def test_method_needs_a_stage_and_a_single_scale_model():
    cfg = resolve_config("demo-confeti")
    with pytest.raises(ValueError, match="confeti.stage=0 runs no single stage"):
        create_method("confeti", cfg)
    cfg = resolve_config("demo-confeti", ["confeti.stage=1", "model.hrda.enabled=true"])
    with pytest.raises(ValueError, match="model.hrda.enabled=false"):
        create_method("confeti", cfg)
    cfg = resolve_config("demo-confeti", ["confeti.stage=1", "uda.mic=true"])
    with pytest.raises(ValueError, match="set uda.mic=false"):
        create_method("confeti", cfg)


def test_confeti_config_overrides_round_trip_and_presets():
    cfg = resolve_config("confeti-dlv2-r101", [
        "confeti.reg_mode=uniform", "confeti.style.nce_layers=0,4,8", "confeti.generator=g.pth",
        "confeti.stage1_crop_size=256x256",
    ])  # fmt: skip
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.confeti.style.nce_layers == (0, 4, 8) and cfg.confeti.stage1_crop_size == (256, 256)
    with pytest.raises(ConfigError, match="confeti.style has"):
        resolve_config("demo-confeti", ["confeti.style.bogus=1"])
    two, one = resolve_config("confeti-dlv2-r101"), resolve_config("confeti-dlv2-r101-1stage")
    assert (two.confeti.stages, two.train.iters, two.confeti.stage1_iters) == (2, 80000, 80000)
    assert (two.confeti.stage1_crop_size, two.data.crop_size) == ((512, 512), (640, 640))
    assert (one.confeti.stages, one.train.iters, one.data.crop_size) == (1, 40000, (640, 640))
    for preset in (two, one):
        assert (preset.model.backbone, preset.model.head) == ("resnet101", "deeplabv2")
        assert preset.train.method == "confeti" and preset.confeti.proto_dim == 512
    # old checkpoints without a 'confeti' section still parse, with the defaults
    data = cfg.to_dict()
    del data["confeti"]
    assert config_from_dict(data).confeti == ConfetiConfig()


def test_stage_configs_of_both_schedules():
    from training.confeti.schedule import stage_config

    two = resolve_config("confeti-dlv2-r101")
    first, second = stage_config(two, 1), stage_config(two, 2, generator="run/stage1/latest.pt")
    assert (first.confeti.stage, first.train.iters, first.data.crop_size) == (1, 80000, (512, 512))
    assert (second.confeti.stage, second.train.iters, second.data.crop_size) == (
        2,
        80000,
        (640, 640),
    )
    assert second.confeti.generator == "run/stage1/latest.pt" and first.confeti.generator is None
    assert two.confeti.stage == 0  # the schedule's config is not modified
    one = stage_config(resolve_config("confeti-dlv2-r101-1stage"), 1)
    assert (one.confeti.stage, one.train.iters, one.data.crop_size) == (1, 40000, (640, 640))
