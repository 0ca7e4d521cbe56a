"""CLUDA's learned-weighted multi-resolution contrastive loss (research/cluda.md 4.1-4.6).

user0407/CLUDA ``multi_resolution_cl`` on HRDA's two views. On one grid (the release's
``fm_size`` 65x65), per pixel i of the batch: ``u_i`` the L2-normalised fused decoder feature of
the context view, ``v_i`` that of the detail view (zero outside the detail crop), ``y_i`` the
label, ``w_i`` the learned weight (sigmoid of a one-channel ``feat_weighter`` head on the context
encoder maps), ``m_i`` = 1 inside the detail crop, ``rho_i`` the pixel weight (1 on the source
pass; on the mixed pass the ClassMix weight: 1 on pasted source pixels, the teacher's confidence
share elsewhere, 0 in the margins). With temperature tau (1 in the release):

    l^LL_ij = s^LL_ij - log( exp(s^LL_ij) + sum_{k: y_k != y_i} exp(s^LL_ik) ),  s^LL_ij = <u_i, u_j> / tau
    l^LH_ij = the same with s^LH_ij = <u_i, v_j> / tau (context anchor, detail positive/negatives)
    omega_ij = m_i w_i w_j
    L = c / N * sum_i  -1 / max(|P(i)|, 1) * sum_{j in P(i)} rho_i rho_j (omega_ij l^LL_ij + (1 - omega_ij) l^LH_ij)

P(i) = {j != i : y_j = y_i} over the whole batch, c = 0.5 (the release's final ``0.5 *``).
Inside the detail crop the learned weight decides how much each pair is contrasted context to
context versus context to detail; outside it only the context-to-detail term is left.

Released behaviours the brief lists as bugs (4.5), decided here: pairs are formed with one
consistent batch-major order (``faithful_ordering`` reproduces the release, which flattens
features pixel-major against batch-major labels); ``m`` is the detail-box mask itself (the release
tests ``label * mask != 0``, so road pixels inside the box count as outside: pass such a mask to
reproduce it); void (255) pixels take no part unless ``void_as_class``.

Memory (4.6): like :mod:`training.contrastive`, the loss is streamed over row chunks; each chunk's
two R x N similarity blocks are reduced to R numbers and recomputed during backward, so no
N x N matrix is ever held (N = 2 * 65 * 65 = 8450: 272 MiB each in the release).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from cluda_deploy.labels import IGNORE_INDEX
from cluda_deploy.models.hrda import ConvFusionHead
from cluda_deploy.models.segmenter import resize
from training.contrastive import flatten_pixels, resample_to_grid
from training.hrda import HRDAViews, box_masks, insert_details, scale_boxes


def feature_weighter(
    channels: Sequence[int], strides: Sequence[int], embed_dim: int = 256, dropout: float = 0.1
) -> ConvFusionHead:
    """CLUDA's ``feat_weighter``: a DAFormer head with 1x1-conv fusion (HRDA's scale-attention
    layout, ``embed_dim`` = ``attention_embed_dim`` = 256) and one output channel, on the encoder
    maps of the context view; ``sigmoid`` of its output is the learned weight ``w``. It only gets
    gradients from this loss; as part of the decode head it trains at the head learning rate."""
    return ConvFusionHead(
        channels, strides, 1, embed_dim=embed_dim, channels=embed_dim, dropout=dropout
    )


@dataclass
class ContrastGrid:
    """The inputs of the loss on one grid (g_h, g_w), B samples.

    context, detail: (B, C, g_h, g_w) fused decoder features; weight: (B, g_h, g_w) learned
    weight w; inside: (B, g_h, g_w) bool detail-crop mask m; labels: (B, g_h, g_w) int64;
    pixel_weight: (B, g_h, g_w) rho, or None (= 1).
    """

    context: Tensor
    detail: Tensor
    weight: Tensor
    inside: Tensor
    labels: Tensor
    pixel_weight: Tensor | None = None


def contrast_grid(
    views: HRDAViews,
    labels: Tensor,
    pixel_weight: Tensor | None,
    grid: Sequence[int] | None,
    output_stride: int = 4,
) -> ContrastGrid:
    """Bring the two views onto one grid as the release does (research/cluda.md 4.1-4.2).

    First onto the full-resolution stride-4 grid (H / 4, W / 4) of the crop: context features
    bilinear x2 with align_corners=True (``f_LR``), detail features pasted into zeros at the box
    (``f_HR``), the learned weight bilinear x2 (align_corners=False); the box mask stays on the
    context grid. Then onto ``grid`` (``fm_size``; None = the stride-4 grid): features, weight and
    ``pixel_weight (B, H, W)`` bilinear with align_corners=True, ``labels (B, H, W)`` and the mask
    nearest.
    """
    if views.feature_weight is None:
        raise ValueError(
            "the weighted contrastive loss needs the learned weight: build HRDATrainForward "
            "with a feat_weighter (training.contrastive_weighted.feature_weighter)"
        )
    size = views.fused_logits.shape[-2:]
    context = F.interpolate(views.context_fused, size=size, mode="bilinear", align_corners=True)
    detail = insert_details(views.detail_fused, size, scale_boxes(views.boxes, output_stride))
    weight = resize(views.feature_weight, size)[:, 0]
    context_stride = output_stride * size[0] / views.context_fused.shape[-2]
    inside = box_masks(views.context_fused, scale_boxes(views.boxes, context_stride))[:, 0]
    target = tuple(grid) if grid is not None else tuple(size)
    context, labels, pixel_weight = resample_to_grid(context, labels, pixel_weight, target)
    detail, inside, weight = resample_to_grid(detail, inside.long(), weight, target)
    return ContrastGrid(context, detail, weight, inside.bool(), labels, pixel_weight)


def _log_prob(sim: Tensor, negative: Tensor) -> Tensor:
    """``s_ij - log(exp(s_ij) + sum_{k in negative(i)} exp(s_ik))`` of an R x N block ``sim``."""
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()  # cancels inside the log-ratio
    exp_sim = sim.exp()
    return sim - torch.log(exp_sim + (exp_sim * negative).sum(dim=1, keepdim=True))


def _chunk_loss(
    anchor_rows: Tensor,
    context: Tensor,
    detail: Tensor,
    labels: Tensor,
    weight: Tensor,
    inside: Tensor,
    rho: Tensor,
    valid: Tensor,
    temperature: float,
) -> Tensor:
    """``-sum_i rho_i / max(|P(i)|, 1) sum_{j in P(i)} rho_j (omega l^LL + (1 - omega) l^LH)_ij``
    over the anchors ``anchor_rows (R,)``; context, detail: (N, C) normalised; the rest (N,)."""
    anchors = context[anchor_rows]
    same = labels[anchor_rows, None] == labels[None, :]
    negative = ~same & valid[None, :]
    positive = same & valid[None, :]
    positive[torch.arange(len(anchor_rows), device=anchors.device), anchor_rows] = False
    l_ll = _log_prob(anchors @ context.T / temperature, negative)
    l_lh = _log_prob(anchors @ detail.T / temperature, negative)
    omega = (inside * weight)[anchor_rows, None] * weight[None, :]
    pair = omega * l_ll + (1 - omega) * l_lh
    per_anchor = (pair * positive * rho[None, :]).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return -(per_anchor * rho[anchor_rows] * valid[anchor_rows]).sum()


def weighted_contrastive_loss(
    context: Tensor,
    detail: Tensor,
    labels: Tensor,
    weight: Tensor,
    inside: Tensor,
    pixel_weight: Tensor | None = None,
    *,
    temperature: float = 1.0,
    scale: float = 0.5,
    void_as_class: bool = False,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
) -> Tensor:
    """The loss of the module docstring over N rows: ``context, detail (N, C)`` (not yet
    normalised), ``labels (N,)``, learned ``weight (N,)``, ``inside (N,)`` bool,
    ``pixel_weight (N,)`` or None; ``scale`` is c. Streamed over ``chunk_size`` anchor rows, in
    float32 whatever the autocast state. Gradients reach both feature sets and ``weight``.
    Returns a 0-dim tensor.
    """
    if chunk_size < 1:
        raise ValueError(f"contrastive chunk size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
    with torch.autocast(device_type=context.device.type, enabled=False):
        context = F.normalize(context.float(), dim=1)
        detail = F.normalize(detail.float(), dim=1)
        n = context.shape[0]
        rho = torch.ones(n, device=context.device) if pixel_weight is None else pixel_weight
        rho = rho.float().detach()
        valid = torch.ones_like(labels, dtype=torch.bool)
        if not void_as_class:
            valid = labels != ignore_index
        num_anchors = int(valid.sum())
        if num_anchors == 0:
            return (context.sum() + detail.sum() + weight.sum()) * 0.0
        args = (context, detail, labels, weight.float(), inside.float(), rho, valid, temperature)
        track = torch.is_grad_enabled() and any(t.requires_grad for t in args[:4])
        total = context.new_zeros(())
        for start in range(0, n, chunk_size):
            rows = torch.arange(start, min(start + chunk_size, n), device=context.device)
            if track:
                part = checkpoint(_chunk_loss, rows, *args, use_reentrant=False,
                                  preserve_rng_state=False)  # fmt: skip
            else:
                part = _chunk_loss(rows, *args)
            total = total + part
        return scale * total / num_anchors


def multires_contrastive_loss(
    grid: ContrastGrid,
    *,
    temperature: float = 1.0,
    scale: float = 0.5,
    void_as_class: bool = False,
    faithful_ordering: bool = False,
    chunk_size: int = 1024,
) -> Tensor:
    """:func:`weighted_contrastive_loss` of a :class:`ContrastGrid`, its pixels flattened
    batch-major (``faithful_ordering``: feature rows pixel-major, as the release does)."""
    context, labels, pixel_weight = flatten_pixels(
        grid.context, grid.labels, grid.pixel_weight, faithful_ordering
    )
    detail, _, _ = flatten_pixels(grid.detail, grid.labels, None, faithful_ordering)
    return weighted_contrastive_loss(
        context, detail, labels, grid.weight.reshape(-1), grid.inside.reshape(-1), pixel_weight,
        temperature=temperature, scale=scale, void_as_class=void_as_class, chunk_size=chunk_size,
    )  # fmt: skip


__all__ = [
    "ContrastGrid",
    "contrast_grid",
    "feature_weighter",
    "multires_contrastive_loss",
    "weighted_contrastive_loss",
]
