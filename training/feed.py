"""Training data feed: the source and target crops of every step as a pure function of (seed, step).

Each step draws its sample indices and per-sample crop/flip seeds from a generator keyed by
``(seed, domain, step)`` (and the rank under DDP), so a resumed run sees exactly the crops it
would have seen, whatever the number of loader workers. With rare-class sampling
(``uda.rcs``) the source picker also names the class each crop must show (training/rcs.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config
from cluda_deploy.data.datasets import SegmentationDataset, create_dataset, default_root
from cluda_deploy.data.prepare import load_class_stats
from cluda_deploy.data.transforms import train_transform

DOMAIN_IDS = {"source": 0, "target": 1}
NO_CLASS = -1  # a crop that need not show any particular class
# mmseg RandomCrop re-draws and DAFormer's RCS crop re-draws: at most this many extra crops.
RCS_CROP_REDRAWS = 10
# Picks a step's samples: (generator, batch size) -> (sample indices, class each crop must show or
# NO_CLASS). Rare-class sampling (training/rcs.py) plugs in here.
IndexPicker = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def domain_root(cfg: Config, domain: str) -> Path:
    name = cfg.data.source if domain == "source" else cfg.data.target
    explicit = cfg.data.source_root if domain == "source" else cfg.data.target_root
    return Path(explicit) if explicit else default_root(name, cfg.data.root)


def domain_dataset(cfg: Config, domain: str, split: str = "train") -> SegmentationDataset:
    name = cfg.data.source if domain == "source" else cfg.data.target
    # Target labels are never used in training: do not require them.
    return create_dataset(
        name, domain_root(cfg, domain), split=split, require_labels=domain == "source"
    )


class StepCrops(Dataset):
    """Training crops addressed by ``(sample index, seed, class)``; the same key gives the same crop.

    With a class (>= 0) the crop is re-drawn from the same image up to :data:`RCS_CROP_REDRAWS`
    times until it holds more than ``min_class_pixels`` pixels of it (DAFormer's RCS); the last
    draw is kept either way.
    """

    def __init__(
        self,
        base: SegmentationDataset,
        scale: tuple[int, int] | None,
        crop_size: tuple[int, int],
        cat_max_ratio: float,
        flip_prob: float,
        min_class_pixels: float = 0.0,
    ) -> None:
        self.base = base
        self.scale, self.crop_size = scale, crop_size
        self.cat_max_ratio, self.flip_prob = cat_max_ratio, flip_prob
        self.min_class_pixels = min_class_pixels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        index, seed, cls = key
        image, label = self.base.load_pair(index)
        transform = train_transform(
            self.scale, self.crop_size, self.cat_max_ratio, self.flip_prob, IMAGENET_MEAN,
            IMAGENET_STD, rng=np.random.default_rng(seed),
        )  # fmt: skip
        image_t, label_t = transform(image, label)
        if cls != NO_CLASS:
            for _ in range(RCS_CROP_REDRAWS):
                if int((label_t == cls).sum()) > self.min_class_pixels:
                    break
                image_t, label_t = transform(image, label)
        return {"image": image_t, "label": label_t, "index": index}


def uniform_picker(num_samples: int) -> IndexPicker:
    def pick(rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, num_samples, size=batch_size), np.full(batch_size, NO_CLASS)

    return pick


class StepBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Yields, for steps ``start..stop-1``, a batch of ``(index, crop seed, class)`` keys.

    ``rank`` (of ``world_size`` DDP processes) joins the key so that every process draws its own
    crops; a single process (world_size 1) keys by ``(seed, domain, step)`` alone.
    """

    def __init__(
        self, picker: IndexPicker, batch_size: int, seed: int, domain: str, start: int, stop: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:  # fmt: skip
        self.picker, self.batch_size = picker, batch_size
        self.seed, self.domain_id = seed, DOMAIN_IDS[domain]
        self.start, self.stop = start, stop
        self.rank_key = [rank] if world_size > 1 else []

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, self.domain_id, step, *self.rank_key])
            indices, classes = self.picker(rng, self.batch_size)
            seeds = rng.integers(0, 2**62, size=self.batch_size)
            yield [
                (int(i), int(s), int(c)) for i, s, c in zip(indices, seeds, classes, strict=True)
            ]


def source_picker(cfg: Config, base: SegmentationDataset) -> IndexPicker:
    """Rare-class sampling from the source's class statistics when ``uda.rcs``, else uniform."""
    if not cfg.uda.rcs:
        return uniform_picker(len(base))
    from training.rcs import rare_class_picker

    stats = load_class_stats(base.root, cfg.data.source)
    return rare_class_picker(
        stats, base.index_by_label_file(), cfg.uda.rcs_temperature, cfg.uda.rcs_min_pixels
    )


def build_step_loader(
    cfg: Config,
    base: SegmentationDataset,
    domain: str,
    start: int,
    device: torch.device,
    picker: IndexPicker | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """DataLoader over this rank's crops of ``base`` (the ``domain`` set) for steps
    ``start..train.iters-1``; ``picker`` defaults to uniform sampling."""
    is_source = domain == "source"
    crops = StepCrops(
        base,
        scale=cfg.data.source_scale if is_source else cfg.data.target_scale,
        crop_size=tuple(cfg.data.crop_size),
        # mmseg applies cat_max_ratio to source crops only; target crops are plain random.
        cat_max_ratio=cfg.data.cat_max_ratio if is_source else 1.0,
        flip_prob=cfg.data.flip_prob,
        min_class_pixels=cfg.uda.rcs_min_pixels * cfg.uda.rcs_min_crop_ratio,
    )
    picker = picker or uniform_picker(len(base))
    sampler = StepBatchSampler(
        picker, cfg.data.batch_size, cfg.train.seed, domain, start, cfg.train.iters, rank,
        world_size,
    )  # fmt: skip
    workers = cfg.data.workers
    return DataLoader(
        crops,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # Its own generator: creating the iterator must not draw from the global torch RNG,
        # or a resumed run's dropout would be shifted by one draw.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def validation_pairs(cfg: Config) -> list[tuple[Path, Path]]:
    """Labelled (image, train-id label) pairs of the target validation split."""
    dataset = domain_dataset(cfg, "target", split=cfg.data.val_split)
    pairs = dataset.labelled_pairs()
    return pairs[: cfg.data.val_max_images] if cfg.data.val_max_images else pairs
