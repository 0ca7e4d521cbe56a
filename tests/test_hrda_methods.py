"""HRDA multi-resolution steps of ``dacs`` and ``cluda`` (and ``--mic``) on a tiny model: the loss
terms, where the gradients go, the learned weighting head, the entropy crop switch, feature
distance on the context view and MIC's masked pass."""

from __future__ import annotations

import pytest
import torch

from cluda_deploy.config import resolve_config
from cluda_deploy.models import HRDASegmenter, create_segmenter
from training.contrastive_weighted import contrast_grid, multires_contrastive_loss
from training.ema import create_teacher
from training.feature_distance import frozen_encoder
from training.hrda import HRDATrainForward, hrda_seg_loss, max_entropy_boxes
from training.methods import Networks, StepBatch, create_method
from training.methods.cluda import FEAT_WEIGHTER
from training.methods.dacs import DACS

SIZE = 64  # crop; the demo-hrda sizes halved: 32 px context view, 32 px detail crops


def setup(method: str, **sets):
    sets = {
        "model.hrda.detail_crop_size": "32x32", "model.hrda.detail_stride": "16x16",
        "uda.mic_patch": 8, "uda.pseudo_ignore_bottom": 0, **sets,
    }  # fmt: skip
    cfg = resolve_config(
        "demo-hrda", [f"train.method={method}", *(f"{k}={v}" for k, v in sets.items())]
    )
    torch.manual_seed(0)
    uda = create_method(method, cfg)
    student = create_segmenter(cfg.model)
    imnet = frozen_encoder(student.backbone) if uda.uses_imnet else None
    nets = Networks(uda.student_forward(student), create_teacher(student), imnet)
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 19, (2, SIZE, SIZE), generator=gen)
    labels[:, :32, :32] = 13  # a car block and void rows: ClassMix and the contrast see both
    labels[0, -4:] = 255
    batch = StepBatch(torch.randn(2, 3, SIZE, SIZE, generator=gen), labels,
                      torch.randn(2, 3, SIZE, SIZE, generator=gen))  # fmt: skip
    return cfg, uda, student, nets, batch


@pytest.mark.parametrize(
    ("method", "mic", "terms"),
    [
        ("dacs", False, {"source_ce", "source_detail_ce", "mix_ce", "mix_detail_ce"}),
        ("cluda", True, {"source_ce", "source_detail_ce", "source_contrast", "mix_ce",
                         "mix_detail_ce", "mix_contrast", "mic_ce", "mic_detail_ce"}),
    ],
)  # fmt: skip
def test_hrda_step_terms_and_gradients(method, mic, terms):
    cfg, uda, student, nets, batch = setup(method, **{"uda.mic": mic})
    assert isinstance(student, HRDASegmenter) and isinstance(nets.student, HRDATrainForward)
    teacher_before = {k: v.clone() for k, v in nets.teacher.state_dict().items()}
    out = uda.step(nets, batch, iteration=0)
    assert set(out.losses) == terms
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.losses.values())
    sum(out.losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())  # attention head included
    assert all(p.grad is None for p in nets.teacher.parameters())
    for key, value in nets.teacher.state_dict().items():
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(value, teacher_before[key]), key
    # the HR pseudo-labels: one label per crop pixel, from the teacher's fused logits
    assert out.images["pseudo_label"].shape == (2, SIZE, SIZE)
    assert out.images["mixed_logits"].shape == (2, 19, SIZE // 4, SIZE // 4)
    if method == "cluda":
        weighter = uda.trainable_modules()[FEAT_WEIGHTER]
        assert nets.student.feat_weighter is weighter
        assert all(p.grad is not None for p in weighter.parameters())
        assert "mic_masked_image" in out.images
        assert not any(k.startswith("feat_weighter") for k in student.state_dict())


def test_detail_loss_weight_and_the_hrda_split():
    """The step's ``source_ce`` / ``source_detail_ce`` are HRDA's 0.9 / 0.1 terms of the pass."""
    cfg, uda, _, nets, batch = setup("dacs", **{"uda.hrda_detail_loss_weight": 0.25})
    torch.manual_seed(3)
    views = nets.student(batch.source_images)
    fused, detail = hrda_seg_loss(views, batch.source_labels, None, 0.25)
    torch.manual_seed(3)
    out = uda.forward_student(nets.student, batch.source_images)
    terms = uda.seg_losses(out, batch.source_labels)
    assert out.views.boxes == views.boxes
    torch.testing.assert_close(terms["ce"], fused)
    torch.testing.assert_close(terms["detail_ce"], detail)
    with pytest.raises(ValueError, match=r"hrda_detail_loss_weight must be in \[0, 1\]"):
        DACS(resolve_config("demo-hrda", ["uda.hrda_detail_loss_weight=1.5"]))


def test_weighted_contrast_is_the_multires_loss_on_the_pass():
    cfg, uda, _, nets, batch = setup("cluda")
    out = uda.forward_student(nets.student, batch.source_images)
    got = uda.contrast(out, batch.source_labels, None)
    grid = contrast_grid(out.views, batch.source_labels, None, cfg.uda.cl_grid)
    want = multires_contrastive_loss(grid, temperature=1.0, scale=0.5, chunk_size=512)
    torch.testing.assert_close(got, want)
    assert out.views.feature_weight.shape == (2, 1, 8, 8)  # on the context grid


def test_no_weighting_head_without_a_contrast():
    _, uda, _, nets, _ = setup("cluda", **{"uda.cl_weight": 0})
    assert uda.trainable_modules() == {} and nets.student.feat_weighter is None
    single = create_method("cluda", resolve_config("demo", ["train.method=cluda"]))
    assert single.trainable_modules() == {}


def test_entropy_crop_only_for_the_mixed_pass_after_the_start(monkeypatch):
    cfg, uda, _, nets, batch = setup("dacs", **{"uda.hrda_entropy_crop_start": 5})
    calls = []
    original = DACS.forward_student

    def spy(self, student, images, entropy_crop=False):
        out = original(self, student, images, entropy_crop)
        calls.append((entropy_crop, out))
        return out

    monkeypatch.setattr(DACS, "forward_student", spy)
    uda.step(nets, batch, iteration=5)
    assert [flag for flag, _ in calls] == [False, False]
    calls.clear()
    uda.step(nets, batch, iteration=6)  # the release: local_iter > 12000
    assert [flag for flag, _ in calls] == [False, True]
    mixed = calls[1][1].views
    want = max_entropy_boxes(mixed.context_logits, (SIZE, SIZE), (32, 32), (16, 16), 8)
    assert mixed.boxes == want
    never = setup("dacs", **{"uda.hrda_entropy_crop_start": None})[1]
    assert not never.entropy_crop(10**6)


def test_feature_distance_on_the_context_view():
    cfg, uda, student, nets, batch = setup("dacs", **{"uda.fd_lambda": 0.005})
    batch.source_labels[1] = 13  # one 64x64 cell of the context view's 1x1 map: all car
    out = uda.step(nets, batch, iteration=0)
    # at step 0 the student encoder equals its frozen copy (no drop path in the demo model)
    assert out.losses["feature_distance"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for p in student.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = uda.forward_student(nets.student, batch.source_images)
    assert out.encoder_map.shape[-1] == SIZE // 2 // 32  # the context view's last map
    fd = uda.feature_distance(nets.imnet_backbone, batch, out.encoder_map)
    assert fd.item() > 0


def test_mic_weight_scales_the_masked_terms_only(monkeypatch):
    def confident(self, teacher, target_images):  # every target pixel weighted 1
        labels = torch.randint(0, 19, (2, SIZE, SIZE), generator=torch.Generator().manual_seed(5))
        return labels, torch.ones(2, SIZE, SIZE), torch.tensor(1.0)

    monkeypatch.setattr(DACS, "pseudo_label", confident)
    results = []
    for weight in (1.0, 2.5):
        _, uda, _, nets, batch = setup("dacs", **{"uda.mic": True, "uda.mic_weight": weight})
        torch.manual_seed(11)
        results.append(uda.step(nets, batch, iteration=0).losses)
    one, other = results
    assert one["mic_ce"].item() > 0 and one["mic_detail_ce"].item() > 0
    for key in ("mic_ce", "mic_detail_ce"):
        torch.testing.assert_close(other[key], 2.5 * one[key])
    torch.testing.assert_close(other["mix_ce"], one["mix_ce"])


def test_mic_on_a_single_scale_model():
    cfg = resolve_config("demo", ["train.method=cluda", "uda.mic=true", "uda.mic_patch=16"])
    torch.manual_seed(0)
    uda = create_method("cluda", cfg)
    student = create_segmenter(cfg.model)
    nets = Networks(uda.student_forward(student), create_teacher(student))
    batch = StepBatch(torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64)),
                      torch.randn(2, 3, 64, 64))  # fmt: skip
    out = uda.step(nets, batch, iteration=0)
    assert {"mic_ce", "source_contrast", "mix_contrast"} <= set(out.losses)
    assert "mic_detail_ce" not in out.losses and uda.trainable_modules() == {}
    masked = out.images["mic_masked_image"]
    blanked = (masked == 0).all(dim=1)  # whole 16 px blocks at the mean colour
    assert 0 < blanked.float().mean() < 1


def test_source_only_on_hrda_trains_the_multiresolution_loss():
    cfg = resolve_config("demo-hrda", ["train.method=source-only"])
    method = create_method("source-only", cfg)
    torch.manual_seed(0)
    student = create_segmenter(cfg.model)
    forward = method.student_forward(student)
    assert isinstance(forward, HRDATrainForward) and not method.uses_teacher
    images, labels = torch.randn(2, 3, 64, 64), torch.randint(0, 19, (2, 64, 64))
    out = method.step(Networks(forward), StepBatch(images, labels, None), iteration=0)
    assert set(out.losses) == {"source_ce", "source_detail_ce"}
    sum(out.losses.values()).backward()
    # the scale attention only gets a gradient through the fused prediction
    attention_grads = [p.grad for n, p in student.named_parameters() if "scale_attention" in n]
    assert attention_grads and all(g is not None and g.abs().sum() > 0 for g in attention_grads)
