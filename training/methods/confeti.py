"""CONFETI ("Contrast, Stylize and Adapt"): DAFormer self-training on CUT-stylised source crops,
with cross-domain prototypes, pixel-to-prototype contrast and a semantically consistent translator.

One step (research/confeti.md section 4; cxa9264/CONFETI ``dacs.py``), t = ``iteration``:

1. EMA of the CAM and projection heads (the teacher's rule; the loop updates the teacher);
2. translate the source crops to the target style: stage 1 ``G(cat(A, B))`` with a graph
   (``fake_B``, ``idt_B``), stage 2 the frozen ``G(A)``;
3. pseudo-labels of the target crops from the EMA teacher (DACS);
4. ClassMix of the *stylised* source into the target, then colour jitter and blur (DACS);
5. prototype update from the EMA teacher's projected features of the mixed images (source-only
   pixels with unit weights until ``proto_warmup_iters``, then every pixel weighted by the EMA CAM);
6. source pass on the stylised crops: CE, CAM BCE, FD against the frozen encoder on the
   *original* crops, and (t > ``contrast_start``) pixel-to-prototype contrast + regulariser;
7. stage 1: the prototypical semantic consistency of G, CUT's generator losses and its
   discriminator loss;
8. mixed pass: weighted CE, CAM BCE (t > ``cam_mix_start``), contrast + regulariser
   (t > ``contrast_start``);
9. stage 1: contrast + regulariser on the target crops with the raw pseudo-labels, scaled by the
   pseudo-label confidence share (t > ``contrast_start``, ``target_contrast``).

The loop sums every term for one backward, then steps the segmenter's AdamW (student and heads)
and the translator's Adam (stage 1). The reference's gates differ by one iteration between
passes (``> 3000`` for source and target, ``>= 3000`` for mixed); here all use ``>``.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config
from training.confeti.consistency import consistency_term
from training.confeti.generator_io import (
    GENERATOR_PREFIX,
    STYLE_MODULE,
    read_style_state,
    split_state,
)
from training.confeti.heads import ConfetiHeads, cam_loss
from training.confeti.proto_contrast import prototype_contrast_terms
from training.confeti.prototypes import ClassPrototypes, prototype_pixel_weights
from training.confeti.style import (
    build_style_optimizer,
    from_tanh_range,
    style_from_config,
    to_tanh_range,
)
from training.ema import ema_alpha, ema_update, set_teacher_mode
from training.losses import seg_cross_entropy
from training.methods.base import Networks, StepBatch, StepOutput
from training.methods.dacs import DACS

STAGES = (1, 2)


def fused_channels(cfg: Config) -> int:
    """Channels of the map the student's classifier reads (2048 for DeepLabV2 / ResNet-101),
    from a weightless build on the meta device."""
    from cluda_deploy.models import create_segmenter

    with torch.device("meta"):
        model = create_segmenter(dataclasses.replace(cfg.model, pretrained=None))
    return model.decode_head.fused_channels


def unwrap_segmenter(student: nn.Module) -> nn.Module:
    """The Segmenter inside the loop's ``SegmenterForward`` (maybe DDP-wrapped)."""
    return getattr(student, "module", student).segmenter


class Confeti(DACS):
    name = "confeti"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        conf = cfg.confeti
        if conf.stage not in STAGES:
            raise ValueError(
                f"confeti.stage={conf.stage} runs no single stage; 'cluda adapt' runs the whole "
                f"schedule with confeti.stage=0, or set it to one of {STAGES}"
            )
        if cfg.uda.mic:
            raise ValueError("MIC is not implemented with CONFETI; set uda.mic=false (no --mic)")
        if cfg.model.hrda.enabled:
            raise ValueError("CONFETI is implemented for single-scale segmenters; set "
                             "model.hrda.enabled=false")  # fmt: skip
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise ValueError("CONFETI trains on one device, as the reference does (its heads and "
                             "translator are not synchronised across ranks); run without torchrun")  # fmt: skip
        self.conf, self.stage = conf, conf.stage
        self.train_style = conf.stage == 1
        num_classes = cfg.model.num_classes
        self.heads = ConfetiHeads(fused_channels(cfg), num_classes, conf.proto_dim)
        self.ema_heads = copy.deepcopy(self.heads.ema_pair()).requires_grad_(False)
        self.prototypes = ClassPrototypes(
            num_classes, conf.proto_dim, conf.proto_momentum, conf.proto_top_k
        )
        self.style = style_from_config(cfg.confeti.style, with_critics=self.train_style)
        if conf.generator:
            self.load_translator(conf.generator)
        if not self.train_style:
            self.style.requires_grad_(False).eval()
        self.style_optimizer: torch.optim.Optimizer | None = None

    # ----------------------------------------------------------------- modules and optimizers

    def trainable_modules(self) -> dict[str, nn.Module]:
        """The CAM and projection heads and ``reg_proj``: trained by the segmenter's AdamW (the
        reference's mmseg optimizer, lr x10 for 'head' and 'reg_proj')."""
        return {"confeti_heads": self.heads}

    def state_modules(self) -> dict[str, nn.Module]:
        """The translator (its own Adam in stage 1, frozen in stage 2), the heads' EMA copies and
        the prototypes: saved in every checkpoint's ``modules`` and restored by ``--resume``."""
        return {
            STYLE_MODULE: self.style,
            "confeti_ema_heads": self.ema_heads,
            "confeti_prototypes": self.prototypes,
        }

    def extra_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Stage 1: CUT's Adam over G, D and F (built once, after the loop moved them)."""
        if not self.train_style:
            return {}
        if self.style_optimizer is None:
            s = self.conf.style
            self.style_optimizer = build_style_optimizer(self.style, s.lr, tuple(s.betas))
        return {"style": self.style_optimizer}

    def load_translator(self, path: str) -> None:
        """Start from (stage 1) or freeze (stage 2) the translator in ``path``: a cluda checkpoint
        (G, and D and F when this stage trains them and the file has them) or a CUT netG file."""
        state, _ = read_style_state(path)
        self.style.generator.load_state_dict(split_state(state, GENERATOR_PREFIX))
        for name in ("discriminator", "patch_mlp"):
            part, module = split_state(state, f"{name}."), getattr(self.style, name)
            if module is not None and part:
                module.load_state_dict(part)

    # ----------------------------------------------------------------- one step

    def step(self, nets: Networks, batch: StepBatch, iteration: int) -> StepOutput:
        if batch.target_images is None or nets.teacher is None:
            raise ValueError(f"method {self.name!r} needs target images and a teacher")
        conf, uda, s = self.conf, self.uda, self.conf.style
        if iteration > 0:
            ema_update(self.ema_heads, self.heads.ema_pair(), ema_alpha(iteration, uda.ema_alpha))
        losses: dict[str, torch.Tensor] = {}

        # 2. translate
        source_tanh = to_tanh_range(batch.source_images, IMAGENET_MEAN, IMAGENET_STD)
        target_tanh = to_tanh_range(batch.target_images, IMAGENET_MEAN, IMAGENET_STD)
        identity = None
        if self.train_style:
            translated = self.style(torch.cat([source_tanh, target_tanh]) if s.nce_identity
                                    else source_tanh)  # fmt: skip
            fake = translated[: len(source_tanh)]
            identity = translated[len(source_tanh) :] if s.nce_identity else None
        else:
            with torch.no_grad():
                fake = self.style(source_tanh)
        stylised = from_tanh_range(fake, IMAGENET_MEAN, IMAGENET_STD)
        source_images = stylised.detach()

        # 3-4. pseudo-labels, ClassMix of the stylised source into the target, augmentation
        target_labels, target_weight, quality = self.pseudo_label(nets.teacher, batch.target_images)
        masks, mixed_images, mixed_labels, mixed_weight = self.class_mix(
            source_images, batch.source_labels, batch.target_images, target_labels, target_weight
        )

        # 5. prototypes from the EMA teacher's view of the mixed images
        self.update_prototypes(nets.teacher, mixed_images, mixed_labels, masks, iteration)
        prototypes = self.prototypes.get()

        # 6. source pass on the stylised crops
        source_logits, source_fused, source_features = nets.student(source_images)
        losses["source_ce"] = seg_cross_entropy(source_logits, batch.source_labels)
        losses.update(self.head_terms("source", source_fused, batch.source_labels, prototypes,
                                      iteration, cam=True))  # fmt: skip
        if self.uses_imnet:  # the frozen encoder sees the original crops, as in the reference
            losses["feature_distance"] = uda.fd_lambda * self.feature_distance(
                nets.imnet_backbone, batch, source_features[-1]
            )

        # 7. the translator's losses
        if self.train_style:
            segmenter = unwrap_segmenter(nets.student)
            losses["consistency"] = consistency_term(
                segmenter, lambda x: segmenter.forward_with_features(x)[1],
                self.heads.projection_head, self.heads.reg_proj, batch.source_images, stylised,
                prototypes, weight=conf.consistency_weight, frozen_bn=conf.consistency_frozen_bn,
            )  # fmt: skip
            losses.update(self.style.generator_losses(
                source_tanh, fake, target_tanh, identity, lambda_gan=s.lambda_gan,
                lambda_nce=s.lambda_nce, num_patches=s.num_patches, temperature=s.nce_temperature,
            ))  # fmt: skip
            losses["style_d"] = self.style.discriminator_loss(fake, target_tanh)

        # 8. mixed pass
        mixed_logits, mixed_fused, _ = nets.student(mixed_images)
        losses["mix_ce"] = seg_cross_entropy(mixed_logits, mixed_labels, mixed_weight)
        losses.update(self.head_terms("mix", mixed_fused, mixed_labels, prototypes, iteration,
                                      cam=iteration > conf.cam_mix_start))  # fmt: skip

        # 9. target pass (stage 1)
        if self.train_style and conf.target_contrast and iteration > conf.contrast_start:
            _, target_fused, _ = nets.student(batch.target_images)
            terms = self.head_terms("target", target_fused, target_labels, prototypes, iteration)
            losses.update({k: quality * v for k, v in terms.items()})

        images = {
            "source_logits": source_logits, "pseudo_label": target_labels,
            "mixed_image": mixed_images, "mixed_label": mixed_labels, "mixed_logits": mixed_logits,
            "stylised_source_image": source_images,
        }  # fmt: skip
        return StepOutput(losses=losses, scalars={"pseudo_weight": quality}, images=images)

    def head_terms(
        self,
        domain: str,
        fused: torch.Tensor,
        labels: torch.Tensor,
        prototypes: torch.Tensor,
        iteration: int,
        cam: bool = False,
    ) -> dict[str, torch.Tensor]:
        """``{domain}_cam`` (if ``cam``) and, after ``contrast_start``, ``{domain}_contrast`` and
        ``{domain}_proto_reg`` on one pass's fused map ``(B, C, h, w)`` with labels ``(B, H, W)``."""
        conf, terms = self.conf, {}
        if cam and conf.cam_weight > 0:
            _, scores = self.heads.cam_head(fused)
            terms[f"{domain}_cam"] = conf.cam_weight * cam_loss(scores, labels)
        if iteration > conf.contrast_start:
            terms[f"{domain}_contrast"], terms[f"{domain}_proto_reg"] = prototype_contrast_terms(
                self.heads.projection_head(fused), labels, prototypes,
                num_samples=conf.contrast_samples, temperature=conf.contrast_temperature,
                contrast_weight=conf.contrast_weight, reg_weight=conf.reg_weight,
                reg_mode=conf.reg_mode,
            )  # fmt: skip
        return terms

    @torch.no_grad()
    def update_prototypes(
        self,
        teacher: nn.Module,
        mixed_images: torch.Tensor,
        mixed_labels: torch.Tensor,
        masks: torch.Tensor,
        iteration: int,
    ) -> None:
        """Step 5: EMA projected features and EMA CAM of the mixed images update the prototypes."""
        set_teacher_mode(teacher)
        fused = teacher.forward_with_features(mixed_images)[1]
        cam, _ = self.ema_heads["cam_head"](fused)
        weights, pixel_mask = prototype_pixel_weights(
            cam, masks, iteration, self.conf.proto_warmup_iters
        )
        self.prototypes.update(
            self.ema_heads["projection_head"](fused).float(), mixed_labels, weights, pixel_mask
        )
