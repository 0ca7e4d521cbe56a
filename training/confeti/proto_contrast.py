"""Pixel-to-prototype contrast and its regulariser (research/confeti.md section 6;
cxa9264/CONFETI ``contrastive_head.py``, the regulariser from BIT-DA/SePiCo ``proto_reg``).

The student's projected map ``(B, D, h, w)`` is paired with labels nearest-downsampled to
``(h, w)``; void pixels are dropped and the rest L2-normalised to ``z``. With the prototypes
``P (K, D)`` (detached), temperature ``tau`` (0.1) and ``N`` pixels drawn uniformly without
replacement from the whole batch (4096; all if fewer):

    L_con = (1/N) sum_n -log softmax_{y_n}( z_n P^T / tau )               (weight 0.5)

    L_reg = sign * (1 / (K ln K)) * sum_{c=1..K} log softmax_c( zbar P^T / tau )   (weight 2)

with ``zbar`` the mean of *all* valid ``z`` of the pass. ``sum_c log p_c <= -K ln K``, with
equality when the softmax of the mean feature is uniform:

* ``sign = +1`` (``reg_mode='reference'``, the released code of SePiCo and CONFETI): descent
  *lowers* ``sum_c log p_c``, i.e. pushes the mean feature's class distribution away from uniform,
  towards the prototypes that already dominate the batch;
* ``sign = -1`` (``reg_mode='uniform'``): descent raises it towards ``-K ln K``, the
  class-balancing effect that the name and SePiCo's "class-balanced representations" suggest
  (it is ``K * CE(uniform, softmax(zbar P^T / tau)) / (K ln K)``).

CONFETI applies both on the stylised source (GT labels), the mixed images (mixed labels) and,
in stage 1, the target (raw pseudo-labels, both terms scaled by the pseudo-label confidence share).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from cluda_deploy.labels import IGNORE_INDEX
from training.confeti.prototypes import nearest_labels

REG_MODES = {"reference": 1.0, "uniform": -1.0}


def valid_pixels(
    projected: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor]:
    """``projected (B, D, h, w)``, ``labels (B, H, W)`` -> ``(z (N, D) unit rows, y (N,))`` over
    the non-void pixels, labels nearest-downsampled to ``(h, w)``."""
    flat_labels = nearest_labels(labels, tuple(projected.shape[-2:])).reshape(-1)
    rows = projected.permute(0, 2, 3, 1).reshape(-1, projected.shape[1])
    keep = flat_labels != ignore_index
    return F.normalize(rows[keep].float(), dim=1), flat_labels[keep]


def pixel_prototype_contrast(
    z: Tensor, y: Tensor, prototypes: Tensor, temperature: float
) -> Tensor:
    """InfoNCE over the prototypes, ``mean_n CE(z_n P^T / tau, y_n)``.

    z: (N, D) unit rows; y: (N,) class ids; prototypes: (K, D) (detached here). 0-dim.
    """
    logits = z @ prototypes.detach().float().T / temperature
    return F.cross_entropy(logits, y)


def prototype_regulariser(z: Tensor, prototypes: Tensor, temperature: float, mode: str) -> Tensor:
    """``sign / (K ln K) * sum_c log softmax_c(mean(z) P^T / tau)`` (module docstring).

    z: (N, D) unit rows of every valid pixel; prototypes: (K, D) (detached here);
    mode: 'reference' (sign +1) or 'uniform' (sign -1). 0-dim.
    """
    if mode not in REG_MODES:
        raise ValueError(f"unknown regulariser mode {mode!r}; known: {', '.join(REG_MODES)}")
    num_classes = prototypes.shape[0]
    logits = z.mean(dim=0, keepdim=True) @ prototypes.detach().float().T / temperature
    total = torch.log_softmax(logits, dim=1).sum()
    return REG_MODES[mode] * total / (num_classes * math.log(num_classes))


def sample_rows(count: int, num_samples: int, device: torch.device) -> Tensor:
    """``min(num_samples, count)`` distinct row indices drawn uniformly (``randperm``)."""
    return torch.randperm(count, device=device)[:num_samples]


def prototype_contrast_terms(
    projected: Tensor,
    labels: Tensor,
    prototypes: Tensor,
    *,
    num_samples: int,
    temperature: float,
    contrast_weight: float,
    reg_weight: float,
    reg_mode: str,
) -> tuple[Tensor, Tensor]:
    """One pass's ``(contrast_weight * L_con, reg_weight * L_reg)``.

    projected: (B, D, h, w) student projection (not normalised); labels: (B, H, W);
    prototypes: (K, D). A pass without a valid pixel gives two zeros that keep the graph.
    """
    z, y = valid_pixels(projected, labels)
    if len(y) == 0:
        zero = projected.sum() * 0.0
        return zero, zero
    picked = sample_rows(len(y), num_samples, z.device)
    contrast = pixel_prototype_contrast(z[picked], y[picked], prototypes, temperature)
    reg = prototype_regulariser(z, prototypes, temperature, reg_mode)
    return contrast_weight * contrast, reg_weight * reg
