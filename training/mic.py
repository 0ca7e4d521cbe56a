"""MIC: masked image consistency (Hoyer et al., CVPR 2023; research/cluda.md section 5).

lhoyer/MIC ``MaskingConsistencyModule`` with the released HRDA config (``mask_mode=
'separatetrgaug'``, ``mask_alpha='same'``, ``mask_pseudo_threshold='same'``): the *target* crops
(not the mixed ones) get a fresh strong augmentation (colour jitter and blur, new draws), then
70 % of their 64x64 patches are blanked (:func:`block_mask`, value 0 = the mean colour in
normalised space), and the student must predict, on the masked images, the pseudo-labels the EMA
teacher made from the unmasked ones, weighted by the same confidence weights (margins included).
The loss is the student's usual segmentation loss (for HRDA with a fresh detail box and the 0.1
detail term) times ``lambda`` = 1.

Deviation: the release multiplies only the fused ``decode.loss_seg`` by lambda (the detail term
keeps weight 0.1 whatever lambda); here lambda scales the whole masked loss. Equal at lambda = 1.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from training.augment import strong_augment

# (masked images, pseudo-labels, pixel weights) -> named loss terms of the student on them.
SegLoss = Callable[[Tensor, Tensor, Tensor], Mapping[str, Tensor]]


def block_mask(
    batch: int,
    height: int,
    width: int,
    block_size: int,
    ratio: float,
    *,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """MIC's ``BlockMaskGenerator.generate_mask``: (B, 1, H, W) float mask, 0 = masked.

    A grid of ``round(H / block_size) x round(W / block_size)`` cells, each kept when
    ``U(0, 1) > ratio`` (so a share ``ratio`` of cells is masked), resized to (H, W) with nearest
    (cells become blocks of about ``block_size`` px). Draws from ``generator`` (its device) or
    the global RNG of ``device``.
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"uda.mic_ratio must be in [0, 1], got {ratio}")
    cells = (round(height / block_size), round(width / block_size))
    if block_size < 1 or min(cells) < 1:
        raise ValueError(
            f"uda.mic_patch={block_size} does not fit a {height}x{width} crop: use a block "
            f"of at most {2 * min(height, width)} px (MIC: 64 for 1024 crops, 32 for 512)"
        )
    draw_device = generator.device if generator is not None else device
    keep = torch.rand((batch, 1, *cells), generator=generator, device=draw_device) > ratio
    mask = F.interpolate(keep.float(), size=(height, width), mode="nearest")
    return mask.to(device) if device is not None else mask


def mask_images(images: Tensor, mask: Tensor) -> Tensor:
    """``images (B, C, H, W) * mask (B, 1, H, W)``: masked pixels become 0 (normalised space)."""
    return images * mask.to(images.dtype)


def masked_target_images(
    target_images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    block_size: int,
    ratio: float,
    color_jitter_prob: float,
    color_jitter_strength: float,
    blur_prob: float,
    blur_sigma: tuple[float, float],
    generator: torch.Generator | None = None,
) -> Tensor:
    """MIC's input (``separatetrgaug``): ``target_images (B, 3, H, W)`` (normalised with the
    0-255 ``mean``/``std``) strongly augmented with fresh draws, then block-masked."""
    augmented = strong_augment(
        target_images, mean, std, color_jitter_prob=color_jitter_prob,
        color_jitter_strength=color_jitter_strength, blur_prob=blur_prob,
        blur_sigma=blur_sigma, generator=generator,
    )  # fmt: skip
    batch, _, height, width = augmented.shape
    mask = block_mask(
        batch, height, width, block_size, ratio, device=augmented.device, generator=generator
    )
    return mask_images(augmented, mask)


def masked_consistency_terms(
    seg_loss: SegLoss,
    masked_images: Tensor,
    pseudo_labels: Tensor,
    pseudo_weight: Tensor,
    weight: float = 1.0,
    prefix: str = "mic",
) -> dict[str, Tensor]:
    """MIC's masked target loss: ``weight`` (lambda, 1) times each term of ``seg_loss`` on the
    ``masked_images (B, 3, H, W)`` against the teacher's ``pseudo_labels (B, H, W)`` of the
    unmasked target, weighted by ``pseudo_weight (B, H, W)``; keys ``{prefix}_{term}``."""
    terms = seg_loss(masked_images, pseudo_labels.detach(), pseudo_weight.detach())
    return {f"{prefix}_{name}": weight * value for name, value in terms.items()}


__all__ = [
    "block_mask",
    "mask_images",
    "masked_consistency_terms",
    "masked_target_images",
]
