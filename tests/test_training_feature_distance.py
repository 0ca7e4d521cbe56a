"""Thing-class ImageNet feature distance (research/cluda.md 2.7)."""

from __future__ import annotations

import pytest
import torch

from training.feature_distance import (
    downscale_label_ratio,
    frozen_encoder,
    masked_feature_distance,
    thing_feature_distance,
)


def test_downscale_label_ratio_hand_values():
    labels = torch.tensor(
        [[[13, 13, 0, 0],
          [13, 13, 0, 1],
          [255, 255, 6, 6],
          [255, 7, 6, 6]]]
    )  # fmt: skip
    out = downscale_label_ratio(labels, scale=2, min_ratio=0.75, num_classes=19)
    # block (0,0): 13 x4 -> 13; (0,1): 0 x3/4 = 0.75 -> 0; (1,0): void majority -> 255;
    # (1,1): 6 x4 -> 6
    assert out.tolist() == [[[13, 0], [255, 6]]]
    strict = downscale_label_ratio(labels, scale=2, min_ratio=0.8, num_classes=19)
    assert strict.tolist() == [[[13, 255], [255, 6]]]


def test_masked_distance_is_mean_l2_over_masked_cells():
    student = torch.zeros(1, 2, 1, 3)
    frozen = torch.zeros(1, 2, 1, 3)
    student[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # distance 5
    student[0, :, 0, 1] = torch.tensor([0.0, 1.0])  # distance 1
    student[0, :, 0, 2] = torch.tensor([6.0, 8.0])  # distance 10, not masked
    mask = torch.tensor([[[True, True, False]]])
    assert masked_feature_distance(student, frozen, mask).item() == pytest.approx(3.0)
    empty = masked_feature_distance(student.requires_grad_(), frozen, torch.zeros_like(mask))
    assert empty.item() == 0.0  # not NaN
    empty.backward()
    assert (student.grad == 0).all()


def test_thing_feature_distance_uses_only_thing_cells():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)  # road everywhere...
    labels[:, :4, :4] = 13  # ...and a car in the top-left 4x4 block
    student = torch.ones(1, 3, 2, 2)
    frozen = torch.zeros(1, 3, 2, 2)
    student[..., 0, 0] = 2.0  # the car cell differs by (1,1,1)*2 -> sqrt(12)
    fd = thing_feature_distance(student, frozen, labels, (6, 7, 11, 12, 13), 0.75, 19)
    assert fd.item() == pytest.approx(12**0.5)
    with pytest.raises(ValueError, match="divisible"):
        thing_feature_distance(student, frozen, labels[:, :, :4], (13,), 0.75, 19)


def test_frozen_encoder_is_a_detached_copy():
    encoder = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    frozen = frozen_encoder(encoder)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        encoder[0].weight.add_(1.0)
    assert not torch.equal(frozen[0].weight, encoder[0].weight)
