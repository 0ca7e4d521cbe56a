"""CLUDA on DAFormer: DAFormer self-training plus the pixel contrastive loss on both passes.

research/cluda.md section 4: the fused decoder map of the source pass is contrasted with the
source labels (weights 1), that of the mixed pass with the ClassMix labels (source GT where
pasted, teacher argmax elsewhere) weighted by the mixed pixel weights (1 / pseudo-label confidence
share / 0 in the margins). L = DAFormer's losses + w_CL * (L_CL(source) + L_CL(mixed)), w_CL = 1.
"""

from __future__ import annotations

import torch

from training.contrastive import cluda_contrastive_loss
from training.methods.dacs import DACS


class CLUDA(DACS):
    name = "cluda"

    def contrast(
        self, fused: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        uda = self.uda
        return uda.cl_weight * cluda_contrastive_loss(
            fused, labels, weight, grid=uda.cl_grid, temperature=uda.cl_temperature,
            void_as_class=uda.cl_void_as_class, faithful_ordering=uda.cl_faithful_ordering,
            chunk_size=uda.cl_chunk_size,
        )  # fmt: skip

    def source_terms(self, fused: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.uda.cl_on_source or self.uda.cl_weight == 0:
            return {}
        return {"source_contrast": self.contrast(fused, labels, None)}

    def mixed_terms(
        self, fused: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        if not self.uda.cl_on_mixed or self.uda.cl_weight == 0:
            return {}
        return {"mix_contrast": self.contrast(fused, labels, weight)}
