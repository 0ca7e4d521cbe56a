"""Training data feed: the source and target crops of every step as a pure function of (seed, step).

Each step draws its sample indices and per-sample crop/flip seeds from a generator keyed by
``(seed, domain, step)``, so a resumed run sees exactly the crops it would have seen, whatever
the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config
from cluda_deploy.data.datasets import SegmentationDataset, create_dataset, default_root
from cluda_deploy.data.transforms import train_transform

DOMAIN_IDS = {"source": 0, "target": 1}
# Picks a step's sample indices: (generator, batch size) -> indices. Rare-class sampling plugs in here.
IndexPicker = Callable[[np.random.Generator, int], np.ndarray]


def domain_root(cfg: Config, domain: str) -> Path:
    name = cfg.data.source if domain == "source" else cfg.data.target
    explicit = cfg.data.source_root if domain == "source" else cfg.data.target_root
    return Path(explicit) if explicit else default_root(name, cfg.data.root)


def domain_dataset(cfg: Config, domain: str, split: str = "train") -> SegmentationDataset:
    name = cfg.data.source if domain == "source" else cfg.data.target
    # Target labels are never used in training: do not require them.
    return create_dataset(name, domain_root(cfg, domain), split=split, require_labels=domain == "source")


class StepCrops(Dataset):
    """Training crops addressed by ``(sample index, seed)``; the same key gives the same crop."""

    def __init__(
        self,
        base: SegmentationDataset,
        scale: tuple[int, int] | None,
        crop_size: tuple[int, int],
        cat_max_ratio: float,
        flip_prob: float,
    ) -> None:
        self.base = base
        self.scale, self.crop_size = scale, crop_size
        self.cat_max_ratio, self.flip_prob = cat_max_ratio, flip_prob

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, seed = key
        image, label = self.base.load_pair(index)
        transform = train_transform(
            self.scale, self.crop_size, self.cat_max_ratio, self.flip_prob, IMAGENET_MEAN,
            IMAGENET_STD, rng=np.random.default_rng(seed),
        )  # fmt: skip
        image_t, label_t = transform(image, label)
        return {"image": image_t, "label": label_t, "index": index}


def uniform_picker(num_samples: int) -> IndexPicker:
    return lambda rng, batch_size: rng.integers(0, num_samples, size=batch_size)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for steps ``start..stop-1``, a batch of ``(index, crop seed)`` keys."""

    def __init__(
        self, picker: IndexPicker, batch_size: int, seed: int, domain: str, start: int, stop: int
    ) -> None:
        self.picker, self.batch_size = picker, batch_size
        self.seed, self.domain_id = seed, DOMAIN_IDS[domain]
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            rng = np.random.default_rng([self.seed, self.domain_id, step])
            indices = self.picker(rng, self.batch_size)
            seeds = rng.integers(0, 2**62, size=self.batch_size)
            yield [(int(i), int(s)) for i, s in zip(indices, seeds, strict=True)]


def build_step_loader(
    cfg: Config, domain: str, start: int, device: torch.device, picker: IndexPicker | None = None
) -> DataLoader:
    """DataLoader over the crops of steps ``start..train.iters-1`` of ``domain``."""
    base = domain_dataset(cfg, domain)
    crops = StepCrops(
        base,
        scale=cfg.data.source_scale if domain == "source" else cfg.data.target_scale,
        crop_size=tuple(cfg.data.crop_size),
        # mmseg applies cat_max_ratio to source crops only; target crops are plain random.
        cat_max_ratio=cfg.data.cat_max_ratio if domain == "source" else 1.0,
        flip_prob=cfg.data.flip_prob,
    )
    sampler = StepBatchSampler(
        picker or uniform_picker(len(base)), cfg.data.batch_size, cfg.train.seed, domain, start,
        cfg.train.iters,
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
