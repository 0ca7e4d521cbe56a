"""CLUDA: DAFormer self-training plus the pixel contrastive loss on the source and mixed passes.

research/cluda.md section 4. Single-scale (DAFormer): the fused decoder map of each pass is
contrasted with its labels (source GT; ClassMix labels weighted by the mixed pixel weights),
:func:`training.contrastive.cluda_contrastive_loss`. On HRDA (``model.hrda.enabled``, the
released CLUDA): the learned-weighted multi-resolution loss of
:mod:`training.contrastive_weighted` on the context and detail views, with CLUDA's one-channel
weighting head ``decode_head.feat_weighter`` (trained with the student at the head learning rate,
only by this loss, and not part of the inference model).
L = DACS's losses + w_CL * (L_CL(source) + L_CL(mixed)), w_CL = 1.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from cluda_deploy.config import Config
from training.contrastive import cluda_contrastive_loss
from training.contrastive_weighted import (
    contrast_grid,
    feature_weighter,
    multires_contrastive_loss,
)
from training.methods.dacs import DACS, StudentPass

# The reference's parameter names (mmseg ``decode_head.feat_weighter.*``): the optimizer's
# 'head' rule gives it the x10 learning rate, as mmcv's custom_keys do in the release.
FEAT_WEIGHTER = "decode_head.feat_weighter"


def backbone_layout(cfg: Config) -> tuple[list[int], list[int]]:
    """``(channels, strides)`` of the configured encoder's maps, from a weightless build on the
    meta device (no memory, no download)."""
    from cluda_deploy.models import create_backbone

    with torch.device("meta"):
        backbone = create_backbone(dataclasses.replace(cfg.model, pretrained=None))
    return list(backbone.channels), list(backbone.strides)


class CLUDA(DACS):
    name = "cluda"

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        uda = cfg.uda
        self.weighter: nn.Module | None = None
        if self.hrda and uda.cl_weight != 0 and (uda.cl_on_source or uda.cl_on_mixed):
            channels, strides = backbone_layout(cfg)
            self.weighter = feature_weighter(
                channels, strides, uda.cl_weighter_embed_dim, cfg.model.dropout
            )

    def weighting_head(self) -> nn.Module | None:
        return self.weighter

    def trainable_modules(self) -> dict[str, nn.Module]:
        return {} if self.weighter is None else {FEAT_WEIGHTER: self.weighter}

    def contrast(
        self, out: StudentPass, labels: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        """w_CL times CLUDA's loss of one pass: labels (B, H, W), pixel weight (B, H, W) or None."""
        uda = self.uda
        if out.views is None:
            loss = cluda_contrastive_loss(
                out.fused, labels, weight, grid=uda.cl_grid, temperature=uda.cl_temperature,
                void_as_class=uda.cl_void_as_class, faithful_ordering=uda.cl_faithful_ordering,
                chunk_size=uda.cl_chunk_size,
            )  # fmt: skip
        else:
            stride = labels.shape[-1] // out.views.fused_logits.shape[-1]
            grid = contrast_grid(out.views, labels, weight, uda.cl_grid, stride)
            loss = multires_contrastive_loss(
                grid, temperature=uda.cl_temperature, scale=uda.cl_multires_scale,
                void_as_class=uda.cl_void_as_class, faithful_ordering=uda.cl_faithful_ordering,
                chunk_size=uda.cl_chunk_size,
            )  # fmt: skip
        return uda.cl_weight * loss

    def source_terms(self, out: StudentPass, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.uda.cl_on_source or self.uda.cl_weight == 0:
            return {}
        return {"source_contrast": self.contrast(out, labels, None)}

    def mixed_terms(
        self, out: StudentPass, labels: torch.Tensor, weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if not self.uda.cl_on_mixed or self.uda.cl_weight == 0:
            return {}
        return {"mix_contrast": self.contrast(out, labels, weight)}
