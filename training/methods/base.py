"""The interface every UDA method implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


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


class UDAMethod:
    """Base class: ``step`` returns the loss terms of one iteration."""

    name: str = "base"
    uses_target: bool = False
    uses_teacher: bool = False

    def step(
        self, student: nn.Module, teacher: nn.Module | None, batch: StepBatch, iteration: int
    ) -> StepOutput:
        raise NotImplementedError

    def trainable_modules(self) -> dict[str, nn.Module]:
        """Extra modules with parameters the optimizer must train (e.g. a style generator)."""
        return {}
