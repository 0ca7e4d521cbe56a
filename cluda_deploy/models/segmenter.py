"""Segmenter = backbone + decode head, with whole-image and sliding-window inference.

Attribute names follow mmseg's ``EncoderDecoder`` (``backbone``, ``decode_head``), so a Segmenter
state_dict has the key layout of a bare mmseg segmentor (backbone keys differ only for MiT, which
comes from transformers; see ``mit.py``).

Images are float tensors ``(B, 3, H, W)``, already normalised (ImageNet mean/std).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PREDICT_MODES = ("whole", "slide")


class Segmenter(nn.Module):
    """``backbone: images -> list of maps`` (with ``channels``/``strides``) + ``decode_head``."""

    def __init__(self, backbone: nn.Module, decode_head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head

    @property
    def num_classes(self) -> int:
        return self.decode_head.num_classes

    @property
    def output_stride(self) -> int:
        """Logits of ``forward`` are ``ceil(H / output_stride)`` high (4 for DAFormer, 8 for DLV2)."""
        return self.decode_head.output_stride

    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """``images (B, 3, H, W) -> [(B, C_i, H / s_i, W / s_i)]`` for ``backbone.strides`` s_i."""
        return self.backbone(images)

    def forward_with_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (B, 3, H, W) -> (logits (B, K, h, w), fused (B, decode_head.fused_channels, h, w))``.

        ``h = H / output_stride``; ``fused`` is the map the classifier reads (for DAFormer the
        sep-ASPP bottleneck output, before dropout), used by the CLUDA contrastive loss.
        """
        return self.decode_head.forward_with_features(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor:
        """``images (B, 3, H, W) -> logits (B, K, H / output_stride, W / output_stride)``."""
        return self.decode_head(self.backbone(images))

    def features(self, images: Tensor) -> Tensor:
        """The fused decoder map only: ``(B, decode_head.fused_channels, h, w)``."""
        return self.forward_with_features(images)[1]

    def predict(
        self,
        images: Tensor,
        mode: str = "whole",
        crop_size: Sequence[int] | None = None,
        stride: Sequence[int] | None = None,
        out_size: Sequence[int] | None = None,
        window_batch: int = 1,
    ) -> Tensor:
        """Logits ``(B, K, H, W)`` at the input size, or ``(B, K, *out_size)``; any H, W.

        ``whole``: one forward, logits resized bilinearly (align_corners=False) to (H, W).
        ``slide``: mmseg ``slide_inference``: windows of ``crop_size`` (h, w) every ``stride``
        (h, w), the last one aligned to the border, each window's logits resized to the window
        and averaged where windows overlap; an image smaller than the crop is one window.
        ``window_batch`` windows go through the network together (HRDA's ``batched_slide``).
        Then, as mmseg does, logits are resized once more to ``out_size`` if given.

        Neither the train/eval mode nor gradients are changed: call ``model.eval()`` and wrap
        in ``torch.no_grad()`` for inference.
        """
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        size = tuple(images.shape[-2:])
        if mode == "whole":
            logits = resize(self(images), size)
        elif mode == "slide":
            if crop_size is None or stride is None:
                raise ValueError("slide inference needs crop_size and stride, both (h, w)")
            if window_batch < 1:
                raise ValueError(f"window_batch must be >= 1, got {window_batch}")
            logits = self._slide(images, _pair(crop_size), _pair(stride), window_batch)
        else:
            raise ValueError(f"unknown predict mode {mode!r}; known: {', '.join(PREDICT_MODES)}")
        if out_size is not None and tuple(out_size) != size:
            logits = resize(logits, tuple(out_size))
        return logits

    def _slide(
        self, images: Tensor, crop_size: tuple[int, int], stride: tuple[int, int], window_batch: int
    ) -> Tensor:
        batch, _, height, width = images.shape
        windows = slide_windows(height, width, crop_size, stride)
        logits_sum = images.new_zeros((batch, self.num_classes, height, width))
        count = images.new_zeros((1, 1, height, width))
        for start in range(0, len(windows), window_batch):
            chunk = windows[start : start + window_batch]
            crops = [images[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in chunk]
            # Every window has the same size (the crop, clipped to the image), so they stack.
            window_logits = resize(self(torch.cat(crops)), crops[0].shape[-2:])
            for i, (y1, y2, x1, x2) in enumerate(chunk):
                logits_sum[:, :, y1:y2, x1:x2] += window_logits[i * batch : (i + 1) * batch]
                count[:, :, y1:y2, x1:x2] += 1
        return logits_sum / count


def slide_windows(
    height: int, width: int, crop_size: tuple[int, int], stride: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
    """Windows ``(y1, y2, x1, x2)`` of mmseg's ``slide_inference`` over an ``height x width`` image.

    ``ceil((H - crop) / stride) + 1`` rows of windows (at least one), starting every ``stride``;
    a window past the border is shifted back to end at it; a crop larger than the image is
    clipped to the image. Together the windows cover every pixel when ``stride <= crop``.
    """
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    if min(h_crop, w_crop, h_stride, w_stride) <= 0:
        raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
    if h_stride > h_crop or w_stride > w_crop:
        raise ValueError(f"stride {stride} larger than crop_size {crop_size} would leave gaps")
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


def resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of ``(B, C, h, w)`` maps to ``size`` (align_corners=False, as mmseg)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def _pair(value: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    height, width = value
    return int(height), int(width)
