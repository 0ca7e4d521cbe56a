"""Segmentation losses with the reference reduction.

mmseg 0.16's ``CrossEntropyLoss`` multiplies the per-pixel loss by the pixel weight and then
averages over *all* pixels, ignored ones included (research/cluda.md section 2.8). PyTorch's
default would average over non-ignored pixels only, which changes the loss scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cluda_deploy.labels import IGNORE_INDEX


def resize_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) resize of (B, C, h, w) logits to ``size`` = (H, W)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def seg_cross_entropy(
    logits: torch.Tensor,
    label: torch.Tensor,
    pixel_weight: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Weighted pixel cross-entropy, mean over all B*H*W pixels (mmseg 0.16 semantics).

    logits: (B, C, h, w), resized to the label size; label: (B, H, W) int64;
    pixel_weight: (B, H, W) or broadcastable, multiplies each pixel's loss.
    """
    logits = resize_logits(logits, tuple(label.shape[-2:]))
    loss = F.cross_entropy(logits.float(), label, reduction="none", ignore_index=ignore_index)
    if pixel_weight is not None:
        loss = loss * pixel_weight
    return loss.mean()
