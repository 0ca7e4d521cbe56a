"""CUT's losses: LSGAN and PatchNCE (Park et al., ECCV 2020; research/confeti.md section 8).

Upstream taesungp/contrastive-unpaired-translation ``models/networks.py`` ``GANLoss('lsgan')``
and ``models/patchnce.py`` ``PatchNCELoss`` with ``nce_includes_all_negatives_from_minibatch
= False`` (CUT's default: negatives come from the same image only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# PatchNCELoss fills the query-with-its-own-key entry of the negatives with this logit (before the
# temperature), so the positive is not counted twice.
NCE_SELF_LOGIT = -10.0


def lsgan_loss(prediction: Tensor, target_is_real: bool) -> Tensor:
    """Least-squares GAN loss: ``mean((D(x) - t)^2)`` with t = 1 (real) or 0 (fake).

    prediction: the discriminator's patch scores, any shape. Returns a 0-dim tensor.
    """
    target = torch.ones_like(prediction) if target_is_real else torch.zeros_like(prediction)
    return F.mse_loss(prediction.float(), target.float())


def patch_nce_loss(queries: Tensor, keys: Tensor, batch_size: int, temperature: float) -> Tensor:
    """PatchNCE of one layer: per query patch, InfoNCE with its own key as the positive and the
    other sampled keys *of the same image* as negatives.

    queries: (B * P, D) features of the output image's patches (L2-normalised, image-major);
    keys: (B * P, D) features of the same locations in the input image (detached here, as CUT
    does). For query n with key k_n and the image's keys k_m:

        loss_n = -log( exp(q_n.k_n / T) / (exp(q_n.k_n / T) + sum_{m != n} exp(q_n.k_m / T)) )

    Returns the per-patch losses ``(B * P,)``; CUT averages them.
    """
    if queries.shape != keys.shape or queries.shape[0] % batch_size:
        raise ValueError(
            f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must be equal-shaped "
            f"(B * P, D) with B = {batch_size}"
        )
    keys = keys.detach()
    num, dim = queries.shape
    positive = (queries * keys).sum(dim=1, keepdim=True)  # (B*P, 1)
    q = queries.view(batch_size, -1, dim)
    k = keys.view(batch_size, -1, dim)
    negatives = q @ k.transpose(1, 2)  # (B, P, P)
    eye = torch.eye(q.shape[1], dtype=torch.bool, device=q.device)[None]
    negatives = negatives.masked_fill(eye, NCE_SELF_LOGIT).view(num, -1)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    target = torch.zeros(num, dtype=torch.long, device=queries.device)
    return F.cross_entropy(logits.float(), target, reduction="none")
