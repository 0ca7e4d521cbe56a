"""Cross-domain class prototypes (research/confeti.md section 5; cxa9264/CONFETI ``proto.py``).

One set of K L2-normalised prototypes ``P (K, D)`` (19 x 512 for GTA5 -> Cityscapes), estimated
from the EMA teacher's projected features of the ClassMixed images (stylised source pasted on
target) and updated every step before the losses that read them. For each class i present among
the selected pixels:

* rank its pixels by their weight ``w`` (the EMA CAM activation of class i, ``ReLU(CAM_i)``)
  and keep the ``top_k`` (32) largest;
* ``c_i = normalize( sum_k w_k v_k / sum_k w_k )`` (skip the class if the weights sum to 0);
* ``P_i <- (1 - a) P_i + a c_i`` with ``a = 1`` on the class's first update and
  ``min(1 - 1 / (n_i + 1), 1 - momentum)`` after (0.001 with momentum 0.999), where ``n_i``
  counts the pixels used so far;
* then every row is L2-normalised (a never-seen class stays a zero row).

Warm-up (t <= 3000 in the reference, :func:`prototype_pixel_weights`): every weight is 1 and only
the pixels pasted from the stylised source count, so the prototypes are source-only until the
CAM head and the pseudo-labels can be trusted.

Two choices where the reference is implementation-defined or costly, both documented here:
the weighted mean is taken at feature resolution with labels downsampled by nearest neighbour
(the reference's default ``ori_size=False``; its full-resolution option only re-weights the same
features and costs over 1 GB), and ties among equal weights (all of them during warm-up) are
broken uniformly at random (the reference's unstable ``argsort`` leaves them to the device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cluda_deploy.labels import IGNORE_INDEX


def nearest_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """``labels (B, H, W)`` -> ``(B, h, w)`` int64 by nearest-neighbour resampling (mmseg
    ``F.interpolate(mode='nearest')``: source index ``floor(dst * H / h)``)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def prototype_pixel_weights(
    cam: Tensor | None, source_mask: Tensor, iteration: int, warmup_iters: int
) -> tuple[Tensor | None, Tensor | None]:
    """The reference's schedule of the prototype pixels: ``(weights, pixel mask)``.

    ``iteration <= warmup_iters``: ``(None, source_mask)``, every weight 1, only the pasted
    source pixels (``source_mask (B, H, W)``, the ClassMix mask); after: ``(cam, None)``, the
    EMA CAM ``(B, K, h, w)`` on every pixel.
    """
    if iteration <= warmup_iters:
        return None, source_mask
    if cam is None:
        raise ValueError("after the prototype warm-up the prototype update needs the EMA CAM maps")
    return cam, None


def select_pixels(
    features: Tensor,
    labels: Tensor,
    weights: Tensor | None,
    pixel_mask: Tensor | None,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Flatten the candidate pixels of a batch at feature resolution.

    features: (B, D, h, w); labels: (B, H, W) (nearest-downsampled to (h, w));
    weights: (B, K, h', w') per-class weights, bilinearly resized to (h, w), or None (all 1);
    pixel_mask: (B, H, W) {0, 1}, nearest-downsampled, or None. Pixels labelled ``ignore_index``
    or outside the mask are dropped. Returns ``(rows (N, D), labels (N,), weights (N, K) | None)``.
    """
    size = tuple(features.shape[-2:])
    flat_labels = nearest_labels(labels, size).reshape(-1)
    keep = flat_labels != ignore_index
    if pixel_mask is not None:
        keep &= nearest_labels(pixel_mask, size).reshape(-1) == 1
    rows = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])[keep]
    flat_weights = None
    if weights is not None:
        if tuple(weights.shape[-2:]) != size:
            weights = F.interpolate(weights, size=size, mode="bilinear", align_corners=True)
        flat_weights = weights.permute(0, 2, 3, 1).reshape(-1, weights.shape[1])[keep]
    return rows, flat_labels[keep], flat_weights


def top_k_centroid(
    rows: Tensor, weights: Tensor, top_k: int, generator: torch.Generator | None = None
) -> Tensor | None:
    """``normalize(sum w_k v_k / sum w_k)`` over the ``top_k`` rows with the largest weights.

    rows: (n, D) one class's pixel features; weights: (n,). Ties are broken uniformly at random
    (a random permutation, then a stable sort). Returns ``(D,)``, or None when the kept weights
    sum to 0 (the reference skips the class then).
    """
    order = torch.randperm(len(weights), generator=generator).to(weights.device)
    ranked = torch.sort(weights[order], descending=True, stable=True).indices[:top_k]
    keep = order[ranked]
    w = weights[keep].float()
    total = w.sum()
    if total <= 0:
        return None
    centroid = (w[None] @ rows[keep].float())[0] / total
    return F.normalize(centroid, dim=0)


def prototype_rate(count: float, momentum: float) -> float:
    """Update rate of one prototype: 1 before its first update (``count == 0``), else
    ``min(1 - 1 / (count + 1), 1 - momentum)`` (reference: ``alpha = 1 - momentum``)."""
    if count == 0:
        return 1.0
    return min(1.0 - 1.0 / (count + 1.0), 1.0 - momentum)


class ClassPrototypes(nn.Module):
    """The prototype buffer ``prototypes (K, D)`` and the per-class pixel counts ``counts (K,)``.

    Both are buffers, so they are saved with the method's state and a resumed run continues with
    the same prototypes (the reference keeps ``update_count`` on the CPU and never saves it).
    """

    def __init__(self, num_classes: int, dim: int, momentum: float, top_k: int):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"prototype momentum must be in [0, 1), got {momentum}")
        if top_k < 1:
            raise ValueError(f"prototype top_k must be >= 1, got {top_k}")
        self.momentum, self.top_k = momentum, top_k
        self.register_buffer("prototypes", torch.zeros(num_classes, dim))
        self.register_buffer("counts", torch.zeros(num_classes))

    @property
    def num_classes(self) -> int:
        return self.prototypes.shape[0]

    def get(self) -> Tensor:
        """The current prototypes ``(K, D)``, detached."""
        return self.prototypes.detach()

    @torch.no_grad()
    def update(
        self,
        features: Tensor,
        labels: Tensor,
        weights: Tensor | None = None,
        pixel_mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """One update from a batch (module docstring); arguments as in :func:`select_pixels`.

        ``weights=None`` gives every pixel weight 1. Returns the classes updated.
        """
        if features.shape[1] != self.prototypes.shape[1]:
            raise ValueError(
                f"features have {features.shape[1]} channels, prototypes {self.prototypes.shape[1]}"
            )
        rows, flat_labels, flat_weights = select_pixels(features, labels, weights, pixel_mask)
        updated = []
        for cls in flat_labels.unique().tolist():
            if not 0 <= cls < self.num_classes:
                raise ValueError(f"label {cls} outside 0..{self.num_classes - 1} (and not void)")
            mine = flat_labels == cls
            w = (
                flat_weights[mine, cls]
                if flat_weights is not None
                else rows.new_ones(int(mine.sum()))
            )
            centroid = top_k_centroid(rows[mine], w, self.top_k, generator)
            if centroid is None:
                continue
            rate = prototype_rate(float(self.counts[cls]), self.momentum)
            self.prototypes[cls] = (1.0 - rate) * self.prototypes[cls] + rate * centroid
            self.counts[cls] += min(int(mine.sum()), self.top_k)
            updated.append(cls)
        self.prototypes.copy_(F.normalize(self.prototypes, dim=1))
        return updated
