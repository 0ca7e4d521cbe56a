"""HRDA inference model: fusion and box bookkeeping on hand-worked tensors, shapes at tiny sizes,
key layout against the released checkpoints, and ``predict`` against a plain reference loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cluda_deploy.config import HRDAConfig, ModelConfig, get_preset
from cluda_deploy.models import HRDASegmenter, create_segmenter
from cluda_deploy.models.hrda import (
    box_mask,
    crop,
    fuse_scales,
    insert_detail,
    random_detail_box,
    scale_box,
    stitch_windows,
)
from tests.real_fixtures import checkpoint_manifest

# MiT-tiny with every HRDA size divided by 16: context window 64 -> 32 px, detail crops 32 / 16.
TINY_HRDA = HRDAConfig(
    enabled=True, detail_crop_size=(32, 32), detail_stride=(16, 16), attention_embed_dim=16
)
TINY = ModelConfig(
    backbone="mit_tiny", num_classes=5, embed_dim=32, fusion_channels=24, drop_path_rate=0.0,
    hrda=TINY_HRDA,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> HRDASegmenter:
    torch.manual_seed(0)
    model = create_segmenter(TINY).eval()
    # Non-trivial BatchNorm statistics, so that eval-mode normalisation is exercised.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


# --------------------------------------------------------------------------- hand-worked


def test_fuse_scales_hand_worked():
    # context 1x2 -> detail grid 2x4; bilinear x2 of [v0, v1] is [v0, .75v0+.25v1, .25v0+.75v1, v1]
    context = torch.tensor([[[[0.0, 4.0]]]])
    attention = torch.tensor([[[[0.0, 1.0]]]])
    detail = torch.full((1, 1, 2, 4), 2.0)
    # hrda: up(a) * d + up((1 - a) * c) = [0, .25, .75, 1] * 2 + up([0, 0])
    expected_hrda = torch.tensor([0.0, 0.5, 1.5, 2.0]).expand(1, 1, 2, 4)
    torch.testing.assert_close(fuse_scales(context, detail, attention, "hrda"), expected_hrda)
    # cluda: up(a) * d + (1 - up(a)) * up(c) = [0, .5, 1.5, 2] + [1, .75, .25, 0] * [0, 1, 3, 4]
    expected_cluda = torch.tensor([0.0, 1.25, 2.25, 2.0]).expand(1, 1, 2, 4)
    torch.testing.assert_close(fuse_scales(context, detail, attention, "cluda"), expected_cluda)


def test_fuse_scales_constant_attention_and_per_class_broadcast():
    context = torch.tensor([[[[4.0]], [[-2.0]]]])  # (1, 2, 1, 1)
    detail = torch.tensor([[[[0.0, 4.0], [8.0, -4.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    attention = torch.tensor([[[[0.25]], [[1.0]]]])  # class-wise: class 1 is detail only
    fused = fuse_scales(context, detail, attention)
    torch.testing.assert_close(fused[0, 0], torch.tensor([[3.0, 4.0], [5.0, 2.0]]))  # .25 d + 3
    torch.testing.assert_close(fused[0, 1], detail[0, 1])
    one_map = fuse_scales(context, detail, torch.zeros(1, 1, 1, 1))  # a = 0: context everywhere
    torch.testing.assert_close(one_map, context.expand(1, 2, 2, 2))
    with pytest.raises(ValueError, match="unknown HRDA fusion 'mean'; known: hrda, cluda"):
        fuse_scales(context, detail, attention, "mean")


def test_boxes_scale_mask_insert_and_crop():
    box = (8, 24, 16, 48)  # (y1, y2, x1, x2) in pixels of a 32x64 image
    assert scale_box(box, 4) == (2, 6, 4, 12)
    assert scale_box(box, 8) == (1, 3, 2, 6)
    assert scale_box((6, 10, 0, 3), 4) == (1, 2, 0, 0)  # int() truncation, as the reference
    mask = box_mask(torch.zeros(2, 5, 4, 8), scale_box(box, 8))
    assert mask.shape == (2, 1, 4, 8) and mask.sum() == 2 * 2 * 4
    assert mask[0, 0, 1:3, 2:6].eq(1).all()
    detail = torch.arange(32.0).reshape(1, 2, 4, 4)
    canvas = insert_detail(detail, (8, 16), (2, 6, 4, 8))
    assert torch.equal(canvas[:, :, 2:6, 4:8], detail) and canvas.sum() == detail.sum()
    image = torch.arange(32 * 64.0).reshape(1, 1, 32, 64)
    assert torch.equal(crop(image, box), image[:, :, 8:24, 16:48])
    assert torch.equal(crop(image[0, 0], box), image[0, 0, 8:24, 16:48])


def test_random_detail_box_offsets_follow_the_reference_rule():
    rng = np.random.default_rng(0)
    boxes = [random_detail_box(48, 40, (24, 16), 8, rng) for _ in range(300)]
    # margins 24 and 24: offsets randint(0, (24 + 1) // 8) * 8, so {0, 8, 16} (never 24).
    assert {b[0] for b in boxes} == {0, 8, 16} and {b[2] for b in boxes} == {0, 8, 16}
    assert all(b[1] - b[0] == 24 and b[3] - b[2] == 16 for b in boxes)
    assert random_detail_box(24, 16, (24, 16), 8, rng) == (0, 24, 0, 16)
    again = [random_detail_box(48, 40, (24, 16), 8, np.random.default_rng(0)) for _ in range(3)]
    assert again == [boxes[0]] * 3
    # HRDA's numbers: 1024 crop, 512 detail, multiples of 8 -> offsets 0..504
    big = {random_detail_box(1024, 1024, (512, 512), 8, rng)[0] for _ in range(4000)}
    assert min(big) == 0 and max(big) == 504 and all(o % 8 == 0 for o in big)


def test_stitch_windows_averages_overlaps_hand_worked():
    # Two 1x1-channel windows of 2x2 logits on a 2x3 grid, overlapping in the middle column.
    logits = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[10.0, 20.0], [30.0, 40.0]]]])
    out = stitch_windows(logits, [(0, 2, 0, 2), (0, 2, 1, 3)], batch=1)
    expected = torch.tensor([[1.0, 6.0, 20.0], [3.0, 17.0, 40.0]])
    torch.testing.assert_close(out[0, 0], expected)
    # batch 2: window i holds rows [2i, 2i + 2)
    stacked = torch.cat([logits[:1], logits[:1] + 100, logits[1:], logits[1:] + 100])
    out2 = stitch_windows(stacked, [(0, 2, 0, 2), (0, 2, 1, 3)], batch=2)
    torch.testing.assert_close(out2[0, 0], expected)
    torch.testing.assert_close(out2[1, 0], expected + 100)


# --------------------------------------------------------------------------- the model


def test_key_layout_matches_the_released_hrda_and_cluda_heads():
    for preset, manifest in (
        ("hrda-mitb5", "hrda_mitb5.json"),
        ("cluda-hrda-mitb5", "cluda_hrda_mitb5.json"),
    ):
        with torch.device("meta"):
            model = create_segmenter(get_preset(preset).model)
        ours = {
            k: list(v.shape) for k, v in model.state_dict().items() if k.startswith("decode_head.")
        }
        keys = checkpoint_manifest(manifest)["keys"]
        theirs = {k[6:]: v for k, v in keys.items()
                  if k.startswith("model.decode_head.") and ".feat_weighter." not in k}  # fmt: skip
        assert list(ours) == list(theirs) and ours == theirs


def test_shapes_at_tiny_sizes(tiny):
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        context_logits, context_fused, attention = tiny.context_pass(images)
        detail = tiny.detail_logits(images)
        fused, features = tiny.forward_with_features(images)
    assert context_logits.shape == (2, 5, 8, 12) and attention.shape == (2, 5, 8, 12)
    assert context_fused.shape == (2, 24, 8, 12)
    assert attention.min() >= 0 and attention.max() <= 1
    assert detail.shape == (2, 5, 16, 24) and fused.shape == (2, 5, 16, 24)
    assert features.shape == (2, 24, 16, 24)
    assert tiny.output_stride == 4 and tiny.num_classes == 5
    # windows not a multiple of 8 px, where the reference's grids disagree: still defined; the
    # detail grid ends with the last detail crop: 70 // 4, 90 // 4
    with torch.no_grad():
        assert tiny(torch.randn(1, 3, 70, 90)).shape == (1, 5, 17, 22)
        big_crops = dataclasses.replace(
            TINY_HRDA, detail_crop_size=(64, 64), detail_stride=(32, 32)
        )
        lower = HRDASegmenter(tiny.backbone, tiny.decode_head, big_crops)
        assert lower(torch.randn(1, 3, 62, 100)).shape == (1, 5, 16, 25)  # 62 < crop: ceil
        assert tiny.predict(torch.randn(1, 3, 70, 90), mode="whole").shape == (1, 5, 70, 90)


def test_attention_one_map_for_all_classes():
    cfg = dataclasses.replace(TINY, hrda=dataclasses.replace(TINY_HRDA, attention_classwise=False))
    model = create_segmenter(cfg).eval()
    assert model.decode_head.scale_attention.conv_seg.weight.shape == (1, 16, 1, 1)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5, 16, 16)


def reference_window(model: HRDASegmenter, window: torch.Tensor) -> torch.Tensor:
    """HRDA encode_decode for one window, spelled out: context at 0.5, every detail crop through
    the network on its own, stride-4 canvas averaged, fusion, resize to the window."""
    head, att_head, backbone = (
        model.decode_head.head,
        model.decode_head.scale_attention,
        model.backbone,
    )
    context = F.interpolate(window, scale_factor=0.5, mode="bilinear", align_corners=False)
    feats = backbone(context)
    lr, att = head(feats), torch.sigmoid(att_head(feats))
    _, _, h, w = window.shape
    (ch, cw), (sh, sw) = TINY_HRDA.detail_crop_size, TINY_HRDA.detail_stride
    hr = window.new_zeros(1, lr.shape[1], h // 4, w // 4)
    count = window.new_zeros(1, 1, h // 4, w // 4)
    for y in range(0, max(h - ch, 0) + sh, sh):
        for x in range(0, max(w - cw, 0) + sw, sw):
            y2, x2 = min(y + ch, h), min(x + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            hr[:, :, y1 // 4 : y2 // 4, x1 // 4 : x2 // 4] += head(
                backbone(window[:, :, y1:y2, x1:x2])
            )
            count[:, :, y1 // 4 : y2 // 4, x1 // 4 : x2 // 4] += 1
    hr = hr / count
    up = dict(scale_factor=2, mode="bilinear", align_corners=False)
    fused = F.interpolate(att, **up) * hr + F.interpolate((1 - att) * lr, **up)
    return F.interpolate(fused, size=(h, w), mode="bilinear", align_corners=False)


def test_predict_slide_equals_a_plain_reference_loop(tiny):
    """The test protocol: outer windows (here 64 every 32 instead of 1024 every 512), each one
    HRDA-segmented, logits averaged where windows overlap."""
    images = torch.randn(1, 3, 96, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = tiny.predict(
            images, mode="slide", crop_size=(64, 64), stride=(32, 32), window_batch=4
        )
        total = torch.zeros(1, 5, 96, 160)
        count = torch.zeros(1, 1, 96, 160)
        for y in range(0, 96 - 64 + 32, 32):
            for x in range(0, 160 - 64 + 32, 32):
                total[:, :, y : y + 64, x : x + 64] += reference_window(
                    tiny, images[:, :, y : y + 64, x : x + 64]
                )
                count[:, :, y : y + 64, x : x + 64] += 1
    torch.testing.assert_close(ours, total / count, rtol=1e-4, atol=1e-5)


def test_whole_detail_pass_without_hr_slide(tiny):
    whole = HRDASegmenter(
        tiny.backbone, tiny.decode_head, dataclasses.replace(TINY_HRDA, detail_slide=False)
    ).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        detail = whole.detail_logits(images)
        torch.testing.assert_close(detail, tiny.decode_head.head(tiny.backbone(images)))
        # one detail crop covering the window: the slide path gives the same logits
        single = HRDASegmenter(tiny.backbone, tiny.decode_head,
                               dataclasses.replace(TINY_HRDA, detail_crop_size=(64, 64), detail_stride=(64, 64)))  # fmt: skip
        torch.testing.assert_close(single.detail_logits(images), detail)


def test_configuration_errors_name_the_fix(tiny):
    with pytest.raises(ValueError, match="HRDA .* head 'daformer', not 'segformer'"):
        create_segmenter(dataclasses.replace(TINY, head="segformer"))
    with pytest.raises(ValueError, match="unknown model.hrda.fusion 'max'"):
        HRDASegmenter(tiny.backbone, tiny.decode_head, dataclasses.replace(TINY_HRDA, fusion="max"))
    with pytest.raises(ValueError, match=r"context view are \(16, 16\) px .* at least 29x29"):
        tiny(torch.randn(1, 3, 32, 32))


def test_gradients_reach_both_heads_and_the_backbone():
    model = create_segmenter(TINY).train()
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for name in ("decode_head.head.conv_seg.weight", "decode_head.scale_attention.conv_seg.weight",
                 "backbone.segformer.stages.0.patch_embeddings.proj.weight"):  # fmt: skip
        assert model.get_parameter(name).grad.abs().sum() > 0, name
