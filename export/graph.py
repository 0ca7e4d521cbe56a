"""The module that gets exported: uint8 RGB batch in, train-id map (and optionally logits and
confidence) out, with the checkpoint's whole test-time protocol inside the graph.

``DeployModule.forward(images (N, H, W, 3) uint8 RGB)`` does, in this order, what
``cluda_deploy.inference.segment_logits`` does per image:

1. uint8 -> float, NHWC -> NCHW;
2. resize (bilinear, align_corners=False) to the inference size (:class:`SizeRule`);
3. normalise with the checkpoint's mean/std;
4. the network: whole-image (one forward, logits resized to the inference size) or, for
   static shapes only, sliding-window inference (``Segmenter.predict``);
5. logits resized (bilinear) back to (H, W);
6. ``labels = argmax`` as uint8, optional ``logits`` (N, C, H, W) float32 and ``confidence``
   (N, H, W) float32 = the largest softmax probability.

Every resize is unconditional (resizing to the same size is exact), so a dynamic-shape export has
no branch on the image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cluda_deploy.config import EvalConfig

OUTPUT_CHOICES = ("labels", "logits", "confidence")
HRDA_CHOICES = {
    "full": "HRDA's full multi-resolution inference (context + detail crops, scale attention): "
    "the checkpoint's accuracy, several network passes per window; needs --static HxW",
    "student": "the shared network at one scale on the whole image (no detail crops, no "
    "attention fusion): one pass, fastest, dynamic shapes allowed",
}


def keep_ratio_size(height, width, scale: Sequence[int]):
    """mmcv ``imrescale`` output size (DAFormer/HRDA test resize ``keep_ratio=True``), in integers.

    The image is scaled by ``min(long / max(h, w), short / min(h, w))`` and each side rounded half
    up, as ``cluda_deploy.data.transforms.rescale_size`` does in floating point. Here the rounding is
    exact integer arithmetic (``floor(side * a / b + 1/2) = (2 * side * a + b) // (2 * b)``), and
    ``floor(min(x, y) + 1/2) = min(floor(x + 1/2), floor(y + 1/2))`` removes the branch on which
    factor wins. So the sizes work both on ints and on symbolic sizes of a dynamic export
    (``torch.sym_min/sym_max``). It can differ from the float version by one pixel only at exact
    half-pixel ties that float rounding puts below .5 (8 of 908,544 sizes checked in the tests).

    ``(1024, 2048)`` with ``scale=(1024, 512)`` -> ``(512, 1024)``.
    """
    long_edge, short_edge = max(scale), min(scale)
    longer, shorter = torch.sym_max(height, width), torch.sym_min(height, width)

    def rescale(side):
        by_long = (2 * side * long_edge + longer) // (2 * longer)
        by_short = (2 * side * short_edge + shorter) // (2 * shorter)
        return torch.sym_min(by_long, by_short)

    return rescale(height), rescale(width)


@dataclass(frozen=True)
class SizeRule:
    """Where the network runs: ``native`` (the input size) or ``keep-ratio`` to ``scale``.

    ``scale`` is the checkpoint's ``eval.scale`` (long, short), e.g. (1024, 512): a 2048x1024
    Cityscapes frame runs at 1024x512, a 1914x1052 GTA5 frame at 932x512.
    """

    scale: tuple[int, int] | None

    @property
    def name(self) -> str:
        return "native" if self.scale is None else "keep-ratio"

    def __call__(self, height, width):
        if self.scale is None:
            return height, width
        return keep_ratio_size(height, width, self.scale)

    def describe(self) -> str:
        if self.scale is None:
            return "the network runs at the input size (no resize)"
        long_edge, short_edge = max(self.scale), min(self.scale)
        return (
            f"keep-ratio resize so that the long side <= {long_edge} and the short side <= "
            f"{short_edge}, one side touching (mmcv imrescale, rounded half up), bilinear; logits "
            "resized back to the input size"
        )


def resize(x: Tensor, size) -> Tensor:
    """Bilinear, align_corners=False, always (no shape test, so no branch in the exported graph)."""
    return F.interpolate(x, size=(size[0], size[1]), mode="bilinear", align_corners=False)


class DeployModule(nn.Module):
    """``images (N, H, W, 3) uint8 RGB -> labels (N, H, W) uint8 [, logits, confidence]``.

    ``network`` is a Segmenter (or HRDA's single-scale student). ``outputs`` is ``("labels",)``
    plus any of ``"logits"`` (N, C, H, W) float32 and ``"confidence"`` (N, H, W) float32, in
    that order. ``precision="fp16"`` runs the network in half precision (input normalised in fp32,
    logits back to fp32), for FP16 ONNX files that strongly typed TensorRT builds take.
    """

    def __init__(
        self,
        network: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        size_rule: SizeRule,
        eval_cfg: EvalConfig,
        outputs: Sequence[str] = ("labels",),
        precision: str = "fp32",
    ):
        super().__init__()
        if list(outputs[:1]) != ["labels"] or any(o not in OUTPUT_CHOICES for o in outputs):
            raise ValueError(f"outputs must be 'labels' then any of logits/confidence, got {outputs}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"DeployModule precision is fp32 or fp16, got {precision!r}")
        self.network = network.half() if precision == "fp16" else network
        self.size_rule = size_rule
        self.mode = eval_cfg.mode
        self.crop_size = tuple(eval_cfg.crop_size)
        self.stride = tuple(eval_cfg.stride)
        self.outputs = tuple(outputs)
        self.precision = precision
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def preprocess(self, images: Tensor) -> Tensor:
        """``(N, H, W, 3) uint8 -> (N, 3, h, w)`` normalised float at the inference size."""
        height, width = images.shape[1], images.shape[2]
        # Cast first: TensorRT takes a UINT8 network input only straight into a cast.
        x = images.float().permute(0, 3, 1, 2)
        if self.size_rule.scale is not None:
            x = resize(x, self.size_rule(height, width))
        return (x - self.mean) / self.std

    def segment(self, x: Tensor, out_size) -> Tensor:
        """Normalised ``(N, 3, h, w) -> logits (N, C, *out_size)`` float32."""
        if self.precision == "fp16":
            x = x.half()
        if self.mode == "whole":
            # As Segmenter.predict + segment_logits: to the inference size, then to the input size.
            logits = resize(resize(self.network(x), x.shape[-2:]), out_size)
        else:
            logits = self.network.predict(
                x, mode=self.mode, crop_size=self.crop_size, stride=self.stride, out_size=out_size
            )
        return logits.float()

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out_size = (images.shape[1], images.shape[2])
        logits = self.segment(self.preprocess(images), out_size)
        results = {"labels": logits.argmax(dim=1).to(torch.uint8)}
        if "logits" in self.outputs:
            results["logits"] = logits
        if "confidence" in self.outputs:
            results["confidence"] = logits.softmax(dim=1).amax(dim=1)
        return tuple(results[name] for name in self.outputs)


def select_network(model: nn.Module, hrda: str | None) -> tuple[nn.Module, str | None]:
    """The module the graph runs, and the HRDA mode used (None for a plain segmenter).

    An :class:`~cluda_deploy.models.HRDASegmenter` runs either ``full`` (the model itself: each
    window is its context + detail fusion, what ``cluda evaluate`` measures; the default) or
    ``student``: a plain :class:`Segmenter` of the same backbone and single-scale DAFormer head
    (``decode_head.head``), run once on the whole image at the inference size.
    """
    from cluda_deploy.models import HRDASegmenter, Segmenter

    if not isinstance(model, HRDASegmenter):
        if hrda is not None:
            raise ValueError(
                f"--hrda {hrda} applies to HRDA checkpoints, and this one is a plain "
                f"{type(model).__name__}; drop --hrda"
            )
        return model, None
    mode = hrda or "full"
    if mode not in HRDA_CHOICES:
        raise ValueError(f"unknown --hrda {mode!r}; choose {' or '.join(HRDA_CHOICES)}")
    if mode == "full":
        return model, mode
    return Segmenter(model.backbone, model.decode_head.head).eval(), mode


def needs_static_shape(mode: str, hrda: str | None) -> str | None:
    """Why an export must be static (window grids depend on the image size), or None."""
    if hrda == "full":
        return "HRDA full inference crops detail windows whose number depends on the image size"
    if mode == "slide":
        return "sliding-window inference (eval.mode=slide) has a window grid that depends on the image size"
    return None
