"""Prototypical semantic consistency: the generator's semantic loss (research/confeti.md
sections 4 step 6 and 8; cxa9264/CONFETI ``dacs.py``, ``gan_consis_loss``).

For every cell of the last backbone map, the stylised image must keep the original source image's
similarity profile over the K cross-domain prototypes:

    S_src = proj(f(A)) . P^T                     (B, h, w, K), no gradient
    S_s2t = reg_proj(proj(f(G(A)))) . P^T       (B, h, w, K)
    L_cons = weight * mean( (S_s2t - S_src)^2 )  (weight 0.1)

f is the student's feature map that the heads read (layer4 for DeepLabV2) and proj its
projection head, both with *frozen parameters* for this pass; the features are not normalised and there is no temperature. The gradient therefore reaches
only the generator (through ``G(A)``) and ``reg_proj``, the 1x1 affine layer on the stylised branch.

``frozen_bn`` (off by default, as in the reference) also runs the backbone's BatchNorm on its
running statistics for these two passes; the reference runs them in train mode, so the original
source images also move the BatchNorm statistics (research/confeti.md 17.4 calls that a pollution
one may deliberately avoid).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.confeti.freeze import frozen_batchnorm, frozen_parameters


def prototype_similarity(projected: Tensor, prototypes: Tensor) -> Tensor:
    """``projected (B, D, h, w)``, ``prototypes (K, D)`` -> dot products ``(B, h, w, K)``."""
    return projected.permute(0, 2, 3, 1) @ prototypes.detach().to(projected.dtype).T


def semantic_consistency_loss(stylised_similarity: Tensor, source_similarity: Tensor) -> Tensor:
    """``mean((S_s2t - stopgrad(S_src))^2)`` over all cells and prototypes; shapes ``(B, h, w, K)``."""
    return F.mse_loss(stylised_similarity.float(), source_similarity.detach().float())


def consistency_term(
    network: nn.Module,
    features: Callable[[Tensor], Tensor],
    projection: nn.Module,
    affine: nn.Module,
    source_images: Tensor,
    stylised_images: Tensor,
    prototypes: Tensor,
    *,
    weight: float,
    frozen_bn: bool = False,
) -> Tensor:
    """``weight * L_cons`` (module docstring).

    network: the student segmenter, frozen for both passes; features: ``images -> (B, C, h, w)``
    the map the heads read (for DeepLabV2 the last backbone map, f above); projection: the
    student's projection head (also frozen); affine: ``reg_proj``; source_images,
    stylised_images: (B, 3, H, W), both normalised for the segmenter (``stylised_images`` still
    attached to the generator's graph); prototypes: (K, D).
    """
    with frozen_parameters(network, projection), frozen_batchnorm(network, frozen_bn):
        with torch.no_grad():
            source_sim = prototype_similarity(projection(features(source_images)), prototypes)
        stylised = affine(projection(features(stylised_images)))
    return weight * semantic_consistency_loss(
        prototype_similarity(stylised, prototypes), source_sim
    )
