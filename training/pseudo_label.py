"""Pseudo-labels of the target crops and their confidence weight (research/cluda.md section 2.5).

DAFormer ``dacs.py``: the teacher's logits, resized bilinearly to the crop, go through softmax;
the label of *every* pixel is the argmax (no 255), and one scalar weight for the whole batch is
the share of pixels whose top probability is >= 0.968. That weight is then zeroed on the top and
bottom rows of each crop (``psweight_ignore_top`` / ``psweight_ignore_bottom``).
"""

from __future__ import annotations

import torch

from training.losses import resize_logits


def pseudo_labels(logits: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher ``logits (B, K, h, w)`` -> ``(labels (B, H, W) int64, confidence (B, H, W))``.

    Logits are resized to ``size`` = (H, W) first (bilinear, align_corners=False).
    """
    probs = torch.softmax(resize_logits(logits.detach().float(), size), dim=1)
    confidence, labels = probs.max(dim=1)
    return labels, confidence


def confidence_weight(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scalar share of pixels (over the whole batch) with ``confidence >= threshold``.

    confidence: (B, H, W). Returns a 0-dim float tensor in [0, 1].
    """
    return (confidence >= threshold).float().mean()


def pseudo_weight_map(
    quality: torch.Tensor, shape: tuple[int, int, int], ignore_top: int, ignore_bottom: int
) -> torch.Tensor:
    """Per-pixel weight ``(B, H, W)``: ``quality`` everywhere, 0 on the first ``ignore_top`` and
    the last ``ignore_bottom`` rows of each crop."""
    if ignore_top < 0 or ignore_bottom < 0:
        raise ValueError(
            f"pseudo-label margins must be >= 0, got top={ignore_top} bottom={ignore_bottom}"
        )
    weight = quality.to(torch.float32).expand(shape).clone()
    if ignore_top > 0:
        weight[:, :ignore_top, :] = 0
    if ignore_bottom > 0:
        weight[:, -ignore_bottom:, :] = 0
    return weight
