"""HRDA multi-resolution training: box bookkeeping, attention fusion and the 0.9/0.1 loss on
hand-worked tensors, the training forward against an explicit reference, high-resolution
pseudo-label assembly, the entropy-guided detail crop, and feature distance on the context view."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cluda_deploy.models import create_segmenter
from tests.test_hrda_model import TINY, TINY_HRDA, reference_window
from training.hrda import (
    HRDATrainForward,
    HRDAViews,
    check_crop_size,
    context_feature_distance,
    context_view,
    crop_boxes,
    fuse_detail_crop,
    hrda_seg_loss,
    insert_details,
    max_entropy_boxes,
    normalized_entropy,
    sample_detail_boxes,
)
from training.pseudo_label import pseudo_labels


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    return create_segmenter(TINY)


def images(batch=2, size=64, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- boxes


def test_sample_detail_boxes_one_box_per_batch_on_multiples_of_8():
    boxes = sample_detail_boxes(64, 96, TINY_HRDA, 3, torch.Generator().manual_seed(0))
    assert len(boxes) == 3 and boxes[0] == boxes[1] == boxes[2]
    draws = [sample_detail_boxes(64, 96, TINY_HRDA, 1, torch.Generator().manual_seed(s))[0]
             for s in range(200)]  # fmt: skip
    # margins 32 and 64: offsets randint(0, (margin + 1) // 8) * 8
    assert {b[0] for b in draws} == {0, 8, 16, 24} and {b[2] for b in draws} == set(range(0, 64, 8))
    assert all(b[1] - b[0] == 32 and b[3] - b[2] == 32 for b in draws)
    again = sample_detail_boxes(64, 96, TINY_HRDA, 1, torch.Generator().manual_seed(7))
    assert again == [draws[7]]  # a resumed run draws the same box from the same RNG state


def test_per_sample_crop_insert_and_mask():
    x = torch.arange(2 * 8 * 8.0).view(2, 1, 8, 8)
    boxes = [(0, 4, 4, 8), (2, 6, 0, 4)]
    crops = crop_boxes(x, boxes)
    assert torch.equal(crops[0, 0], x[0, 0, 0:4, 4:8]) and torch.equal(
        crops[1, 0], x[1, 0, 2:6, 0:4]
    )
    labels = x[:, 0].long()
    assert torch.equal(crop_boxes(labels, boxes)[1], labels[1, 2:6, 0:4])
    canvas = insert_details(crops, (8, 8), boxes)
    inside = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    inside[0, :, 0:4, 4:8] = inside[1, :, 2:6, 0:4] = True
    assert torch.equal(canvas, torch.where(inside, x, 0))
    with pytest.raises(ValueError, match="1 detail boxes for a batch of 2"):
        crop_boxes(x, boxes[:1])


def test_check_crop_size_names_the_fix():
    check_crop_size(64, 64, TINY_HRDA)
    with pytest.raises(
        ValueError, match=r"60x64 px .* multiples of model.hrda.crop_coord_divisible=8"
    ):
        check_crop_size(60, 64, TINY_HRDA)
    with pytest.raises(ValueError, match="hold the detail crop 32x32"):
        check_crop_size(24, 64, TINY_HRDA)


# --------------------------------------------------------------------------- fusion


def test_fuse_detail_crop_hand_worked():
    # A 16 px crop: context view 8 px -> 2x2 logits (stride 4 of the 0.5x view = 8 crop px per
    # cell); detail box (0, 8, 8, 16) -> context cell (0, 1) and detail-grid cells [0:2, 2:4].
    context = torch.full((1, 1, 2, 2), 4.0)
    detail = torch.full((1, 1, 2, 2), 10.0)
    attention = torch.ones(1, 1, 2, 2)
    fused, masked = fuse_detail_crop(context, detail, attention, [(0, 8, 8, 16)], 4, 0.5, "hrda")
    assert masked[0, 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]  # attention only inside the box
    # up(a) (bilinear x2) = rows [0 .25 .75 1], [0 .1875 .5625 .75], [0 .0625 .1875 .25], 0;
    # up((1 - a) c) = rows [4 3 1 0], [4 3.25 1.75 1], [4 3.75 3.25 3], 4; detail 10 in [0:2, 2:4]
    expected = torch.tensor([
        [4.0, 3.0, 8.5, 10.0],
        [4.0, 3.25, 7.375, 8.5],
        [4.0, 3.75, 3.25, 3.0],
        [4.0, 4.0, 4.0, 4.0],
    ])  # fmt: skip
    torch.testing.assert_close(fused[0, 0], expected)
    # a = 0: pure context everywhere, whatever the detail says
    only_context, _ = fuse_detail_crop(context, detail, attention * 0, [(0, 8, 8, 16)], 4, 0.5)
    torch.testing.assert_close(only_context, torch.full((1, 1, 4, 4), 4.0))


def manual_forward(model, x, box):
    """HRDAHead.forward with a crop box, spelled out with plain tensor ops."""
    head, backbone = model.decode_head.head, model.backbone
    feats = backbone(F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False))
    lr = head(feats)
    att = torch.sigmoid(model.decode_head.scale_attention(feats))
    y1, y2, x1, x2 = box
    mask = torch.zeros_like(att[:, :1])
    mask[:, :, y1 // 8 : y2 // 8, x1 // 8 : x2 // 8] = 1
    hr = head(backbone(x[:, :, y1:y2, x1:x2]))
    canvas = torch.zeros(x.shape[0], hr.shape[1], x.shape[2] // 4, x.shape[3] // 4)
    canvas[:, :, y1 // 4 : y2 // 4, x1 // 4 : x2 // 4] = hr
    up = dict(scale_factor=2, mode="bilinear", align_corners=False)
    return F.interpolate(att * mask, **up) * canvas + F.interpolate((1 - att * mask) * lr, **up), hr


def test_train_forward_equals_the_spelled_out_reference(student):
    model = HRDATrainForward(student).eval()  # eval: no dropout draw, per-sample BatchNorm
    x = images(2, 64)
    with torch.no_grad():
        views = model(x, boxes=[(8, 40, 24, 56)] * 2)
        expected, hr = manual_forward(student, x, (8, 40, 24, 56))
        # per-sample boxes: each sample as if it were alone with its box
        mixed = model(x, boxes=[(8, 40, 24, 56), (32, 64, 0, 32)])
        second, _ = manual_forward(student, x[1:], (32, 64, 0, 32))
    torch.testing.assert_close(views.fused_logits, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(views.detail_logits, hr, rtol=1e-4, atol=1e-5)
    assert views.fused_logits.shape == (2, 5, 16, 16) and views.context_logits.shape == (2, 5, 8, 8)
    assert views.context_fused.shape == (2, 24, 8, 8) and views.detail_fused.shape == (2, 24, 8, 8)
    assert views.context_features[-1].shape == (2, 128, 1, 1) and views.feature_weight is None
    assert views.attention[:, :, :1].abs().sum() == 0  # context rows 0 (crop px 0-8) are outside
    torch.testing.assert_close(mixed.fused_logits[:1], expected[:1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed.fused_logits[1:], second, rtol=1e-4, atol=1e-5)


def test_random_and_entropy_boxes_and_gradients(student):
    model = HRDATrainForward(student).train()
    torch.manual_seed(3)
    views = model(images(2, 64))
    assert views.boxes[0] == views.boxes[1] and all(c % 8 == 0 for c in views.boxes[0])
    fused_term, detail_term = hrda_seg_loss(views, torch.randint(0, 5, (2, 64, 64)))
    (fused_term + detail_term).backward()
    for name in ("decode_head.head.conv_seg.weight", "decode_head.scale_attention.conv_seg.weight",
                 "backbone.segformer.stages.0.patch_embeddings.proj.weight"):  # fmt: skip
        assert student.get_parameter(name).grad.abs().sum() > 0, name
    student.zero_grad(set_to_none=True)
    with torch.no_grad():
        chosen = model(images(2, 64, seed=1), entropy_crop=True)
    expected = max_entropy_boxes(chosen.context_logits, (64, 64), (32, 32), (16, 16), 8)
    assert chosen.boxes == expected


# --------------------------------------------------------------------------- losses


def test_hrda_seg_loss_is_point_nine_fused_plus_point_one_detail_hand_worked():
    # Zero logits: every pixel's cross-entropy is log K, so each term is log K * mean(weight).
    k = 5
    views = HRDAViews(
        fused_logits=torch.zeros(2, k, 4, 4), context_logits=torch.zeros(2, k, 2, 2),
        detail_logits=torch.zeros(2, k, 2, 2), context_fused=torch.zeros(2, 3, 2, 2),
        detail_fused=torch.zeros(2, 3, 2, 2), attention=torch.zeros(2, k, 2, 2),
        context_features=[], boxes=[(0, 8, 8, 16), (8, 16, 0, 8)],
    )  # fmt: skip
    labels = torch.randint(0, k, (2, 16, 16))
    weight = torch.zeros(2, 16, 16)
    weight[0, 0:8, 8:16] = 1.0  # sample 0's detail box: all ones
    weight[1, 0:8, :] = 0.5  # sample 1's box (rows 8-16) gets none of it
    fused, detail = hrda_seg_loss(views, labels, weight)
    mean_all = (64 + 0.5 * 128) / 512
    assert fused.item() == pytest.approx(0.9 * math.log(k) * mean_all)
    assert detail.item() == pytest.approx(0.1 * math.log(k) * (64 + 0) / 128)
    # void pixels count in the mean with zero loss (mmseg reduction)
    labels[:, :, :8] = 255
    fused, detail = hrda_seg_loss(views, labels, None, detail_weight=0.25)
    assert fused.item() == pytest.approx(0.75 * math.log(k) * 0.5)
    assert detail.item() == pytest.approx(0.25 * math.log(k) * 0.5)


def test_hr_pseudo_labels_are_assembled_from_context_and_nine_overlapping_crops(student):
    """The teacher's pseudo-labels of a crop: one context pass plus the 3x3 detail crops (32 px
    every 16 here, 512 every 256 in HRDA) in one batch, averaged on the stride-4 grid, fused with
    unmasked attention, resized to the crop, softmax, argmax."""
    teacher = student.eval()
    seen = []
    hook = teacher.backbone.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    x = images(2, 64, seed=4)
    with torch.no_grad():
        labels, confidence = pseudo_labels(teacher(x), (64, 64))
        hook.remove()
        expected = torch.cat([reference_window(teacher, x[i : i + 1]) for i in range(2)])
    assert seen == [(2, 3, 32, 32), (18, 3, 32, 32)]  # context pass, 9 detail crops x 2
    ref_conf, ref_labels = torch.softmax(expected, dim=1).max(dim=1)
    assert labels.shape == (2, 64, 64) and torch.equal(labels, ref_labels)
    torch.testing.assert_close(confidence, ref_conf, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- entropy crop


def test_normalized_entropy_hand_worked():
    uniform = torch.zeros(1, 4, 1, 1)
    assert normalized_entropy(uniform).item() == pytest.approx(1.0)
    two = torch.tensor([0.0, 0.0, -1e4, -1e4]).view(1, 4, 1, 1)  # p = (1/2, 1/2, 0, 0)
    assert normalized_entropy(two).item() == pytest.approx(math.log(2) / math.log(4))
    assert normalized_entropy(torch.tensor([1e4, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)).item() == 0.0


def test_max_entropy_boxes_hand_worked():
    # 16 px crop, 4x4 context cells of 4 px, windows of 8 every 4 (3x3 windows of 2x2 cells).
    logits = torch.zeros(2, 3, 4, 4)
    logits[:, 0] = 20.0  # confident (entropy ~ 0) everywhere ...
    logits[0, 0, 3, 3] = 0.0  # ... but sample 0's bottom-right cell: only window (8, 16, 8, 16)
    logits[1, 0, 0, 1:3] = 0.0  # sample 1: cells (0, 1), (0, 2): both only in (0, 8, 4, 12)
    boxes = max_entropy_boxes(logits, (16, 16), (8, 8), (4, 4), 4)
    assert boxes == [(8, 16, 8, 16), (0, 8, 4, 12)]
    # ties go to the first window, as the release's strict ">"
    assert max_entropy_boxes(torch.zeros(1, 3, 4, 4), (16, 16), (8, 8), (4, 4), 4) == [(0, 8, 0, 8)]
    with pytest.raises(ValueError, match="not on multiples of 8 px"):
        max_entropy_boxes(logits, (16, 16), (8, 8), (4, 4), 8)


# --------------------------------------------------------------------------- feature distance


class RecordingEncoder(torch.nn.Module):
    """A frozen "ImageNet encoder" whose last map is zeros; records what it was given."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x):
        self.inputs.append(tuple(x.shape))
        return [torch.zeros(x.shape[0], 2, x.shape[2] // 32, x.shape[3] // 32)]


def test_feature_distance_on_the_context_view_hand_worked():
    # 128 px crop -> 64 px context view -> 2x2 map at stride 32: each cell covers 64 label px.
    student_map = torch.tensor([[[[3.0, 1.0], [1.0, 1.0]], [[4.0, 1.0], [1.0, 1.0]]]])
    labels = torch.zeros(1, 128, 128, dtype=torch.long)  # road (stuff)
    labels[:, :64, :64] = 13  # car (a thing class) fills cell (0, 0)
    frozen = RecordingEncoder()
    fd = context_feature_distance(frozen, torch.randn(1, 3, 128, 128), labels, student_map, 0.5,
                                  (6, 7, 11, 12, 13, 14, 15, 16, 17, 18), 0.75, 19)  # fmt: skip
    assert frozen.inputs == [(1, 3, 64, 64)]  # the frozen encoder sees the context view
    assert fd.item() == pytest.approx(5.0)  # ||(3, 4)|| on the only thing cell
    assert context_view(torch.ones(1, 3, 10, 14), 0.5).shape == (1, 3, 5, 7)
