"""Segmentation datasets in the real folder layouts, and the ``create_dataset`` registry.

Each dataset lists its files and checks its layout at construction, failing with a
:class:`DatasetLayoutError` that names the missing path and the command or download that fixes it.
Items are dicts ``{"image": (3, H, W) float32, "label": (H, W) int64, "name": str, "has_label":
bool}``; unlabelled images get a label of all ``IGNORE_INDEX``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from cluda_deploy.data import layout
from cluda_deploy.data.io import IMAGE_SUFFIXES, read_image, read_train_ids
from cluda_deploy.data.transforms import reseed, val_transform
from cluda_deploy.labels import IGNORE_INDEX

# FolderDataset skips files that are labels, so a Cityscapes root can be used as a plain folder.
LABEL_FILE_SUFFIXES = (
    "_labelTrainIds.png",
    "_labelIds.png",
    "_instanceIds.png",
    "_gtFine_color.png",
)


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder that is missing, empty, or not converted yet."""


def _posix(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


class SegmentationDataset(Dataset):
    """Base: a list of (image path, train-id label path or None) pairs under ``root``.

    ``transform`` maps ``(image uint8 HxWx3, label uint8 HxW)`` to tensors; by default images are
    only normalised with the ImageNet statistics.
    """

    title = "dataset"

    def __init__(self, root: str | Path, transform: Callable | None = None):
        self.root = Path(root)
        self.transform = transform or val_transform(None, IMAGENET_MEAN, IMAGENET_STD)
        self.samples: list[tuple[Path, Path | None]] = []

    def __len__(self) -> int:
        return len(self.samples)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed (H, W, 3) uint8 RGB image and (H, W) uint8 train ids (all 255 if unlabelled)."""
        image_path, label_path = self.samples[index]
        image = read_image(image_path)
        if label_path is None:
            return image, np.full(image.shape[:2], IGNORE_INDEX, dtype=np.uint8)
        label = read_train_ids(label_path)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} but image "
                f"{image_path} is {image.shape[1]}x{image.shape[0]}; re-run the prepare step"
            )
        return image, label

    def __getitem__(self, index: int) -> dict:
        image_t, label_t = self.transform(*self.load_pair(index))
        image_path, label_path = self.samples[index]
        return {
            "image": image_t,
            "label": label_t,
            "name": _posix(image_path, self.root),
            "has_label": label_path is not None,
        }

    def get_image_label_paths(self) -> list[tuple[Path, Path | None]]:
        """(image path, train-id label path or None) for every item, in dataset order."""
        return list(self.samples)

    def labelled_pairs(self) -> list[tuple[Path, Path]]:
        """The (image path, train-id label path) pairs that have a label (for evaluation)."""
        return [(image, label) for image, label in self.samples if label is not None]

    def index_by_label_file(self) -> dict[str, int]:
        """Label path relative to ``root`` (the key used in the class-stats files) -> item index."""
        return {_posix(lab, self.root): i for i, (_, lab) in enumerate(self.samples) if lab}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, n={len(self)})"

    # ----------------------------------------------------------------- layout checks

    def _require_dir(self, path: Path, what: str, fix: str) -> None:
        if not path.is_dir():
            raise DatasetLayoutError(f"no {self.title} {what} under {path}; {fix}")

    def _pair(
        self, images: list[Path], label_for: Callable[[Path], Path], raw_for: Callable[[Path], Path],
        fix_convert: str, fix_download: str,
    ) -> None:  # fmt: skip
        """Pair every image with its converted label, or fail naming the first one missing."""
        labels = [label_for(p) for p in images]
        missing = [(img, lab) for img, lab in zip(images, labels, strict=True) if not lab.is_file()]
        if missing:
            no_raw = [raw_for(img) for img, _ in missing if not raw_for(img).is_file()]
            if no_raw:
                what, first, fix = "no label at all", no_raw[0], f"{fix_download}, or remove them"
            else:
                what, first, fix = "no converted label", missing[0][1], fix_convert
            raise DatasetLayoutError(
                f"{len(no_raw) or len(missing)} of {len(images)} {self.title} images have {what} "
                f"(first: {first}); {fix}"
            )
        self.samples = list(zip(images, labels, strict=True))


class _FlatDataset(SegmentationDataset):
    """GTA5 / Synthia: ``<image_dir>/<stem>.png`` with ``<label_dir>/<stem>_labelTrainIds.png``."""

    key = ""
    image_dir = label_dir = ""

    def __init__(
        self, root: str | Path, transform: Callable | None = None, *, fix: str | None = None
    ):
        super().__init__(root, transform)
        download = fix or layout.download_hint(self.key, self.root)
        convert = fix or layout.prepare_command(self.key, self.root)
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{self.title} root {self.root} does not exist; {download}")
        image_dir, label_dir = self.root / self.image_dir, self.root / self.label_dir
        images = sorted(image_dir.glob("*.png")) if image_dir.is_dir() else []
        if not images:
            raise DatasetLayoutError(
                f"no {self.title} images under {image_dir} (no *.png); {download}"
            )
        self._require_dir(label_dir, "labels", download)
        if not any(label_dir.glob("*" + layout.TRAIN_ID_SUFFIX)):
            if not any(layout.RAW_LABEL_NAME.search(p.name) for p in label_dir.glob("*.png")):
                raise DatasetLayoutError(f"no {self.title} labels under {label_dir}; {download}")
            raise DatasetLayoutError(
                f"{self.title} labels not converted under {label_dir} "
                f"(no *{layout.TRAIN_ID_SUFFIX}); {convert}"
            )
        self._pair(
            images,
            lambda p: label_dir / (p.stem + layout.TRAIN_ID_SUFFIX),
            lambda p: label_dir / p.name,
            convert,
            download,
        )


class GTADataset(_FlatDataset):
    """GTA5: ``images/NNNNN.png`` and ``labels/NNNNN_labelTrainIds.png`` (after prepare)."""

    key, title = "gta", "GTA5"
    image_dir, label_dir = layout.GTA_IMAGE_DIR, layout.GTA_LABEL_DIR


class SynthiaDataset(_FlatDataset):
    """SYNTHIA-RAND-CITYSCAPES: ``RGB/NNNNNNN.png`` and ``GT/LABELS/NNNNNNN_labelTrainIds.png``."""

    key, title = "synthia", "Synthia"
    image_dir, label_dir = layout.SYNTHIA_IMAGE_DIR, layout.SYNTHIA_LABEL_DIR


def cityscapes_label_path(image_path: Path, root: Path, suffix: str) -> Path:
    """``leftImg8bit/<split>/<city>/<x>_leftImg8bit.png`` -> ``gtFine/<split>/<city>/<x><suffix>``."""
    rel = image_path.relative_to(root / layout.CITYSCAPES_IMAGE_DIR)
    base = rel.name[: -len(layout.CITYSCAPES_IMAGE_SUFFIX)]
    return root / layout.CITYSCAPES_LABEL_DIR / rel.parent / (base + suffix)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes ``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with gtFine train-id labels.

    ``require_labels=False`` (unlabelled target training) lists every image and loads a label
    only where its ``*_gtFine_labelTrainIds.png`` exists.
    """

    title = "Cityscapes"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable | None = None,
        require_labels: bool = True,
        *,
        fix: str | None = None,
    ):
        super().__init__(root, transform)
        self.split = split
        download = fix or layout.download_hint("cityscapes", self.root)
        if not self.root.is_dir():
            raise DatasetLayoutError(f"{self.title} root {self.root} does not exist; {download}")
        image_dir = self.root / layout.CITYSCAPES_IMAGE_DIR / split
        images = sorted(image_dir.glob("*/*" + layout.CITYSCAPES_IMAGE_SUFFIX))
        if not images:
            raise DatasetLayoutError(f"no {self.title} images under {image_dir}; {download}")
        label_for = partial(
            cityscapes_label_path, root=self.root, suffix=layout.CITYSCAPES_TRAIN_ID_SUFFIX
        )
        if not require_labels:
            self.samples = [(p, label_for(p) if label_for(p).is_file() else None) for p in images]
            return
        self._check_labels(split, fix)
        self._pair(
            images,
            label_for,
            self._raw_label_for,
            fix or layout.prepare_command("cityscapes", self.root),
            fix or layout.download_hint("cityscapes-labels", self.root),
        )

    def _raw_label_for(self, image: Path) -> Path:
        """The first source prepare can convert from, or the labelIds path when there is none."""
        for suffix in (layout.CITYSCAPES_POLYGON_SUFFIX, layout.CITYSCAPES_COLOR_SUFFIX):
            candidate = cityscapes_label_path(image, self.root, suffix)
            if candidate.is_file():
                return candidate
        return cityscapes_label_path(image, self.root, layout.CITYSCAPES_LABEL_ID_SUFFIX)

    def _check_labels(self, split: str, fix: str | None) -> None:
        label_dir = self.root / layout.CITYSCAPES_LABEL_DIR / split
        download = fix or layout.download_hint("cityscapes-labels", self.root)
        self._require_dir(label_dir, "labels", download)
        if not any(label_dir.glob("*/*" + layout.CITYSCAPES_TRAIN_ID_SUFFIX)):
            raise DatasetLayoutError(
                f"{self.title} labels not converted under {label_dir} "
                f"(no *{layout.CITYSCAPES_TRAIN_ID_SUFFIX}); "
                + (fix or layout.prepare_command("cityscapes", self.root))
            )

    def __repr__(self) -> str:
        return f"CityscapesDataset(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"


def list_folder_images(root: Path) -> list[Path]:
    """Image files anywhere under ``root``, sorted, skipping files named like labels."""
    return sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and not p.name.endswith(LABEL_FILE_SUFFIXES)
        and p.is_file()
    )


class FolderDataset(SegmentationDataset):
    """Any directory tree of .png/.jpg/.jpeg/.webp images, unlabelled (the user's own target).

    Files named like labels (``*_labelTrainIds.png``, ``*_labelIds.png``, ...) are skipped.
    """

    title = "image folder"

    def __init__(self, root: str | Path, transform: Callable | None = None):
        super().__init__(root, transform)
        if not self.root.is_dir():
            raise DatasetLayoutError(
                f"image folder {self.root} does not exist; point the target root at a folder of "
                f"{'/'.join(IMAGE_SUFFIXES)} images"
            )
        images = list_folder_images(self.root)
        if not images:
            raise DatasetLayoutError(
                f"no images under {self.root} (looked for {', '.join(IMAGE_SUFFIXES)} "
                "recursively); copy your target-domain images there"
            )
        self.samples = [(p, None) for p in images]


# --------------------------------------------------------------------------- registry


def _no_splits(name: str, split: str) -> None:
    if split not in ("train", "all"):
        raise ValueError(f"{name} has no {split!r} split (all its images are training images)")


def _demo_fix(root: str | Path) -> str:
    return layout.demo_command(Path(root).parent)


def _gta(root, split, transform, require_labels):
    _no_splits("gta", split)
    return GTADataset(root, transform)


def _synthia(root, split, transform, require_labels):
    _no_splits("synthia", split)
    return SynthiaDataset(root, transform)


def _cityscapes(root, split, transform, require_labels):
    return CityscapesDataset(root, split, transform, require_labels)


def _folder(root, split, transform, require_labels):
    if require_labels:
        raise ValueError("the 'folder' dataset is unlabelled; create it with require_labels=False")
    return FolderDataset(root, transform)


def _demo_source(root, split, transform, require_labels):
    _no_splits("demo-source", split)
    return GTADataset(root, transform, fix=_demo_fix(root))


def _demo_target(root, split, transform, require_labels):
    return CityscapesDataset(root, split, transform, require_labels, fix=_demo_fix(root))


DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "gta": _gta,
    "synthia": _synthia,
    "cityscapes": _cityscapes,
    "folder": _folder,
    "demo-source": _demo_source,
    "demo-target": _demo_target,
}

# Sub-folder of the data root each dataset lives in ('folder' is the data root itself).
_ROOT_DIRS = {
    "gta": "gta", "synthia": "synthia", "cityscapes": "cityscapes", "folder": "",
    "demo-source": "gta", "demo-target": "cityscapes",
}  # fmt: skip


def dataset_names() -> list[str]:
    return sorted(DATASETS)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(dataset_names())}")


def default_root(name: str, data_root: str | Path) -> Path:
    """``<data_root>/gta`` etc.; the demo domains live in ``<demo_root>/gta`` and ``/cityscapes``."""
    _check_name(name)
    return Path(data_root) / _ROOT_DIRS[name]


def create_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    transform: Callable | None = None,
    require_labels: bool = True,
) -> SegmentationDataset:
    """Build dataset ``name`` from its own root folder (see :func:`default_root`).

    GTA5 / Synthia have no splits (``split`` must be 'train' or 'all'); 'folder' is unlabelled.
    """
    _check_name(name)
    return DATASETS[name](root, split, transform, require_labels)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the dataset's transform from the worker's torch seed.

    torch derives each worker's seed from the loader's generator, so a seeded loader stays
    repeatable while workers draw different crops.
    """
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "transform"):
        reseed(info.dataset.transform, info.seed % 2**32)
