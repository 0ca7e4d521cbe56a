"""CONFETI's heads and class prototypes on hand-worked tensors (research/confeti.md sections 3, 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cluda_deploy.config import ModelConfig
from cluda_deploy.models import create_segmenter
from training.confeti.heads import (
    CAMHead,
    ProjectionHead,
    affine_projection,
    cam_loss,
    image_level_labels,
)
from training.confeti.prototypes import (
    ClassPrototypes,
    nearest_labels,
    prototype_pixel_weights,
    prototype_rate,
    select_pixels,
    top_k_centroid,
)


def test_projection_head_gives_512_d_features_on_deeplabv2_r101():
    torch.manual_seed(0)
    segmenter = create_segmenter(ModelConfig(backbone="resnet101", head="deeplabv2")).eval()
    with torch.no_grad():
        logits, features = segmenter.forward_with_features(torch.rand(1, 3, 33, 33))
        projected = ProjectionHead(segmenter.backbone.channels[-1], 512)(features)
    assert features.shape == (1, 2048, 5, 5) and logits.shape == (1, 19, 5, 5)
    assert projected.shape == (1, 512, 5, 5)
    assert ProjectionHead(2048, 512).conv_proj.bias is None
    assert affine_projection(512).bias is not None


def test_cam_head_maps_and_scores():
    head = CAMHead(2, 2)
    with torch.no_grad():
        head.conv_cam.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0]]).view(2, 2, 1, 1))
    features = torch.tensor([[[[1.0, 3.0]], [[2.0, -4.0]]]])  # (1, 2, 1, 2)
    cam, scores = head(features)
    assert torch.equal(cam, torch.tensor([[[[1.0, 3.0]], [[0.0, 4.0]]]]))  # ReLU(conv)
    assert torch.equal(scores, torch.tensor([[2.0, 1.0]]))  # GAP before the ReLU


def test_image_level_labels_ignore_void():
    labels = torch.tensor([[[0, 255], [2, 2]], [[255, 255], [255, 255]]])
    assert torch.equal(image_level_labels(labels, 3), torch.tensor([[1.0, 0, 1], [0, 0, 0]]))


def test_cam_loss_hand_worked():
    labels = torch.tensor([[[1, 1]]])  # class 1 present, class 0 absent
    assert cam_loss(torch.zeros(1, 2), labels).item() == pytest.approx(math.log(2))
    # BCE(2, 0) = log(1 + e^2); BCE(2, 1) = log(1 + e^-2); mean of the two
    expected = 0.5 * (math.log(1 + math.e**2) + math.log(1 + math.e**-2))
    assert cam_loss(torch.tensor([[2.0, 2.0]]), labels).item() == pytest.approx(expected)


def test_nearest_labels_takes_the_top_left_of_each_block():
    labels = torch.arange(16).view(1, 4, 4)
    assert torch.equal(nearest_labels(labels, (2, 2)), torch.tensor([[[0, 2], [8, 10]]]))


def test_prototype_rate():
    assert prototype_rate(0, 0.999) == 1.0
    assert prototype_rate(32, 0.999) == pytest.approx(0.001)
    assert prototype_rate(1, 0.2) == pytest.approx(0.5)  # min(1 - 1/2, 0.8)


def test_top_k_centroid_hand_worked():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # top 2 by weight: rows 0 (w 3) and 1 (w 1): (3 [1, 0] + 1 [0, 1]) / 4, normalised
    centroid = top_k_centroid(rows, torch.tensor([3.0, 1.0, 0.5]), top_k=2)
    assert torch.allclose(centroid, torch.tensor([3.0, 1.0]) / math.sqrt(10))
    assert top_k_centroid(rows, torch.zeros(3), top_k=2) is None


def test_top_k_breaks_ties_at_random():
    rows = torch.eye(4)
    picks = {
        tuple(top_k_centroid(rows, torch.ones(4), 1, torch.Generator().manual_seed(s)).tolist())
        for s in range(20)
    }
    assert len(picks) > 1  # not always the first row in raster order


def test_select_pixels_downsamples_and_masks():
    features = torch.arange(8.0).view(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [255] * 4, [2, 2, 2, 2]]])
    mask = torch.tensor([[[1, 1, 0, 0]] * 4])
    rows, flat, weights = select_pixels(features, labels, None, mask)
    # cells (0,0) label 0 in the mask, (0,1) label 1 masked out, (1,*) void
    assert torch.equal(rows, torch.tensor([[0.0, 4.0]])) and flat.tolist() == [0]
    assert weights is None
    cam = torch.rand(1, 3, 2, 2)
    _, flat, weights = select_pixels(features, labels, cam, None)
    assert flat.tolist() == [0, 1] and torch.equal(weights, cam[0, :, 0].T)


def test_prototype_update_hand_worked():
    """Two classes in 2-D, momentum 0.5: the first update copies each class's weighted mean;
    the second moves class 0 half-way (rate min(1 - 1/(n+1), 0.5) = 0.5) and renormalises."""
    protos = ClassPrototypes(num_classes=3, dim=2, momentum=0.5, top_k=2)
    features = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 2.0, 1.0]]]])  # (1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 1]]])
    cam = torch.tensor([[[[1.0, 3.0, 0.0]], [[0.0, 0.0, 5.0]], [[0.0, 0.0, 0.0]]]])
    assert protos.update(features, labels, cam) == [0, 1]
    # class 0: (1 [2, 0] + 3 [0, 2]) / 4 = [0.5, 1.5] -> [1, 3] / sqrt(10); class 1: [1, 1] / sqrt(2)
    p0 = torch.tensor([1.0, 3.0]) / math.sqrt(10)
    p1 = torch.tensor([1.0, 1.0]) / math.sqrt(2)
    assert torch.allclose(protos.get(), torch.stack([p0, p1, torch.zeros(2)]), atol=1e-6)
    assert protos.counts.tolist() == [2.0, 1.0, 0.0]

    protos.update(torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[0]]]))  # weights 1
    moved = F.normalize(0.5 * p0 + 0.5 * torch.tensor([1.0, 0.0]), dim=0)
    assert torch.allclose(protos.get()[0], moved, atol=1e-6)
    assert torch.allclose(protos.get()[1], p1, atol=1e-6)


def test_prototype_update_skips_zero_weight_classes_and_checks_labels():
    protos = ClassPrototypes(num_classes=2, dim=2, momentum=0.999, top_k=32)
    features = torch.ones(1, 2, 1, 2)
    cam = torch.zeros(1, 2, 1, 2)
    assert protos.update(features, torch.tensor([[[0, 1]]]), cam) == []
    assert torch.equal(protos.get(), torch.zeros(2, 2)) and protos.counts.sum() == 0
    with pytest.raises(ValueError, match="label 5 outside 0..1"):
        protos.update(features, torch.tensor([[[5, 1]]]))
    with pytest.raises(ValueError, match="3 channels"):
        protos.update(torch.ones(1, 3, 1, 2), torch.tensor([[[0, 1]]]))


def test_prototypes_and_counts_are_saved_buffers():
    protos = ClassPrototypes(num_classes=2, dim=2, momentum=0.999, top_k=32)
    protos.update(torch.ones(1, 2, 1, 1), torch.tensor([[[1]]]))
    restored = ClassPrototypes(num_classes=2, dim=2, momentum=0.999, top_k=32)
    restored.load_state_dict(protos.state_dict())
    assert torch.equal(restored.get(), protos.get()) and restored.counts.tolist() == [0.0, 1.0]


def test_prototype_warmup_is_source_only_with_unit_weights():
    cam, mask = torch.rand(1, 19, 2, 2), torch.ones(1, 8, 8)
    assert prototype_pixel_weights(cam, mask, 3000, 3000) == (None, mask)
    weights, pixel_mask = prototype_pixel_weights(cam, mask, 3001, 3000)
    assert weights is cam and pixel_mask is None
    with pytest.raises(ValueError, match="EMA CAM"):
        prototype_pixel_weights(None, mask, 3001, 3000)
