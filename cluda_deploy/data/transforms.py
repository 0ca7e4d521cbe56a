"""Paired image/label transforms with mmseg 0.x semantics (research/cluda.md section 2.1).

Every transform takes and returns ``(image, label)``: ``image`` (H, W, 3) uint8 RGB and ``label``
(H, W) uint8 train ids, until :class:`Normalize` turns them into a (3, H, W) float32 tensor and an
(H, W) int64 tensor. Randomness comes only from the ``numpy.random.Generator`` a transform holds,
so a seeded generator makes a run repeatable; :func:`reseed` gives each DataLoader worker its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from cluda_deploy.labels import IGNORE_INDEX

# DAFormer's RandomCrop redraws a crop up to this many times to satisfy cat_max_ratio.
CROP_RETRIES = 10


def rescale_size(height: int, width: int, scale: tuple[int, int] | None) -> tuple[int, int]:
    """mmcv ``rescale_size`` with a (long, short) scale: the largest size that fits, ratio kept.

    factor = min(long / max(h, w), short / min(h, w)); new side = int(side * factor + 0.5).
    Returns (new_height, new_width); ``scale=None`` keeps the native size.
    """
    if scale is None:
        return height, width
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


class ResizeKeepRatio:
    """Keep-ratio resize (mmcv ``imrescale``): bilinear image, nearest label."""

    def __init__(self, scale: tuple[int, int]):
        self.scale = tuple(scale)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        new_h, new_w = rescale_size(h, w, self.scale)
        if (new_h, new_w) == (h, w):
            return image, label
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return image, label

    def __repr__(self) -> str:
        return f"ResizeKeepRatio(scale={self.scale})"


class RandomCrop:
    """mmseg ``RandomCrop`` with ``cat_max_ratio``, followed by mmseg ``Pad`` to the crop size.

    The crop is redrawn up to :data:`CROP_RETRIES` times until it holds at least two non-ignored
    classes and the largest of them covers less than ``cat_max_ratio`` of the non-ignored pixels;
    after the last retry the newest crop is kept unchecked, as in mmseg. An image smaller than the
    crop is padded at the bottom/right with ``pad_value`` (image) and ``ignore_index`` (label).
    """

    def __init__(
        self,
        size: tuple[int, int],
        cat_max_ratio: float = 0.75,
        ignore_index: int = IGNORE_INDEX,
        pad_value: int = 0,
        rng: np.random.Generator | None = None,
    ):
        self.size = tuple(size)  # (h, w)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.pad_value = pad_value
        self.rng = rng if rng is not None else np.random.default_rng()

    def _bbox(self, height: int, width: int) -> tuple[int, int]:
        top = int(self.rng.integers(0, max(height - self.size[0], 0) + 1))
        left = int(self.rng.integers(0, max(width - self.size[1], 0) + 1))
        return top, left

    def _crop(self, array: np.ndarray, top: int, left: int) -> np.ndarray:
        return array[top : top + self.size[0], left : left + self.size[1]]

    def _acceptable(self, label: np.ndarray) -> bool:
        values, counts = np.unique(label, return_counts=True)
        counts = counts[values != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        top, left = self._bbox(*label.shape)
        if self.cat_max_ratio < 1.0:
            for _ in range(CROP_RETRIES):
                if self._acceptable(self._crop(label, top, left)):
                    break
                top, left = self._bbox(*label.shape)
        return self._pad(self._crop(image, top, left), self._crop(label, top, left))

    def _pad(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pad_h, pad_w = self.size[0] - image.shape[0], self.size[1] - image.shape[1]
        if pad_h <= 0 and pad_w <= 0:
            return image, label
        spec = ((0, max(pad_h, 0)), (0, max(pad_w, 0)))
        image = np.pad(image, (*spec, (0, 0)), constant_values=self.pad_value)
        label = np.pad(label, spec, constant_values=self.ignore_index)
        return image, label

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, cat_max_ratio={self.cat_max_ratio})"


class RandomFlip:
    """Horizontal flip of image and label together with probability ``prob``."""

    def __init__(self, prob: float = 0.5, rng: np.random.Generator | None = None):
        self.prob = prob
        self.rng = rng if rng is not None else np.random.default_rng()

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.rng.random() < self.prob:
            return image[:, ::-1], label[:, ::-1]
        return image, label

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


class Normalize:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(x - mean) / std``; label -> (H, W) int64 tensor.

    ``mean`` and ``std`` are on the 0-255 scale (e.g. ``config.IMAGENET_MEAN``).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        normalised = (image.astype(np.float32) - self.mean) / self.std
        image_t = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
        label_t = torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))
        return image_t, label_t

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Compose:
    """Apply transforms in order to ``(image, label)``."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, label):
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def reseed(transform, seed: int) -> None:
    """Give every random step of ``transform`` one fresh generator seeded with ``seed``.

    Use it in a DataLoader ``worker_init_fn``: each worker otherwise starts from a copy of the
    same generator and would draw the same crops and flips.
    """
    rng = np.random.default_rng(seed)
    for t in getattr(transform, "transforms", [transform]):
        if hasattr(t, "rng"):
            t.rng = rng


def train_transform(
    scale: tuple[int, int] | None,
    crop_size: tuple[int, int],
    cat_max_ratio: float,
    flip_prob: float,
    mean: Sequence[float],
    std: Sequence[float],
    rng: np.random.Generator | None = None,
) -> Compose:
    """DAFormer training pipeline: keep-ratio resize, random crop, flip, normalise.

    ``rng`` drives crop and flip (one shared generator); None draws fresh OS entropy.
    """
    rng = rng if rng is not None else np.random.default_rng()
    steps = [ResizeKeepRatio(scale)] if scale is not None else []
    steps += [
        RandomCrop(crop_size, cat_max_ratio=cat_max_ratio, rng=rng),
        RandomFlip(flip_prob, rng=rng),
        Normalize(mean, std),
    ]
    return Compose(steps)


def val_transform(
    scale: tuple[int, int] | None, mean: Sequence[float], std: Sequence[float]
) -> Compose:
    """Test pipeline: optional keep-ratio resize (None = native size), then normalise."""
    steps = [ResizeKeepRatio(scale)] if scale is not None else []
    return Compose([*steps, Normalize(mean, std)])
