"""DAFormer self-training ("dacs"): one step of research/cluda.md section 2.3.

1. source pass: student on the source crops, cross-entropy against the labels, plus the
   thing-class ImageNet feature distance of its last encoder map (lambda 0.005);
2. pseudo-labels: the EMA teacher (dropout off, batch statistics) on the target crops: argmax
   labels and one confidence weight for the batch, zeroed on the crop margins;
3. ClassMix of source into target (images, labels, weights), then colour jitter and blur;
4. mixed pass: student on the mixed images, cross-entropy weighted per pixel.

L = CE_src + lambda_FD * FD + CE_mix. The loop sums the terms for one backward and owns the
teacher's EMA update; subclasses add loss terms on the two passes' fused decoder maps.
"""

from __future__ import annotations

import torch
from torch import nn

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config
from training.augment import strong_augment
from training.classmix import class_masks, mix
from training.ema import set_teacher_mode
from training.feature_distance import thing_feature_distance
from training.losses import seg_cross_entropy
from training.methods.base import Networks, StepBatch, StepOutput, UDAMethod
from training.pseudo_label import confidence_weight, pseudo_labels, pseudo_weight_map


class DACS(UDAMethod):
    name = "dacs"
    uses_target = True
    uses_teacher = True

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.uda = cfg, cfg.uda
        self.uses_imnet = cfg.uda.fd_lambda > 0

    def step(self, nets: Networks, batch: StepBatch, iteration: int) -> StepOutput:
        if batch.target_images is None or nets.teacher is None:
            raise ValueError(f"method {self.name!r} needs target images and a teacher")
        losses: dict[str, torch.Tensor] = {}
        source_logits, source_fused, source_features = nets.student(batch.source_images)
        losses["source_ce"] = seg_cross_entropy(source_logits, batch.source_labels)
        if self.uses_imnet:
            losses["feature_distance"] = self.uda.fd_lambda * self.feature_distance(
                nets.imnet_backbone, batch, source_features[-1]
            )
        losses.update(self.source_terms(source_fused, batch.source_labels))

        target_labels, target_weight, quality = self.pseudo_label(nets.teacher, batch.target_images)
        masks = class_masks(batch.source_labels)
        mixed_images = strong_augment(
            mix(masks, batch.source_images, batch.target_images), IMAGENET_MEAN, IMAGENET_STD,
            color_jitter_prob=self.uda.color_jitter_prob,
            color_jitter_strength=self.uda.color_jitter_strength,
            blur_prob=self.uda.blur_prob, blur_sigma=tuple(self.uda.blur_sigma),
        )  # fmt: skip
        mixed_labels = mix(masks, batch.source_labels, target_labels)
        mixed_weight = mix(masks, torch.ones_like(target_weight), target_weight)

        mixed_logits, mixed_fused, _ = nets.student(mixed_images)
        losses["mix_ce"] = seg_cross_entropy(mixed_logits, mixed_labels, mixed_weight)
        losses.update(self.mixed_terms(mixed_fused, mixed_labels, mixed_weight))
        return StepOutput(
            losses=losses,
            scalars={"pseudo_weight": quality},
            images={
                "source_logits": source_logits, "pseudo_label": target_labels,
                "mixed_image": mixed_images, "mixed_label": mixed_labels,
                "mixed_logits": mixed_logits,
            },
        )  # fmt: skip

    def pseudo_label(
        self, teacher: nn.Module, target_images: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(labels (B, H, W), pixel weights (B, H, W), confidence share ())`` from the teacher."""
        set_teacher_mode(teacher)
        with torch.no_grad():
            logits = teacher(target_images)
        labels, confidence = pseudo_labels(logits, tuple(target_images.shape[-2:]))
        quality = confidence_weight(confidence, self.uda.pseudo_threshold)
        weight = pseudo_weight_map(
            quality, tuple(labels.shape), self.uda.pseudo_ignore_top, self.uda.pseudo_ignore_bottom
        )
        return labels, weight, quality

    def feature_distance(
        self, imnet_backbone: nn.Module | None, batch: StepBatch, student_map: torch.Tensor
    ) -> torch.Tensor:
        """Unweighted thing-class FD of the student's last encoder map vs the frozen encoder's."""
        if imnet_backbone is None:
            raise ValueError(
                "feature distance needs the frozen ImageNet encoder (uda.fd_lambda > 0)"
            )
        with torch.no_grad():
            frozen_map = imnet_backbone(batch.source_images)[-1]
        return thing_feature_distance(
            student_map, frozen_map, batch.source_labels, self.uda.fd_classes,
            self.uda.fd_min_ratio, self.cfg.model.num_classes,
        )  # fmt: skip

    def source_terms(self, fused: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra losses on the source pass's fused map (none for plain DAFormer)."""
        return {}

    def mixed_terms(
        self, fused: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Extra losses on the mixed pass's fused map (none for plain DAFormer)."""
        return {}
