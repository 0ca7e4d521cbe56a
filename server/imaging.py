"""Decode uploaded images safely and encode results (label PNG, overlay, confidence, RLE).

Decoding follows research/deploy.md 5.6: a format allowlist, the pixel count checked from the
header before any pixel is decoded, Pillow's decompression-bomb warning promoted to an error, and
explicit conversion of every mode to 8-bit RGB (16-bit grey scaled, CMYK converted, alpha
dropped). EXIF orientation is ignored, as ``cluda predict`` and the training readers do, so the
label map lines up with the stored pixels.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from cluda_deploy.labels import LabelSpace

# Content type -> Pillow format; nothing else is ever handed to a Pillow decoder.
CONTENT_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
ALLOWED_FORMATS = tuple(sorted(set(CONTENT_TYPES.values())))
# Fast zlib level: label maps compress well anyway, and encoding sits on the request path.
PNG_COMPRESS_LEVEL = 1
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageRejected(ValueError):
    """An upload the server will not decode; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def promote_decompression_bomb_warning() -> None:
    """Make Pillow's ``DecompressionBombWarning`` an error in this process (once, at start-up)."""
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG/JPEG/WebP bytes -> (H, W, 3) uint8 RGB, or :class:`ImageRejected` (413 or 422)."""
    if not data:
        raise ImageRejected(422, "empty image: the body has zero bytes; send the PNG, JPEG or WebP file")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(413, f"image rejected as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise ImageRejected(
            422, f"not a decodable {', '.join(ALLOWED_FORMATS)} image; send one of those formats"
        ) from None
    except _DECODE_ERRORS as exc:
        raise ImageRejected(422, f"cannot read the image header ({_reason(exc)})") from None
    width, height = img.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        # Pillow only warns here (and raises at twice this); the warning is an error for us, also
        # where a warnings filter elsewhere in the process has silenced it.
        raise ImageRejected(
            413, f"image rejected as a decompression bomb ({width}x{height} = {width * height} "
            f"pixels, over Pillow's limit of {Image.MAX_IMAGE_PIXELS})",
        )  # fmt: skip
    if width * height > max_pixels:
        raise ImageRejected(
            413, f"image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels}; downscale it (or start the server with a larger --max-pixels)",
        )  # fmt: skip
    if width == 0 or height == 0:
        raise ImageRejected(422, f"image has no pixels ({width}x{height})")
    try:
        img.load()  # Pillow decodes lazily; truncation and corrupt data only show up here
        return to_rgb(img)
    except _DECODE_ERRORS as exc:
        raise ImageRejected(422, f"cannot decode the {img.format} image ({_reason(exc)}); send an intact file") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "truncat" in text.lower() or isinstance(exc, EOFError):
        return f"truncated? {text}"
    return text[:200]


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> (H, W, 3) uint8 RGB.

    16-bit grey (``I;16*``/``I``) is scaled 65535 -> 255 (Pillow's own convert would clip at 255);
    CMYK, palette, grey and alpha modes go through Pillow's RGB conversion.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def label_png(labels: np.ndarray) -> bytes:
    """(H, W) uint8 train ids -> 8-bit grey PNG whose pixel values are the train ids."""
    return encode_png(labels)


def overlay_png(image: np.ndarray, labels: np.ndarray, label_space: LabelSpace, alpha: float) -> bytes:
    """Cityscapes-coloured labels blended over the (H, W, 3) input -> RGB PNG."""
    return encode_png(label_space.overlay(image, labels, alpha))


def confidence_to_uint8(confidence: np.ndarray) -> np.ndarray:
    """(H, W) float probabilities in [0, 1] -> uint8 ``round(255 * p)``."""
    return np.clip(np.rint(confidence * 255.0), 0, 255).astype(np.uint8)


def confidence_png(confidence: np.ndarray) -> bytes:
    """(H, W) float32 max-softmax probability -> 8-bit grey PNG (255 = certain)."""
    return encode_png(confidence_to_uint8(confidence))


def rle_encode(mask: np.ndarray) -> list[int]:
    """COCO uncompressed RLE of a (H, W) boolean mask: run lengths in column-major order.

    As pycocotools ``mask.encode`` (Fortran order): counts alternate background/foreground runs
    and always start with a background run, which is 0 when the first pixel is foreground.
    ``[[0, 1], [1, 1]]`` -> ``[1, 3]``; ``[[1, 0], [0, 0]]`` -> ``[0, 1, 3]``.
    """
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], changes, [flat.size]))).tolist()
    return [0, *counts] if flat[0] else counts
