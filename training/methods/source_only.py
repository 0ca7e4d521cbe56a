"""Source-only baseline: supervised cross-entropy on source crops, target ignored."""

from __future__ import annotations

from torch import nn

from cluda_deploy.config import Config
from training.losses import seg_cross_entropy
from training.methods.base import StepBatch, StepOutput, UDAMethod


class SourceOnly(UDAMethod):
    name = "source-only"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def step(
        self, student: nn.Module, teacher: nn.Module | None, batch: StepBatch, iteration: int
    ) -> StepOutput:
        logits = student(batch.source_images)
        loss = seg_cross_entropy(logits, batch.source_labels)
        return StepOutput(losses={"source_ce": loss}, images={"source_logits": logits})
