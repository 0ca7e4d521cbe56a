"""ClassMix of source and target crops (research/cluda.md section 2.6).

DAFormer ``dacs_transforms.py`` (``get_class_masks``, ``generate_class_mask``, ``one_mix``): for
each sample, half of the classes present in the source labels of the *whole batch* (rounded up,
``int((n + n % 2) / 2)``, chosen without replacement) are pasted from that sample's source crop
onto its target crop. The class list includes the void label 255 when the batch has any: DAFormer
keeps this deviation from DACS on purpose (lhoyer/DAFormer#19), so void regions are pasted too.
"""

from __future__ import annotations

import torch


def num_mix_classes(num_classes_present: int) -> int:
    """How many of ``n`` present classes are pasted: ``(n + n % 2) // 2`` (half, rounded up)."""
    return (num_classes_present + num_classes_present % 2) // 2


def choose_mix_classes(
    labels: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Classes to paste for one sample: a random half (rounded up) of ``unique(labels)``.

    labels: the source labels of the whole batch, (B, H, W); 255 counts as a class.
    Draws from ``generator`` (CPU) or the global torch RNG. Returns a 1-D tensor of class ids.
    """
    classes = torch.unique(labels)
    order = torch.randperm(classes.numel(), generator=generator).to(classes.device)
    return classes[order[: num_mix_classes(classes.numel())]]


def class_mask(label: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``label (H, W)`` -> float mask ``(H, W)``: 1 where the pixel's class is in ``classes``."""
    return torch.isin(label, classes).float()


def class_masks(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One ClassMix mask per sample: ``labels (B, H, W)`` -> ``masks (B, H, W)`` float in {0, 1}."""
    return torch.stack(
        [class_mask(label, choose_mix_classes(labels, generator)) for label in labels]
    )


def mix(mask: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mask * source + (1 - mask) * target`` with ``mask (B, H, W)`` broadcast over channels.

    source, target: (B, C, H, W) images or (B, H, W) labels / weights; labels stay integers.
    """
    m = mask if source.ndim == 3 else mask[:, None]
    if source.dtype.is_floating_point:
        return m * source + (1 - m) * target
    return torch.where(m.bool(), source, target)
