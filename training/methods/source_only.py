"""Source-only baseline: supervised cross-entropy on source crops, target ignored."""

from __future__ import annotations

from cluda_deploy.config import Config
from training.losses import seg_cross_entropy
from training.methods.base import Networks, StepBatch, StepOutput, UDAMethod


class SourceOnly(UDAMethod):
    name = "source-only"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def step(self, nets: Networks, batch: StepBatch, iteration: int) -> StepOutput:
        logits, _, _ = nets.student(batch.source_images)
        loss = seg_cross_entropy(logits, batch.source_labels)
        return StepOutput(losses={"source_ce": loss}, images={"source_logits": logits})
