"""Thing-class ImageNet feature distance (research/cluda.md section 2.7; DAFormer ``dacs.py``).

The student's last encoder map on the source crops is pulled towards that of a frozen copy of the
initial (ImageNet) encoder, only on feature cells whose label is a thing class:
``FD = mean over masked cells of || f_student - f_imnet ||_2`` (L2 over channels, not squared),
weighted by lambda = 0.005. Cell labels come from ``downscale_label_ratio``: the majority class
of each block if it covers >= 75 % of it, else 255.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cluda_deploy.labels import IGNORE_INDEX


def frozen_encoder(encoder: nn.Module) -> nn.Module:
    """A copy of ``encoder`` in eval mode without gradients: the "ImageNet model" of the reference
    (its weights are the encoder's at the start of training, ImageNet ones when pretrained)."""
    return copy.deepcopy(encoder).eval().requires_grad_(False)


def downscale_label_ratio(
    labels: torch.Tensor,
    scale: int,
    min_ratio: float,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``labels (B, H, W)`` -> ``(B, H // scale, W // scale)`` majority labels of ``scale``x``scale`` blocks.

    A block whose majority (void counted as a class of its own) covers less than ``min_ratio`` of
    it, or whose majority is void, becomes ``ignore_index`` (mmseg ``downscale_label_ratio``).
    """
    if scale < 1:
        raise ValueError(f"label downscale factor must be >= 1, got {scale}")
    void = num_classes
    out = labels.clone()
    out[out == ignore_index] = void
    one_hot = F.one_hot(out, num_classes=num_classes + 1).permute(0, 3, 1, 2).float()
    share, majority = F.avg_pool2d(one_hot, kernel_size=scale).max(dim=1)
    majority[majority == void] = ignore_index
    majority[share < min_ratio] = ignore_index
    return majority


def thing_mask(cell_labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """``(B, h, w)`` bool: cells whose label is one of ``classes``."""
    return torch.isin(cell_labels, torch.tensor(list(classes), device=cell_labels.device))


def masked_feature_distance(
    student: torch.Tensor, frozen: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over ``mask`` cells of the channel L2 norm of ``student - frozen``.

    student, frozen: (B, C, h, w); mask: (B, h, w) bool. An empty mask gives 0 (the reference's
    ``torch.mean`` of nothing is NaN, with zero gradient either way).
    """
    distance = torch.linalg.vector_norm(student.float() - frozen.float(), dim=1)
    return (distance * mask).sum() / mask.sum().clamp(min=1)


def thing_feature_distance(
    student: torch.Tensor,
    frozen: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    min_ratio: float,
    num_classes: int,
) -> torch.Tensor:
    """Unweighted FD of the last encoder maps ``(B, C, h, w)`` on thing cells of ``labels (B, H, W)``.

    The label-to-feature scale is ``W // w`` (32 for 512 crops and a stride-32 map).
    """
    scale = labels.shape[-1] // student.shape[-1]
    cells = downscale_label_ratio(labels, scale, min_ratio, num_classes)
    if cells.shape[-2:] != student.shape[-2:]:
        raise ValueError(
            f"labels {tuple(labels.shape[-2:])} do not tile the feature map "
            f"{tuple(student.shape[-2:])}; use a crop size divisible by the encoder's last stride"
        )
    return masked_feature_distance(student, frozen, thing_mask(cells, classes))
