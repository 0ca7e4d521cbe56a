"""Image and label readers and atomic writers.

Each label format has its own reader because each has its own trap (research/data.md section 7):
GTA5 labels are palette PNGs whose *indices* are the ids (never ``.convert("RGB")``), Synthia labels
are 16-bit 3-channel PNGs that Pillow silently truncates to zeros (read with OpenCV), and the
mmseg demo image is a palette PNG that must be converted to RGB.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# Image files the readers and FolderDataset accept.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Pillow modes that hold one id per pixel (P: palette index, L: 8-bit grey).
LABEL_ID_MODES = ("P", "L")


class ImageReadError(ValueError):
    """An image or label file that exists but cannot be decoded."""


class LabelFormatError(ImageReadError):
    """A label file in the wrong encoding (e.g. a colour visualisation where ids are expected)."""


def _decode_failure(path: Path, exc: BaseException) -> ImageReadError:
    text = str(exc)
    if "truncat" in text.lower() or isinstance(exc, EOFError):
        kind = path.suffix.lstrip(".").upper() or "file"
        reason = f"truncated {kind}?"
    else:
        reason = text or type(exc).__name__
    return ImageReadError(f"cannot decode {path} ({reason}); re-download or delete it")


def _open(path: str | Path) -> Image.Image:
    """Open and fully decode ``path`` with Pillow, turning decoder failures into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    try:
        img = Image.open(path)
        img.load()  # Pillow decodes lazily; truncation only shows up here
    except (OSError, SyntaxError, ValueError, EOFError, UnidentifiedImageError) as exc:
        raise _decode_failure(path, exc) from None
    return img


def read_image(path: str | Path) -> np.ndarray:
    """RGB image -> (H, W, 3) uint8. Palette, grey and RGBA files are converted to RGB."""
    return np.array(_open(path).convert("RGB"))  # a writable copy


def read_label_ids(path: str | Path, expected: str = "a label-id PNG") -> np.ndarray:
    """One-id-per-pixel PNG (mode P or L: GTA5 labels, Cityscapes labelIds/labelTrainIds) -> (H, W) uint8.

    Palette PNGs keep their indices: the index *is* the id, the palette is only for viewing.
    """
    img = _open(path)
    if img.mode not in LABEL_ID_MODES:
        colour = " colour image" if img.mode in ("RGB", "RGBA") else ""
        raise LabelFormatError(
            f"{path} is a mode {img.mode}{colour}, expected {expected} (mode P or L, one id per "
            "pixel); use the dataset's id labels, not a colour visualisation"
        )
    return np.array(img, dtype=np.uint8)


def read_train_ids(path: str | Path) -> np.ndarray:
    """Converted ``*_labelTrainIds.png`` -> (H, W) uint8 train ids (255 = ignore)."""
    return read_label_ids(path, expected="a train-id PNG")


def read_synthia_label(path: str | Path) -> np.ndarray:
    """SYNTHIA ``GT/LABELS`` 16-bit 3-channel PNG -> (H, W) uint16 class ids.

    The class id is the R channel; OpenCV returns BGR, so that is channel 2 (DAFormer's
    ``[..., -1]``). Pillow would keep only the high byte of each 16-bit sample, i.e. zeros.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such label file: {path}")
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise ImageReadError(
            f"cannot decode {path} (OpenCV could not read it: truncated or not an image?); "
            "re-download or delete it"
        )
    if raw.ndim != 3 or raw.shape[2] < 3 or raw.dtype != np.uint16:
        channels = 1 if raw.ndim == 2 else raw.shape[2]
        raise LabelFormatError(
            f"{path} has {channels} channel(s) of {raw.dtype}, expected a SYNTHIA label: a 16-bit "
            "3-channel PNG with the class id in the R channel (GT/LABELS, not GT/COLOR)"
        )
    return raw[..., 2]


def read_color_label(path: str | Path) -> np.ndarray:
    """Cityscapes ``*_gtFine_color.png`` (RGB or RGBA) -> (H, W, 3) uint8 colours."""
    img = _open(path)
    if img.mode not in ("RGB", "RGBA"):
        raise LabelFormatError(
            f"{path} is a mode {img.mode} image, expected an RGB(A) colour label"
        )
    return np.array(img.convert("RGB"))


def _temp_path(path: Path) -> Path:
    # The temp name never ends in '.png', so converters that glob '*<digit>.png' skip it.
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


def _atomic_save(img: Image.Image, path: str | Path, compress_level: int) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        img.save(tmp, format="PNG", compress_level=compress_level)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_label_png(
    path: str | Path, label: np.ndarray, palette: np.ndarray | None = None, compress_level: int = 6
) -> None:
    """Write an (H, W) uint8 id map atomically: mode L, or mode P when a (256, 3) palette is given."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"label must be (H, W) uint8, got {label.shape} {label.dtype}")
    img = Image.fromarray(label)  # mode L
    if palette is not None:
        img = img.copy()
        img.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # -> mode P
    _atomic_save(img, path, compress_level)


def write_image_png(path: str | Path, image: np.ndarray, compress_level: int = 6) -> None:
    """Write an (H, W, 3) uint8 RGB image atomically."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    _atomic_save(Image.fromarray(image), path, compress_level)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        tmp.write_text(json.dumps(obj, indent=indent))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
