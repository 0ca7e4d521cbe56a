"""Rare-class sampling of source crops (research/cluda.md section 2.2; DAFormer ``uda_dataset.py``).

From the statistics ``cluda data prepare`` wrote: the pixel frequency of each class over the whole
source set, ``f_c = n_c / sum n``, gives ``P(c) = softmax((1 - f_c) / T)`` with T = 0.01. Each
sample draws a class c ~ P, then a file uniformly among those with more than ``min_pixels`` pixels
of c (classes no file holds that many pixels of are left out, with a warning, where the reference
asserts); the crop of that file is re-drawn (up to 10 times, see ``training/feed.py``) until it holds
more than ``min_pixels * min_crop_ratio`` pixels of c.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cluda_deploy.data.prepare import ClassStats
from training.feed import IndexPicker

log = logging.getLogger("cluda.adapt")


def rcs_class_probs(
    class_pixels: dict[int, int], temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """``{class: pixels}`` -> ``(classes, probabilities)``, ``P(c) = softmax((1 - f_c) / T)``.

    Classes come out sorted by pixel count, rarest first, as in the reference.
    """
    if temperature <= 0:
        raise ValueError(f"rare-class sampling temperature must be > 0, got {temperature}")
    present = sorted(((n, c) for c, n in class_pixels.items() if n > 0))
    if not present:
        raise ValueError(
            "rare-class sampling needs class statistics with at least one labelled pixel"
        )
    counts = torch.tensor([n for n, _ in present], dtype=torch.float64)
    freq = counts / counts.sum()
    probs = torch.softmax((1 - freq) / temperature, dim=0)
    return np.array([c for _, c in present], dtype=np.int64), probs.numpy()


def files_with_class(
    stats: ClassStats, classes: np.ndarray, min_pixels: int
) -> dict[int, list[str]]:
    """Class -> label files holding more than ``min_pixels`` pixels of it (relative paths).

    Classes that no file holds that much of are left out.
    """
    out = {}
    for c in classes.tolist():
        files = [f for f, n in stats.samples_with_class.get(c, []) if n > min_pixels]
        if files:
            out[c] = files
    return out


def rare_class_picker(
    stats: ClassStats, file_to_index: dict[str, int], temperature: float, min_pixels: int
) -> IndexPicker:
    """An :data:`training.feed.IndexPicker` drawing ``(sample indices, required classes)`` with RCS."""
    classes, probs = rcs_class_probs(stats.class_pixels(), temperature)
    by_class = files_with_class(stats, classes, min_pixels)
    if not by_class:
        raise ValueError(
            f"rare-class sampling: no source image has more than {min_pixels} pixels of any class; "
            f"lower uda.rcs_min_pixels (e.g. --set uda.rcs_min_pixels={max(1, min_pixels // 10)}) "
            "for small images, or turn it off with --set uda.rcs=false"
        )
    keep = np.isin(classes, list(by_class))
    if not keep.all():
        # The reference asserts here; a small or custom source set should still train.
        log.warning(
            "rare-class sampling: classes %s have no image with more than %d pixels and are not "
            "drawn (lower uda.rcs_min_pixels to include them)", classes[~keep].tolist(), min_pixels,
        )  # fmt: skip
        classes, probs = classes[keep], probs[keep] / probs[keep].sum()
    missing = sorted({f for files in by_class.values() for f in files} - set(file_to_index))
    if missing:
        raise ValueError(
            f"class statistics name {missing[0]} (and {len(missing) - 1} more) that the source "
            "dataset does not hold; re-run 'cluda data prepare' on this dataset"
        )
    indices = {c: np.array([file_to_index[f] for f in files]) for c, files in by_class.items()}

    def pick(rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = rng.choice(classes, size=batch_size, p=probs)
        picked = np.array([rng.choice(indices[int(c)]) for c in chosen])
        return picked, chosen

    return pick
