"""HRDA multi-resolution training (Hoyer et al., ECCV 2022; research/cluda.md 3.1-3.4 and 4.4).

One training crop (1024x1024 in HRDA) is seen twice by the same encoder and decoder:

* **context view**: the whole crop downscaled by ``context_scale`` (0.5, bilinear) -> logits,
  fused decoder map and scale attention ``a`` on its stride-4 grid (128x128), plus the encoder
  maps that the ImageNet feature distance uses (FD is computed on this view only, HRDA#19);
* **detail view**: a full-resolution ``detail_crop_size`` box (512x512) of the crop, whose
  offsets are multiples of ``crop_coord_divisible`` (8) so that it covers whole cells of both
  grids; one random box for the batch (``get_crop_bbox`` once per forward), or, for CLUDA's mixed
  pass after 12k iterations, the window of highest mean context entropy, per sample
  (:func:`max_entropy_boxes`).

Fusion (``HRDAHead.forward``): the attention is zeroed outside the box on the context grid, the
detail logits are pasted into zeros of the stride-4 grid of the full-resolution crop (256x256),
and :func:`cluda_deploy.models.hrda.fuse_scales` mixes the two. Loss (:func:`hrda_seg_loss`):
``(1 - lambda_d) CE(fused, y) + lambda_d CE(detail, crop(y))`` with lambda_d = 0.1, both with the
pixel weights (cropped like the labels for the detail term).

Pseudo-labels need nothing new: the EMA teacher is an :class:`HRDASegmenter`, whose ``forward``
is HRDA's ``encode_decode`` over the whole crop (context pass + 3x3 overlapping detail crops of
512 every 256, averaged on the stride-4 grid, unmasked attention), so ``teacher(crop)`` followed
by :func:`training.pseudo_label.pseudo_labels` gives the high-resolution pseudo-labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cluda_deploy.config import HRDAConfig
from cluda_deploy.models.hrda import (
    Box,
    HRDASegmenter,
    box_mask,
    crop,
    fuse_scales,
    insert_detail,
    random_detail_box,
    scale_box,
)
from cluda_deploy.models.segmenter import slide_windows
from training.feature_distance import thing_feature_distance
from training.losses import seg_cross_entropy

# --------------------------------------------------------------------------- views and boxes


def context_view(images: Tensor, scale: float) -> Tensor:
    """``images (B, 3, H, W)`` downscaled by ``scale`` (bilinear, align_corners=False, mmseg
    ``resize(scale_factor=...)``): the context view, (B, 3, floor(H * scale), floor(W * scale))."""
    if scale == 1:
        return images
    return F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)


def check_crop_size(height: int, width: int, hrda: HRDAConfig) -> None:
    """The training crop must hold the detail crop and tile both logit grids exactly."""
    divisible = hrda.crop_coord_divisible
    crop_h, crop_w = hrda.detail_crop_size
    if height % divisible or width % divisible or crop_h > height or crop_w > width:
        raise ValueError(
            f"HRDA training crops are {height}x{width} px but must be multiples of "
            f"model.hrda.crop_coord_divisible={divisible} and hold the detail crop "
            f"{crop_h}x{crop_w}; set data.crop_size (HRDA: 1024x1024) or model.hrda.detail_crop_size"
        )


def sample_detail_boxes(
    height: int, width: int, hrda: HRDAConfig, batch: int, generator: torch.Generator | None = None
) -> list[Box]:
    """HRDA's random detail box for a batch: one box (the reference draws one per forward),
    repeated for each of the ``batch`` samples. Offsets follow
    :func:`~cluda_deploy.models.hrda.random_detail_box`; its numpy generator is seeded from one
    draw of ``generator`` (or torch's global RNG), so a resumed run repeats the boxes."""
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    box = random_detail_box(
        height, width, tuple(hrda.detail_crop_size), hrda.crop_coord_divisible,
        np.random.default_rng(seed),
    )  # fmt: skip
    return [box] * batch


def scale_boxes(boxes: Sequence[Box], factor: float) -> list[Box]:
    """:func:`~cluda_deploy.models.hrda.scale_box` for each sample's box."""
    return [scale_box(box, factor) for box in boxes]


def crop_boxes(x: Tensor, boxes: Sequence[Box]) -> Tensor:
    """Sample i of ``x (B, ..., H, W)`` (images, labels, weights) cropped to ``boxes[i]``; all
    boxes have one size, so the crops stack to (B, ..., h, w)."""
    _check_batch(x, boxes)
    if all(box == boxes[0] for box in boxes):
        return crop(x, boxes[0])
    return torch.stack([crop(sample, box) for sample, box in zip(x, boxes, strict=True)])


def box_masks(like: Tensor, boxes: Sequence[Box]) -> Tensor:
    """(B, 1, h, w) zeros of ``like (B, ..., h, w)`` with ones inside sample i's ``boxes[i]``
    (given on that grid)."""
    _check_batch(like, boxes)
    return torch.cat([box_mask(like[i : i + 1], box) for i, box in enumerate(boxes)])


def insert_details(detail: Tensor, size: Sequence[int], boxes: Sequence[Box]) -> Tensor:
    """Paste sample i of ``detail (B, C, h, w)`` at ``boxes[i]`` (on the target grid) into zeros
    of (B, C, *size)."""
    _check_batch(detail, boxes)
    return torch.cat([insert_detail(detail[i : i + 1], size, box) for i, box in enumerate(boxes)])


def _check_batch(x: Tensor, boxes: Sequence[Box]) -> None:
    if len(boxes) != x.shape[0]:
        raise ValueError(f"{len(boxes)} detail boxes for a batch of {x.shape[0]}; give one each")


# --------------------------------------------------------------------------- entropy crop


def normalized_entropy(logits: Tensor) -> Tensor:
    """Per-pixel entropy of ``softmax(logits (B, K, h, w))`` divided by log K: (B, h, w) in [0, 1].

    CLUDA's ``get_entropy`` divides by K log K (K = 19 hard-coded) instead; a constant factor
    that does not change which window has the highest mean.
    """
    probs = torch.softmax(logits.float(), dim=1)
    return torch.special.entr(probs).sum(dim=1) / math.log(logits.shape[1])


def max_entropy_boxes(
    context_logits: Tensor,
    size: Sequence[int],
    crop_size: Sequence[int],
    stride: Sequence[int],
    divisible: int,
) -> list[Box]:
    """CLUDA's entropy-guided detail crop (``max_entropy_crop``, research/cluda.md 4.4).

    The normalised entropy of ``context_logits (B, K, h, w)`` is resized (nearest) to the training
    crop ``size`` (H, W); of the windows of ``crop_size`` every ``stride`` (HRDA's overlapping
    detail slide: 512 every 256, 3x3 windows of a 1024 crop) each sample gets the one with the
    highest mean entropy, the first on ties. Returns one box per sample, in crop pixels.

    The release writes the best window back into the entropy map (``e_max[0] = ecp[0]`` on a view
    of it), which changes later windows' means; here the map is left intact.
    """
    entropy = F.interpolate(
        normalized_entropy(context_logits)[:, None], size=tuple(size), mode="nearest"
    )[:, 0]
    windows = slide_windows(*size, tuple(crop_size), tuple(stride))
    if any(c % divisible for window in windows for c in window):
        raise ValueError(
            f"entropy-crop windows {windows} of a {tuple(size)} crop are not on multiples of "
            f"{divisible} px; make data.crop_size, model.hrda.detail_crop_size and "
            "model.hrda.detail_stride multiples of model.hrda.crop_coord_divisible"
        )
    means = torch.stack([crop(entropy, box).mean(dim=(-2, -1)) for box in windows], dim=1)
    return [windows[int(i)] for i in means.argmax(dim=1)]


# --------------------------------------------------------------------------- forward


def fuse_detail_crop(
    context_logits: Tensor,
    detail_logits: Tensor,
    attention: Tensor,
    boxes: Sequence[Box],
    output_stride: int,
    context_scale: float,
    mode: str = "hrda",
) -> tuple[Tensor, Tensor]:
    """HRDA's training fusion (``HRDAHead.forward`` with a crop box, research/cluda.md 3.2).

    ``context_logits (B, K, h, w)`` and ``attention (B, K or 1, h, w)`` of the context view,
    ``detail_logits (B, K, h_d, w_d)`` of the detail crops at ``boxes`` (crop pixels). The
    attention is zeroed outside each box (box / (output_stride / context_scale) on the context
    grid), the detail logits are pasted at box / output_stride into zeros of the full-resolution
    grid (h / context_scale, w / context_scale), and
    :func:`~cluda_deploy.models.hrda.fuse_scales` mixes them there.
    Returns ``(fused (B, K, h / s, w / s), masked attention (B, K or 1, h, w))``.
    """
    attention = attention * box_masks(attention, scale_boxes(boxes, output_stride / context_scale))
    size = tuple(round(n / context_scale) for n in context_logits.shape[-2:])
    inserted = insert_details(detail_logits, size, scale_boxes(boxes, output_stride))
    return fuse_scales(context_logits, inserted, attention, mode), attention


@dataclass
class HRDAViews:
    """Everything one multi-resolution training forward produces (B samples, K classes).

    fused_logits: (B, K, H / 4, W / 4), the prediction on the full-resolution crop's grid;
    context_logits, context_fused: (B, K or F, h, w) of the context view, h = H * scale / 4;
    detail_logits, detail_fused: (B, K or F, h_d, w_d) of the detail crops, h_d = crop_h / 4;
    attention: (B, K or 1, h, w), already zeroed outside the boxes;
    context_features: the encoder maps of the context view (feature distance);
    boxes: each sample's detail box in crop pixels (y1, y2, x1, x2);
    feature_weight: (B, 1, h, w) in [0, 1], CLUDA's learned contrastive weight, or None.
    """

    fused_logits: Tensor
    context_logits: Tensor
    detail_logits: Tensor
    context_fused: Tensor
    detail_fused: Tensor
    attention: Tensor
    context_features: list[Tensor]
    boxes: list[Box]
    feature_weight: Tensor | None = None


class HRDATrainForward(nn.Module):
    """The student as the loop calls it (and DDP wraps it) when the model is HRDA.

    ``forward(images (B, 3, H, W), boxes=None, entropy_crop=False) -> HRDAViews``. Detail boxes:
    given, chosen by context entropy (``entropy_crop``), or else drawn at random. ``feat_weighter``
    (CLUDA's one-channel head on the context encoder maps, training only) is optional; it lives
    here rather than in the segmenter so that checkpoints and exports keep the inference layout.
    """

    def __init__(self, segmenter: HRDASegmenter, feat_weighter: nn.Module | None = None):
        super().__init__()
        if not isinstance(segmenter, HRDASegmenter):
            raise TypeError(
                f"HRDA training needs an HRDASegmenter, got {type(segmenter).__name__}; "
                "set model.hrda.enabled=true"
            )
        self.segmenter = segmenter
        self.feat_weighter = feat_weighter

    def forward(
        self, images: Tensor, boxes: Sequence[Box] | None = None, entropy_crop: bool = False
    ) -> HRDAViews:
        seg, hrda = self.segmenter, self.segmenter.hrda
        height, width = images.shape[-2:]
        check_crop_size(height, width, hrda)
        features = seg.backbone(context_view(images, hrda.context_scale))
        context_logits, context_fused = seg.decode_head.head.forward_with_features(features)
        attention = seg.decode_head.attention(features)
        if entropy_crop:
            # The release re-runs the head on detached features; the detached logits are the same
            # up to the dropout draw.
            boxes = max_entropy_boxes(
                context_logits.detach(), (height, width), hrda.detail_crop_size,
                hrda.detail_stride, hrda.crop_coord_divisible,
            )  # fmt: skip
        elif boxes is None:
            boxes = sample_detail_boxes(height, width, hrda, images.shape[0])
        boxes = list(boxes)
        detail_logits, detail_fused = seg.decode_head.head.forward_with_features(
            seg.backbone(crop_boxes(images, boxes))
        )
        fused, attention = fuse_detail_crop(
            context_logits, detail_logits, attention, boxes, seg.decode_head.output_stride,
            hrda.context_scale, hrda.fusion,
        )  # fmt: skip
        weight = None
        if self.feat_weighter is not None:
            weight = torch.sigmoid(self.feat_weighter(features))
        return HRDAViews(
            fused, context_logits, detail_logits, context_fused, detail_fused, attention,
            features, boxes, weight,
        )  # fmt: skip


# --------------------------------------------------------------------------- losses


def hrda_seg_loss(
    views: HRDAViews,
    labels: Tensor,
    pixel_weight: Tensor | None = None,
    detail_weight: float = 0.1,
) -> tuple[Tensor, Tensor]:
    """HRDA's segmentation loss (``HRDAHead.losses``, research/cluda.md 3.3):
    ``((1 - lambda_d) CE(fused, y, w), lambda_d CE(detail, crop(y), crop(w)))``.

    labels: (B, H, W) of the training crop; pixel_weight: (B, H, W) or None. Cross-entropy with
    the mmseg reduction (:func:`training.losses.seg_cross_entropy`); logits are resized to the
    labels. lambda_d = ``detail_weight`` (``hr_loss_weight`` = 0.1); the context logits get no
    loss of their own (``lr_loss_weight`` = 0).
    """
    fused = seg_cross_entropy(views.fused_logits, labels, pixel_weight)
    detail_weights = None if pixel_weight is None else crop_boxes(pixel_weight, views.boxes)
    detail = seg_cross_entropy(views.detail_logits, crop_boxes(labels, views.boxes), detail_weights)
    return (1 - detail_weight) * fused, detail_weight * detail


def context_feature_distance(
    imnet_backbone: nn.Module,
    images: Tensor,
    labels: Tensor,
    student_map: Tensor,
    context_scale: float,
    classes: Sequence[int],
    min_ratio: float,
    num_classes: int,
) -> Tensor:
    """HRDA's ImageNet feature distance on the context view only (``feature_scale=0.5``).

    ``student_map (B, C, h, w)``: the student's last encoder map of the context view; the frozen
    encoder sees the same downscaled ``images (B, 3, H, W)``. ``labels (B, H, W)`` stay at full
    resolution, so a cell covers H / h pixels (64 for HRDA's 1024 crops and 16x16 maps).
    """
    with torch.no_grad():
        frozen_map = imnet_backbone(context_view(images, context_scale))[-1]
    return thing_feature_distance(student_map, frozen_map, labels, classes, min_ratio, num_classes)


__all__ = [
    "HRDATrainForward",
    "HRDAViews",
    "box_masks",
    "check_crop_size",
    "context_feature_distance",
    "context_view",
    "crop_boxes",
    "fuse_detail_crop",
    "hrda_seg_loss",
    "insert_details",
    "max_entropy_boxes",
    "normalized_entropy",
    "sample_detail_boxes",
    "scale_boxes",
]
