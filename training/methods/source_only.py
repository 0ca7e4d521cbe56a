"""Source-only baseline: supervised cross-entropy on source crops, target ignored.

On an HRDA model (``model.hrda.enabled``) the loss is HRDA's multi-resolution one on the source
crop (0.9 CE(fused) + 0.1 CE(detail)), the baseline HRDA's own source-only row trains.
"""

from __future__ import annotations

from torch import nn

from cluda_deploy.config import Config
from cluda_deploy.models.hrda import HRDASegmenter
from training.hrda import HRDATrainForward, hrda_seg_loss
from training.losses import seg_cross_entropy
from training.methods.base import Networks, StepBatch, StepOutput, UDAMethod


class SourceOnly(UDAMethod):
    name = "source-only"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def student_forward(self, segmenter: nn.Module) -> nn.Module:
        if isinstance(segmenter, HRDASegmenter):
            return HRDATrainForward(segmenter)
        return super().student_forward(segmenter)

    def step(self, nets: Networks, batch: StepBatch, iteration: int) -> StepOutput:
        if self.cfg.model.hrda.enabled:
            views = nets.student(batch.source_images)
            fused, detail = hrda_seg_loss(
                views, batch.source_labels, None, self.cfg.uda.hrda_detail_loss_weight
            )
            losses = {"source_ce": fused, "source_detail_ce": detail}
            return StepOutput(losses=losses, images={"source_logits": views.fused_logits})
        logits, _, _ = nets.student(batch.source_images)
        loss = seg_cross_entropy(logits, batch.source_labels)
        return StepOutput(losses={"source_ce": loss}, images={"source_logits": logits})
