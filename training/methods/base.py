"""The interface every UDA method implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cluda_deploy.models.hrda import HRDASegmenter


@dataclass
class StepBatch:
    """One step's inputs, already on the device.

    source_images: (B, 3, H, W) normalised; source_labels: (B, H, W) int64 train ids;
    target_images: (B, 3, H, W) or None when the method does not use the target domain.
    """

    source_images: torch.Tensor
    source_labels: torch.Tensor
    target_images: torch.Tensor | None = None
    target_extras: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepOutput:
    """Named loss terms (summed by the loop for one backward), scalars and images to log."""

    losses: dict[str, torch.Tensor]
    scalars: dict[str, float | torch.Tensor] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)


class SegmenterForward(nn.Module):
    """The student as the loop calls it (and DDP wraps it): one forward returning everything.

    ``images (B, 3, H, W) -> (logits (B, K, h, w), fused (B, C_f, h, w), backbone features
    [(B, C_i, H / s_i, W / s_i)])``; ``fused`` is the decoder map the classifier reads.
    """

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    def forward(
        self, images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        features = self.segmenter.backbone_features(images)
        logits, fused = self.segmenter.decode_head.forward_with_features(features)
        return logits, fused, features


@dataclass
class Networks:
    """The networks a step may use.

    student: a :class:`SegmenterForward` (maybe DDP-wrapped), the only one with gradients;
    teacher: the EMA teacher segmenter (``teacher(images) -> logits``), or None;
    imnet_backbone: the frozen copy of the initial encoder (``-> list of maps``), or None.
    """

    student: nn.Module
    teacher: nn.Module | None = None
    imnet_backbone: nn.Module | None = None


class UDAMethod:
    """Base class: ``step`` returns the loss terms of one iteration."""

    name: str = "base"
    uses_target: bool = False
    uses_teacher: bool = False
    uses_imnet: bool = False

    def step(self, nets: Networks, batch: StepBatch, iteration: int) -> StepOutput:
        raise NotImplementedError

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Extra modules with parameters the optimizer must train (e.g. a style generator)."""
        return {}

    def optimizer_modules(self) -> dict[str, nn.Module]:
        """The trainable modules the segmenter's AdamW steps together with the student, named
        ``{key}.{parameter}`` for its head/no-decay rules (training/optim.py). By default all of
        :meth:`trainable_modules`; a method leaves out a module that has an optimizer of its own."""
        return self.trainable_modules()

    def student_forward(self, segmenter: nn.Module) -> nn.Module:
        """The module the loop calls (and DDP wraps) as ``nets.student``; a
        :class:`SegmenterForward` unless the method needs another view of the student (HRDA)."""
        if isinstance(segmenter, HRDASegmenter):
            raise ValueError(
                f"method {self.name!r} does not train HRDA models (model.hrda.enabled): use "
                "--method dacs or --method cluda, or --set model.hrda.enabled=false"
            )
        return SegmenterForward(segmenter)

    def state_modules(self) -> dict[str, nn.Module]:
        """Modules outside the segmenter's optimizer whose state a checkpoint keeps (top-level
        ``modules``) and ``--resume`` restores: e.g. a translator with its own optimizer, EMA
        copies of heads, prototype buffers. The loop moves them to the device."""
        return {}

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimizers the loop steps after the segmenter's, over ``state_modules`` parameters;
        built after those modules are on the device. Their state is saved for ``--resume``."""
        return {}
