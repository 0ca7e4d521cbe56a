"""HRDA: multi-resolution fusion of a context and a detail view with learned scale attention.

Reproduces, for inference, lhoyer/HRDA's ``HRDAEncoderDecoder.encode_decode`` + ``HRDAHead``
(Hoyer et al., "HRDA: Context-Aware High-Resolution Domain-Adaptive Semantic Segmentation",
ECCV 2022; research/cluda.md 3.2 and 3.4). For one input window (B, 3, H, W):

* context pass: the window downscaled by ``context_scale`` (0.5) -> backbone -> the DAFormer
  ``head`` gives context logits, the ``scale_attention`` head (1x1 conv fusion) gives
  ``a = sigmoid(.)``, both at stride 4 of the downscaled window;
* detail pass: the full-resolution window cut into ``detail_crop_size`` crops every
  ``detail_stride`` (512 / 256), all crops through backbone + ``head`` in one batch, logits
  averaged where crops overlap, on the stride-4 grid of the full-resolution window;
* fusion on the detail grid (:func:`fuse_scales`).

The outer sliding window of the test protocol (1024x1024 every 512 px, research/cluda.md 2.10)
is :meth:`Segmenter.predict` with ``mode='slide'``: each window goes through :meth:`forward`.

Module names follow the reference so released weights load 1:1: ``decode_head.head.*`` (DAFormer
head), ``decode_head.scale_attention.*``. CLUDA's ``decode_head.feat_weighter`` (a training-only
weighting head of the same :class:`ConvFusionHead` layout) is not part of the inference model.

The pieces the multi-resolution training step needs are public: :func:`random_detail_box`,
:func:`scale_box`, :func:`crop`, :func:`box_mask`, :func:`insert_detail`, :func:`fuse_scales`
and :meth:`HRDASegmenter.context_pass` / :meth:`HRDASegmenter.detail_logits`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cluda_deploy.config import HRDAConfig
from cluda_deploy.models.heads import ConvModule, DAFormerHead, DecodeHead
from cluda_deploy.models.segmenter import Segmenter, resize, slide_windows

Box = tuple[int, int, int, int]  # (y1, y2, x1, x2), the reference's crop-box order
FUSION_MODES = ("hrda", "cluda")


class ConvFusionHead(DAFormerHead):
    """DAFormer head whose fusion is one 1x1 ConvModule (mmseg DAFormerHead with
    ``fusion_cfg=dict(type='conv', kernel_size=1)``, the ``daformer_conv1`` layout).

    HRDA's ``scale_attention`` and CLUDA's ``feat_weighter`` are this head: per level a Linear
    ``C_i -> embed_dim``, resize to level 0, concat, 1x1 conv + BN + ReLU to ``channels``,
    Dropout2d, 1x1 ``conv_seg``. ``forward_with_features(features) -> (logits (B, K, h_0, w_0),
    fused (B, channels, h_0, w_0))``. Keys: ``conv_seg``, ``embed_layers.{i}.proj``,
    ``fuse_layer.{conv,bn}``, in the checkpoints' order.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = 256,
        channels: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__(
            in_channels, in_strides, num_classes, embed_dim=embed_dim, fusion_channels=channels,
            dilations=(1,), dropout=dropout,
        )  # fmt: skip
        # Replaces the (one-branch) sep-ASPP in place, so the key order stays the reference's.
        self.fuse_layer = ConvModule(len(in_channels) * embed_dim, channels, 1)


class HRDAHead(nn.Module):
    """HRDA's decode head: the single-scale ``head`` applied to both views, plus
    ``scale_attention`` on the context view. It has no classifier of its own (the reference
    deletes its ``conv_seg``)."""

    def __init__(self, head: DecodeHead, scale_attention: DecodeHead):
        super().__init__()
        self.head = head
        self.scale_attention = scale_attention

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    @property
    def fused_channels(self) -> int:
        return self.head.fused_channels

    @property
    def output_stride(self) -> int:
        return self.head.output_stride

    def attention(self, context_features: Sequence[Tensor]) -> Tensor:
        """``sigmoid(scale_attention(features))``: (B, K or 1, h, w) in [0, 1]."""
        return torch.sigmoid(self.scale_attention(context_features))


# --------------------------------------------------------------------------- boxes


def scale_box(box: Box, factor: float) -> Box:
    """A box on a grid ``factor`` times coarser: each coordinate ``int(c / factor)`` (reference
    ``scale_box``; image -> stride-4 logits is factor 4, -> stride-4 of the 0.5x context is 8)."""
    y1, y2, x1, x2 = box
    return int(y1 / factor), int(y2 / factor), int(x1 / factor), int(x2 / factor)


def random_detail_box(
    height: int, width: int, crop_size: Sequence[int], divisible: int, rng: np.random.Generator
) -> Box:
    """A random ``crop_size`` (h, w) box inside ``height x width`` whose offsets are multiples
    of ``divisible`` (reference ``get_crop_bbox``): offset = ``randint(0, (margin + 1) //
    divisible) * divisible``, so the box falls on whole cells of both logit grids."""
    crop_h, crop_w = crop_size
    if crop_h <= 0 or crop_w <= 0 or divisible <= 0:
        raise ValueError(f"crop_size {tuple(crop_size)} and divisible {divisible} must be positive")
    if (height, width) == (crop_h, crop_w):
        return 0, height, 0, width
    offset_h = int(rng.integers(0, (max(height - crop_h, 0) + 1) // divisible)) * divisible
    offset_w = int(rng.integers(0, (max(width - crop_w, 0) + 1) // divisible)) * divisible
    return offset_h, offset_h + crop_h, offset_w, offset_w + crop_w


def crop(x: Tensor, box: Box) -> Tensor:
    """``x[..., y1:y2, x1:x2]`` for images, labels or weights of any leading shape."""
    y1, y2, x1, x2 = box
    return x[..., y1:y2, x1:x2]


def box_mask(like: Tensor, box: Box) -> Tensor:
    """(B, 1, h, w) zeros of ``like``'s batch, size, dtype and device with ones inside ``box``
    (given on that grid). HRDA multiplies the attention by it during training, so that
    outside the detail crop the prediction is context only."""
    mask = like.new_zeros((like.shape[0], 1, *like.shape[-2:]))
    y1, y2, x1, x2 = box
    mask[:, :, y1:y2, x1:x2] = 1
    return mask


def insert_detail(detail: Tensor, size: Sequence[int], box: Box) -> Tensor:
    """Paste detail logits (B, K, y2 - y1, x2 - x1) at ``box`` into zeros of (B, K, *size)."""
    canvas = detail.new_zeros((*detail.shape[:2], *size))
    y1, y2, x1, x2 = box
    canvas[:, :, y1:y2, x1:x2] = detail
    return canvas


# --------------------------------------------------------------------------- fusion


def fuse_scales(
    context_logits: Tensor, detail_logits: Tensor, attention: Tensor, mode: str = "hrda"
) -> Tensor:
    """Scale-attention fusion on the detail grid (research/cluda.md 3.2).

    ``context_logits (B, K, h, w)`` and ``attention (B, K or 1, h, w)`` (values in [0, 1]) come
    from the context view; ``detail_logits (B, K, H, W)`` live on the detail grid (H = h / 0.5
    for HRDA; at training time the detail crop pasted by :func:`insert_detail`). ``up`` is a
    bilinear resize to (H, W), align_corners=False.

    * ``hrda`` (``HRDAHead.forward``): ``up(a) * detail + up((1 - a) * context)``;
    * ``cluda`` (CLUDA's ``hrda_head.py``): ``up(a) * detail + (1 - up(a)) * up(context)``.

    The reference resizes by the scale ratio; where the detail grid is not exactly that ratio
    times the context grid (windows not a multiple of 8 px, on which the reference fails) the
    context maps are resized to the detail grid instead.
    """
    size = detail_logits.shape[-2:]
    if mode == "hrda":
        return resize(attention, size) * detail_logits + resize(
            (1 - attention) * context_logits, size
        )
    if mode == "cluda":
        up_attention = resize(attention, size)
        return up_attention * detail_logits + (1 - up_attention) * resize(context_logits, size)
    raise ValueError(f"unknown HRDA fusion {mode!r}; known: {', '.join(FUSION_MODES)}")


def stitch_windows(window_logits: Tensor, boxes: Sequence[Box], batch: int) -> Tensor:
    """Average the logits of overlapping windows on one grid (reference ``HRDAHead.decode_hr``).

    ``window_logits (len(boxes) * batch, K, h, w)``: window i's logits are rows
    ``[i * batch, (i + 1) * batch)``; ``boxes`` are the windows in image pixels, already
    divided by the output stride (:func:`scale_box`). Each window is zero-padded into place
    at its top-left corner with its own logit size (out-of-place ``F.pad``, as the reference,
    which also keeps an exported graph small); the grid ends where the last window ends.
    Returns (batch, K, H, W), the mean over the windows covering each cell.
    """
    h, w = window_logits.shape[-2:]
    height = max(y1 + h for y1, _, _, _ in boxes)
    width = max(x1 + w for _, _, x1, _ in boxes)
    ones = window_logits.new_ones((1, 1, h, w))
    total = count = None
    for i, (y1, _, x1, _) in enumerate(boxes):
        pad = (x1, width - x1 - w, y1, height - y1 - h)
        part = F.pad(window_logits[i * batch : (i + 1) * batch], pad)
        covered = F.pad(ones, pad)
        total = part if total is None else total + part
        count = covered if count is None else count + covered
    # No zero count: slide_windows refuses strides larger than the crop.
    return total / count


# --------------------------------------------------------------------------- segmenter


class HRDASegmenter(Segmenter):
    """A Segmenter whose :meth:`forward` is HRDA's multi-resolution ``encode_decode``.

    ``forward(images (B, 3, H, W)) -> fused logits (B, K, h, w)`` on the stride-4 detail grid:
    h = H // 4 (ceil(H / 4) where H is below the detail crop), the grid the reference's
    ``decode_hr`` builds. :meth:`Segmenter.predict` resizes them to the input (``whole``) or
    runs them per outer window (``slide``, the 1024/512 protocol), unchanged.
    """

    def __init__(self, backbone: nn.Module, decode_head: HRDAHead, hrda: HRDAConfig):
        super().__init__(backbone, decode_head)
        if hrda.fusion not in FUSION_MODES:
            raise ValueError(
                f"unknown model.hrda.fusion {hrda.fusion!r}; known: {', '.join(FUSION_MODES)}"
            )
        if not 0 < hrda.context_scale <= 1:
            raise ValueError(
                f"model.hrda.context_scale must be in (0, 1], got {hrda.context_scale}"
            )
        self.hrda = hrda

    def context_pass(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The downscaled view: ``(logits (B, K, h, w), fused (B, F, h, w), attention
        (B, K or 1, h, w))`` with h = ceil(H * context_scale / 4).

        Downscaling is ``interpolate(scale_factor=context_scale)``, bilinear, align_corners=False,
        as the reference (so an odd side rounds down).
        """
        scaled = images
        if self.hrda.context_scale != 1:
            scaled = F.interpolate(
                images, scale_factor=self.hrda.context_scale, mode="bilinear", align_corners=False
            )
        self._check_size(scaled, "context view")
        features = self.backbone(scaled)
        logits, fused = self.decode_head.head.forward_with_features(features)
        return logits, fused, self.decode_head.attention(features)

    def detail_logits(self, images: Tensor) -> Tensor:
        """Full-resolution logits on the stride-4 grid: (B, K, h, w), h = H // 4 (see above).

        With ``detail_slide`` the window is cut by :func:`slide_windows` into
        ``detail_crop_size`` crops every ``detail_stride``; all crops go through backbone and
        head as one batch, and :func:`stitch_windows` averages them. Otherwise one pass.
        """
        head = self.decode_head.head
        if not self.hrda.detail_slide:
            return head(self.backbone(images))
        batch, _, height, width = images.shape
        windows = slide_windows(
            height, width, tuple(self.hrda.detail_crop_size), tuple(self.hrda.detail_stride)
        )
        crops = torch.cat([crop(images, box) for box in windows])
        self._check_size(crops, "detail crops")
        logits = head(self.backbone(crops))
        boxes = [scale_box(box, head.output_stride) for box in windows]
        return stitch_windows(logits, boxes, batch)

    def forward_with_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B, 3, H, W) -> (fused logits (B, K, h, w), features (B, F, h, w))``.

        ``features`` are the context view's decoder map resized to the detail grid (bilinear,
        align_corners=True, as CLUDA's ``f_LR``): the single map a feature consumer gets at
        inference time; the training step builds its own from the two passes.
        """
        context_logits, context_fused, attention = self.context_pass(images)
        detail = self.detail_logits(images)
        fused = fuse_scales(context_logits, detail, attention, self.hrda.fusion)
        features = F.interpolate(
            context_fused, size=detail.shape[-2:], mode="bilinear", align_corners=True
        )
        return fused, features

    def forward(self, images: Tensor) -> Tensor:
        """``images (B, 3, H, W) -> fused logits (B, K, h, w)`` on the stride-4 detail grid."""
        context_logits, _, attention = self.context_pass(images)
        detail = self.detail_logits(images)
        return fuse_scales(context_logits, detail, attention, self.hrda.fusion)

    def _check_size(self, images: Tensor, what: str) -> None:
        minimum = getattr(self.backbone, "min_input_size", 1)
        if min(images.shape[-2:]) < minimum:
            raise ValueError(
                f"HRDA {what} are {tuple(images.shape[-2:])} px but the backbone needs at least "
                f"{minimum}x{minimum}; the context view is the window at "
                f"{self.hrda.context_scale}x, so use larger windows (eval.crop_size) or inputs"
            )


def hrda_segmenter(
    backbone: nn.Module, head: DecodeHead, num_classes: int, hrda: HRDAConfig, dropout: float = 0.1
) -> HRDASegmenter:
    """Wrap ``backbone`` + single-scale ``head`` with a scale-attention head (one map per class,
    or one for all) built for the backbone's channels."""
    scale_attention = ConvFusionHead(
        backbone.channels, backbone.strides, num_classes if hrda.attention_classwise else 1,
        embed_dim=hrda.attention_embed_dim, channels=hrda.attention_embed_dim, dropout=dropout,
    )  # fmt: skip
    return HRDASegmenter(backbone, HRDAHead(head, scale_attention), hrda)


__all__ = [
    "Box",
    "ConvFusionHead",
    "HRDAHead",
    "HRDASegmenter",
    "box_mask",
    "crop",
    "fuse_scales",
    "hrda_segmenter",
    "insert_detail",
    "random_detail_box",
    "scale_box",
    "stitch_windows",
]
