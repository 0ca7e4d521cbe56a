"""CLUDA's pixel contrastive loss on the fused decoder map (research/cluda.md sections 4.1-4.6).

The single-resolution form of user0407/CLUDA ``contrastive_loss`` (the DAFormer variant): with
L2-normalised features ``u``, labels ``y`` and per-pixel weights ``rho`` (1 on the source pass;
the ClassMix weight on the mixed pass: 1 on pasted source pixels, the pseudo-label confidence
share elsewhere), for N anchors over the whole batch

    s_ij = <u_i, u_j> / tau                                  (tau = 1 in the release)
    l_ij = s_ij - log( exp(s_ij) + sum_{k: y_k != y_i} exp(s_ik) )
    L    = (1/N) sum_i  -rho_i / max(|P(i)|, 1) * sum_{j in P(i)} rho_j l_ij,
    P(i) = { j != i : y_j == y_i }                           (same class, any image, any domain)

Each positive is contrasted against the anchor's negatives only (ContrastiveSeg-style SupCon).
The release builds several N x N matrices (N = 2 * 65 * 65 = 8450: 272 MiB each) and keeps them
for backward. Here the loss is streamed over row chunks: each chunk's R x N block is computed,
reduced to R numbers and dropped, and recomputed during backward (activation checkpointing), so
neither pass ever holds more than one R x N block.

Two released behaviours the brief lists as bugs (4.5) are flags, off by default:
``void_as_class`` (255 pixels are anchors/positives of a class of their own; by default they take
no part at all and the mean runs over the non-void anchors) and ``faithful_ordering`` (features
flattened pixel-major, ``cat(unbind(f, 1))``, against batch-major labels, which pairs labels with
the wrong pixels for B > 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from cluda_deploy.labels import IGNORE_INDEX


def resample_to_grid(
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    grid: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Bring ``features (B, C, h, w)``, ``labels (B, H, W)`` and ``weights (B, H, W)`` to one grid.

    ``grid`` (the release's ``fm_size``, 65x65) or, if None, the feature map's own (h, w).
    Features and weights: bilinear, align_corners=True; labels: nearest. Returns
    ``(features (B, C, g_h, g_w), labels (B, g_h, g_w) int64, weights (B, g_h, g_w) or None)``.
    """
    size = tuple(grid) if grid is not None else tuple(features.shape[-2:])
    if tuple(features.shape[-2:]) != size:
        features = F.interpolate(features, size=size, mode="bilinear", align_corners=True)
    if tuple(labels.shape[-2:]) != size:
        labels = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
    if weights is not None and tuple(weights.shape[-2:]) != size:
        weights = F.interpolate(
            weights[:, None].float(), size=size, mode="bilinear", align_corners=True
        )[:, 0]
    return features, labels, weights


def flatten_pixels(
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    faithful_ordering: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(B, C, h, w), (B, h, w), (B, h, w)`` -> rows ``(N, C), (N,), (N,)`` with N = B*h*w.

    Row r is pixel ``r % (h*w)`` of image ``r // (h*w)`` for all three; with
    ``faithful_ordering`` the feature rows are pixel-major instead (the release's bug).
    """
    batch, channels = features.shape[:2]
    rows = features.permute(0, 2, 3, 1).reshape(batch, -1, channels)
    if faithful_ordering:
        rows = rows.transpose(0, 1)
    rows = rows.reshape(-1, channels)
    flat_weights = None if weights is None else weights.reshape(-1)
    return rows, labels.reshape(-1), flat_weights


def _chunk_loss(
    anchors: torch.Tensor,
    anchor_rows: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    valid: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``-sum_i rho_i / max(|P(i)|, 1) * sum_{j in P(i)} rho_j l_ij`` over the anchors of one chunk.

    anchors: (R, C) normalised rows ``anchor_rows`` (R,) of ``features (N, C)``; labels, weights,
    valid: (N,). Builds only R x N blocks.
    """
    sim = anchors @ features.T / temperature
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()  # cancels inside l_ij
    same = labels[anchor_rows, None] == labels[None, :]
    negative = ~same & valid[None, :]
    positive = same & valid[None, :]
    positive[torch.arange(len(anchor_rows), device=anchors.device), anchor_rows] = False
    exp_sim = sim.exp()
    negatives = (exp_sim * negative).sum(dim=1, keepdim=True)
    log_prob = sim - torch.log(exp_sim + negatives)
    per_anchor = (log_prob * positive * weights[None, :]).sum(dim=1)
    per_anchor = per_anchor / positive.sum(dim=1).clamp(min=1)
    anchor_weight = weights[anchor_rows] * valid[anchor_rows]
    return -(per_anchor * anchor_weight).sum()


def pixel_contrastive_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    void_as_class: bool = False,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The contrastive loss (module docstring) of ``features (N, C)`` (not yet normalised) with
    ``labels (N,)`` and pixel weights ``rho (N,)`` (None = 1), streamed over ``chunk_size`` rows.

    Computed in float32 whatever the autocast state. Returns a 0-dim tensor.
    """
    if chunk_size < 1:
        raise ValueError(f"contrastive chunk size must be >= 1, got {chunk_size}")
    if temperature <= 0:
        raise ValueError(f"contrastive temperature must be > 0, got {temperature}")
    device_type = features.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        rows = F.normalize(features.float(), dim=1)
        n = rows.shape[0]
        rho = torch.ones(n, device=rows.device) if weights is None else weights.float().detach()
        valid = (
            torch.ones_like(labels, dtype=torch.bool) if void_as_class else labels != ignore_index
        )
        num_anchors = n if void_as_class else int(valid.sum())
        if num_anchors == 0:
            return rows.sum() * 0.0
        total = rows.new_zeros(())
        for start in range(0, n, chunk_size):
            anchor_rows = torch.arange(start, min(start + chunk_size, n), device=rows.device)
            args = (
                rows[start : start + chunk_size],
                anchor_rows,
                rows,
                labels,
                rho,
                valid,
                temperature,
            )
            if torch.is_grad_enabled() and rows.requires_grad:
                part = checkpoint(_chunk_loss, *args, use_reentrant=False, preserve_rng_state=False)
            else:
                part = _chunk_loss(*args)
            total = total + part
        return total / num_anchors


def cluda_contrastive_loss(
    fused: torch.Tensor,
    labels: torch.Tensor,
    pixel_weight: torch.Tensor | None,
    *,
    grid: tuple[int, int] | None,
    temperature: float = 1.0,
    void_as_class: bool = False,
    faithful_ordering: bool = False,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """CLUDA's loss of one pass: ``fused (B, C, h, w)`` decoder map, ``labels (B, H, W)`` (source
    GT, or the mixed label map), ``pixel_weight (B, H, W)`` (None on the source pass)."""
    features, labels, weights = resample_to_grid(fused, labels, pixel_weight, grid)
    rows, flat_labels, flat_weights = flatten_pixels(features, labels, weights, faithful_ordering)
    return pixel_contrastive_loss(
        rows, flat_labels, flat_weights, temperature=temperature, void_as_class=void_as_class,
        chunk_size=chunk_size,
    )  # fmt: skip
