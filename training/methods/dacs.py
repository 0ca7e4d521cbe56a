"""DAFormer self-training ("dacs"): one step of research/cluda.md section 2.3, single-scale or
HRDA multi-resolution (section 3), optionally with MIC (section 5).

1. source pass: student on the source crops, cross-entropy against the labels, plus the
   thing-class ImageNet feature distance of its last encoder map (lambda 0.005);
2. pseudo-labels: the EMA teacher (dropout off, batch statistics) on the target crops: argmax
   labels and one confidence weight for the batch, zeroed on the crop margins;
3. ClassMix of source into target (images, labels, weights), then colour jitter and blur;
4. mixed pass: student on the mixed images, cross-entropy weighted per pixel;
5. with ``uda.mic``: the masked target pass of MIC against the same pseudo-labels and weights.

L = CE_src + lambda_FD * FD + CE_mix (+ lambda_MIC * CE_masked). The loop sums the terms for one
backward and owns the teacher's EMA update; subclasses add loss terms on the passes.

With ``model.hrda.enabled`` the student is called through :class:`training.hrda.HRDATrainForward`
(context view + one detail crop per pass): every CE above becomes HRDA's
``0.9 CE(fused) + 0.1 CE(detail)`` (terms ``*_ce`` and ``*_detail_ce``), the feature distance is
taken on the context view only, the teacher is the :class:`HRDASegmenter` itself (its forward is
the full multi-resolution inference over the crop, so the pseudo-labels are high-resolution),
and after ``uda.hrda_entropy_crop_start`` iterations the mixed pass takes its detail crop where
the context prediction is most uncertain (CLUDA's release).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config
from training.augment import strong_augment
from training.classmix import class_masks, mix
from training.ema import set_teacher_mode
from training.feature_distance import thing_feature_distance
from training.hrda import HRDATrainForward, HRDAViews, context_feature_distance, hrda_seg_loss
from training.losses import seg_cross_entropy
from training.methods.base import Networks, StepBatch, StepOutput, UDAMethod
from training.mic import masked_consistency_terms, masked_target_images
from training.pseudo_label import confidence_weight, pseudo_labels, pseudo_weight_map


@dataclass
class StudentPass:
    """One student forward, single-scale or HRDA.

    logits: (B, K, h, w) the prediction (HRDA: fused, on the stride-4 grid of the crop);
    encoder_map: (B, C, h_e, w_e) the last encoder map the feature distance reads (HRDA: of the
    context view); fused: (B, F, h, w) the single-scale decoder map, or None with HRDA;
    views: everything the HRDA forward produced, or None.
    """

    logits: torch.Tensor
    encoder_map: torch.Tensor
    fused: torch.Tensor | None = None
    views: HRDAViews | None = None


def prefixed(prefix: str, terms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{f"{prefix}_{name}": value}``: the loop logs each term under its own name."""
    return {f"{prefix}_{name}": value for name, value in terms.items()}


class DACS(UDAMethod):
    name = "dacs"
    uses_target = True
    uses_teacher = True

    def __init__(self, cfg: Config) -> None:
        self.cfg, self.uda = cfg, cfg.uda
        self.uses_imnet = cfg.uda.fd_lambda > 0
        self.hrda = cfg.model.hrda.enabled
        if not 0 <= cfg.uda.hrda_detail_loss_weight <= 1:
            raise ValueError(
                f"uda.hrda_detail_loss_weight must be in [0, 1], got "
                f"{cfg.uda.hrda_detail_loss_weight} (HRDA: 0.1)"
            )

    # ----------------------------------------------------------------- the student's passes

    def weighting_head(self) -> nn.Module | None:
        """A training-only head the HRDA forward also runs (CLUDA's ``feat_weighter``)."""
        return None

    def student_forward(self, segmenter: nn.Module) -> nn.Module:
        if self.hrda:
            return HRDATrainForward(segmenter, self.weighting_head())
        return super().student_forward(segmenter)

    def forward_student(
        self, student: nn.Module, images: torch.Tensor, entropy_crop: bool = False
    ) -> StudentPass:
        """One pass of ``nets.student`` over ``images (B, 3, H, W)``; ``entropy_crop`` picks the
        HRDA detail crop by context entropy instead of at random."""
        if self.hrda:
            views = student(images, entropy_crop=entropy_crop)
            return StudentPass(views.fused_logits, views.context_features[-1], views=views)
        logits, fused, features = student(images)
        return StudentPass(logits, features[-1], fused=fused)

    def seg_losses(
        self, out: StudentPass, labels: torch.Tensor, weight: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``{"ce"}`` (single-scale) or HRDA's ``{"ce": 0.9 CE(fused), "detail_ce": 0.1
        CE(detail)}`` of a pass against ``labels (B, H, W)`` with pixel ``weight (B, H, W)``."""
        if out.views is None:
            return {"ce": seg_cross_entropy(out.logits, labels, weight)}
        fused, detail = hrda_seg_loss(out.views, labels, weight, self.uda.hrda_detail_loss_weight)
        return {"ce": fused, "detail_ce": detail}

    def class_mix(
        self, source_images: torch.Tensor, source_labels: torch.Tensor,
        target_images: torch.Tensor, target_labels: torch.Tensor, target_weight: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """ClassMix of half the source classes onto the target (images (B, 3, H, W), labels and
        pixel weights (B, H, W); source pixels weigh 1), then the strong augmentation of the
        mixed images. Returns ``(masks, mixed_images, mixed_labels, mixed_weight)``."""
        uda = self.uda
        masks = class_masks(source_labels)
        mixed_images = strong_augment(
            mix(masks, source_images, target_images), IMAGENET_MEAN, IMAGENET_STD,
            color_jitter_prob=uda.color_jitter_prob,
            color_jitter_strength=uda.color_jitter_strength,
            blur_prob=uda.blur_prob, blur_sigma=tuple(uda.blur_sigma),
        )  # fmt: skip
        mixed_labels = mix(masks, source_labels, target_labels)
        mixed_weight = mix(masks, torch.ones_like(target_weight), target_weight)
        return masks, mixed_images, mixed_labels, mixed_weight

    def entropy_crop(self, iteration: int) -> bool:
        """CLUDA's entropy-guided detail crop for the mixed pass: HRDA, after the start."""
        start = self.uda.hrda_entropy_crop_start
        return self.hrda and start is not None and iteration > start

    # ----------------------------------------------------------------- one step

    def step(self, nets: Networks, batch: StepBatch, iteration: int) -> StepOutput:
        if batch.target_images is None or nets.teacher is None:
            raise ValueError(f"method {self.name!r} needs target images and a teacher")
        uda = self.uda
        losses: dict[str, torch.Tensor] = {}
        source = self.forward_student(nets.student, batch.source_images)
        losses.update(prefixed("source", self.seg_losses(source, batch.source_labels)))
        if self.uses_imnet:
            losses["feature_distance"] = uda.fd_lambda * self.feature_distance(
                nets.imnet_backbone, batch, source.encoder_map
            )
        losses.update(self.source_terms(source, batch.source_labels))

        target_labels, target_weight, quality = self.pseudo_label(nets.teacher, batch.target_images)
        masks, mixed_images, mixed_labels, mixed_weight = self.class_mix(
            batch.source_images, batch.source_labels, batch.target_images, target_labels,
            target_weight,
        )  # fmt: skip

        mixed = self.forward_student(nets.student, mixed_images, self.entropy_crop(iteration))
        losses.update(prefixed("mix", self.seg_losses(mixed, mixed_labels, mixed_weight)))
        losses.update(self.mixed_terms(mixed, mixed_labels, mixed_weight))
        images = {
            "source_logits": source.logits, "pseudo_label": target_labels,
            "mixed_image": mixed_images, "mixed_label": mixed_labels,
            "mixed_logits": mixed.logits,
        }  # fmt: skip
        if uda.mic:
            mic_terms, masked = self.masked_target_terms(
                nets.student, batch.target_images, target_labels, target_weight
            )
            losses.update(mic_terms)
            images["mic_masked_image"] = masked
        return StepOutput(losses=losses, scalars={"pseudo_weight": quality}, images=images)

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
        """Unweighted thing-class FD of the student's last encoder map vs the frozen encoder's
        (HRDA: both on the context view, ``feature_scale=0.5``)."""
        if imnet_backbone is None:
            raise ValueError(
                "feature distance needs the frozen ImageNet encoder (uda.fd_lambda > 0)"
            )
        uda, num_classes = self.uda, self.cfg.model.num_classes
        if self.hrda:
            return context_feature_distance(
                imnet_backbone, batch.source_images, batch.source_labels, student_map,
                self.cfg.model.hrda.context_scale, uda.fd_classes, uda.fd_min_ratio, num_classes,
            )  # fmt: skip
        with torch.no_grad():
            frozen_map = imnet_backbone(batch.source_images)[-1]
        return thing_feature_distance(
            student_map, frozen_map, batch.source_labels, uda.fd_classes, uda.fd_min_ratio,
            num_classes,
        )  # fmt: skip

    def masked_target_terms(
        self,
        student: nn.Module,
        target_images: torch.Tensor,
        labels: torch.Tensor,
        weight: torch.Tensor,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """MIC (training/mic.py): the target crops freshly augmented and block-masked, the
        student's segmentation loss on them (HRDA: a fresh detail box, with the detail term)
        against the teacher's ``labels (B, H, W)`` and ``weight (B, H, W)``, times
        ``uda.mic_weight``. Returns ``({"mic_ce", ...}, masked images (B, 3, H, W))``."""
        uda = self.uda
        masked = masked_target_images(
            target_images, IMAGENET_MEAN, IMAGENET_STD, block_size=uda.mic_patch,
            ratio=uda.mic_ratio, color_jitter_prob=uda.color_jitter_prob,
            color_jitter_strength=uda.color_jitter_strength, blur_prob=uda.blur_prob,
            blur_sigma=tuple(uda.blur_sigma),
        )  # fmt: skip

        def seg_loss(images, pseudo, pixel_weight):
            return self.seg_losses(self.forward_student(student, images), pseudo, pixel_weight)

        terms = masked_consistency_terms(seg_loss, masked, labels, weight, uda.mic_weight, "mic")
        return terms, masked

    def source_terms(self, out: StudentPass, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Extra losses on the source pass (none for plain DAFormer)."""
        return {}

    def mixed_terms(
        self, out: StudentPass, labels: torch.Tensor, weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Extra losses on the mixed pass (none for plain DAFormer)."""
        return {}
