"""Pseudo-labels, their confidence weight and the ignored margins (research/cluda.md 2.5)."""

from __future__ import annotations

import math

import pytest
import torch

from training.pseudo_label import confidence_weight, pseudo_labels, pseudo_weight_map


def test_argmax_labels_and_confidence_hand_values():
    # Two classes; logit gaps 0, log(3), log(99): softmax max = 0.5, 0.75, 0.99.
    gaps = torch.tensor([[0.0, math.log(3.0)], [-math.log(99.0), 0.0]])  # (H=2, W=2)
    logits = torch.stack([gaps, torch.zeros(2, 2)])[None]  # (1, 2, 2, 2): class 0 gets the gap
    labels, confidence = pseudo_labels(logits, (2, 2))
    assert labels.tolist() == [[[0, 0], [1, 0]]]  # the tie at 0 goes to the first class
    torch.testing.assert_close(confidence, torch.tensor([[[0.5, 0.75], [0.99, 0.5]]]))
    # share of pixels at or above 0.968: one of four
    assert confidence_weight(confidence, 0.968).item() == pytest.approx(0.25)
    assert confidence_weight(torch.full((1, 1, 1), 0.968), 0.968).item() == 1.0  # >=, not >


def test_logits_are_resized_to_the_crop():
    logits = torch.randn(2, 3, 4, 4)
    labels, confidence = pseudo_labels(logits, (16, 16))
    assert labels.shape == (2, 16, 16) and labels.dtype == torch.int64
    assert confidence.shape == (2, 16, 16)
    assert (labels != 255).all()  # every pixel gets a label


def test_weight_map_zeroes_margins():
    weight = pseudo_weight_map(torch.tensor(0.6), (2, 10, 3), ignore_top=2, ignore_bottom=3)
    assert weight.shape == (2, 10, 3)
    assert (weight[:, :2] == 0).all() and (weight[:, -3:] == 0).all()
    assert torch.allclose(weight[:, 2:7], torch.tensor(0.6))
    no_margin = pseudo_weight_map(torch.tensor(0.6), (1, 4, 4), 0, 0)
    assert torch.allclose(no_margin, torch.tensor(0.6))
    with pytest.raises(ValueError, match="margins must be >= 0"):
        pseudo_weight_map(torch.tensor(0.6), (1, 4, 4), -1, 0)
