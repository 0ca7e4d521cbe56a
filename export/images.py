"""Images the parity check and INT8 calibration run on.

* :func:`folder_samples`: every image under a folder (Cityscapes layout or plain), with its label
  where one is found (``gtFine/.../*_gtFine_labelTrainIds.png``, ``*_labelIds.png`` through the
  cityscapesscripts table, or ``*_gtFine_color.png`` through the colour table; or a
  ``<stem>_labelTrainIds.png`` beside the image).
* :func:`generated_samples`: procedural demo-target street scenes (with labels) at several sizes,
  so that every export is checked on more than one shape without any dataset.
* :func:`calibration_images`: the images of a calibration folder, or a clear error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cluda_deploy.data.datasets import list_folder_images
from cluda_deploy.data.io import IMAGE_SUFFIXES, read_color_label, read_image, read_label_ids
from cluda_deploy.labels import cityscapes_id_to_train_id_lut, color_to_train_id

# Generated check images: the demo target size, an odd size and a portrait one (dynamic exports).
GENERATED_SIZES: tuple[tuple[int, int], ...] = ((128, 256), (97, 203), (200, 150))
_CITYSCAPES_IMAGE = "_leftImg8bit"


@dataclass
class Sample:
    """One check image: ``image (H, W, 3) uint8 RGB``, ``label (H, W) uint8 train ids or None``."""

    name: str
    image: np.ndarray
    label: np.ndarray | None = None

    def resized(self, size: tuple[int, int] | None) -> Sample:
        """The sample at ``size`` (h, w): image bilinear, label nearest; itself if already there."""
        if size is None or self.image.shape[:2] == tuple(size):
            return self
        height, width = size
        image = cv2.resize(self.image, (width, height), interpolation=cv2.INTER_LINEAR)
        label = None
        if self.label is not None:
            label = cv2.resize(self.label, (width, height), interpolation=cv2.INTER_NEAREST)
        return Sample(self.name, image, label)


def find_label(image_path: Path) -> np.ndarray | None:
    """The train-id label of an image if the folder has one (see module docstring), else None."""
    name = image_path.name
    candidates: list[tuple[Path, str]] = [(image_path.with_name(f"{image_path.stem}_labelTrainIds.png"), "train")]
    if _CITYSCAPES_IMAGE in name:
        base = name[: name.index(_CITYSCAPES_IMAGE)]
        parts = list(image_path.parent.parts)
        if "leftImg8bit" in parts:
            parts[len(parts) - 1 - parts[::-1].index("leftImg8bit")] = "gtFine"
            folder = Path(*parts)
            candidates += [
                (folder / f"{base}_gtFine_labelTrainIds.png", "train"),
                (folder / f"{base}_gtFine_labelIds.png", "ids"),
                (folder / f"{base}_gtFine_color.png", "color"),
            ]
    for path, kind in candidates:
        if path.is_file():
            if kind == "train":
                return read_label_ids(path, expected="a train-id PNG")
            if kind == "ids":
                return cityscapes_id_to_train_id_lut()[read_label_ids(path)]
            return color_to_train_id(read_color_label(path))
    return None


def folder_samples(root: str | Path, max_images: int | None = None) -> list[Sample]:
    """Images under ``root`` (sorted, label files skipped) with their labels where found."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"verification folder {root} does not exist; pass a folder of images")
    paths = list_folder_images(root)[:max_images]
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
    return [Sample(str(p.relative_to(root)), read_image(p), find_label(p)) for p in paths]


def generated_samples(
    count: int, sizes: Sequence[tuple[int, int]] = GENERATED_SIZES, seed: int = 0
) -> list[Sample]:
    """``count`` procedural demo-target scenes (validation look) cycling through ``sizes``."""
    from cluda_deploy.data.demo import render_sample

    lut = cityscapes_id_to_train_id_lut()
    samples = []
    for index in range(count):
        image, label_ids = render_sample(seed, "target", "val", 10_000 + index)
        sample = Sample(f"generated_{index}", image, lut[label_ids])
        samples.append(sample.resized(tuple(sizes[index % len(sizes)])))
    return samples


def calibration_images(folder: str | Path, max_images: int) -> list[Path]:
    """Up to ``max_images`` images under ``folder``, spread evenly over the sorted list."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"calibration folder {folder} does not exist; pass --calib with a folder of "
            "target-domain training images (e.g. data/cityscapes/leftImg8bit/train)"
        )
    paths = list_folder_images(folder)
    if not paths:
        raise FileNotFoundError(
            f"calibration folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}, searched "
            "recursively); INT8 needs target-domain images, e.g. data/cityscapes/leftImg8bit/train"
        )
    if max_images < len(paths):
        step = len(paths) / max_images
        paths = [paths[int(i * step)] for i in range(max_images)]
    return paths
