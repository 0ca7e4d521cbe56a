"""The engine interface every backend implements, and what the HTTP layer learns about a model.

An engine turns a batch of same-sized uint8 RGB images into class-id maps at the same size:
``infer(images (N, H, W, 3) uint8) -> EngineOutput(labels (N, H, W) uint8, confidence (N, H, W)
float32 or None)``. It is called from one dedicated thread (the micro-batcher's worker for its
device), never from the event loop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cluda_deploy.labels import LabelSpace


class EngineError(RuntimeError):
    """A model file that cannot be served, with the reason and the fix."""


class ConfidenceUnavailable(ValueError):
    """``confidence=true`` asked of a model that has no confidence (or logits) output."""


@dataclass
class EngineOutput:
    labels: np.ndarray  # (N, H, W) uint8 train ids
    confidence: np.ndarray | None = None  # (N, H, W) float32 max softmax probability


@dataclass
class EngineInfo:
    """What ``GET /v1/model`` reports; the same for every device's engine of one model."""

    backend: str  # torch | onnxruntime | tensorrt | aoti
    path: Path
    sha256: str
    label_space: LabelSpace
    device: str
    precision: str = "fp32"
    # (H, W) the model only accepts (static engines); None = any size.
    static_size: tuple[int, int] | None = None
    max_batch: int | None = None  # None = no limit of the model's own
    # Sizes to warm up at when the settings name none.
    default_warmup_sizes: list[tuple[int, int]] = field(default_factory=list)
    has_confidence: bool = True
    min_side: int = 1  # smaller images are upscaled to this short side first
    provenance: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # backend specifics (providers, ...)

    def target_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) an input of ``size`` is run at: the static size, else big enough."""
        return self.static_size or fit_min_side(size, self.min_side)


class Engine(Protocol):
    info: EngineInfo

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        """``images (N, H, W, 3) uint8 RGB -> labels (N, H, W) uint8 (+ confidence float32)``."""
        ...

    def close(self) -> None: ...


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_batch(images: np.ndarray) -> None:
    """Reject anything but a non-empty (N, H, W, 3) uint8 batch: a bug upstream, not bad input."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not images.shape[0]:
        raise ValueError(
            f"engine input must be a (N, H, W, 3) uint8 batch, got {images.dtype} {images.shape}"
        )


def resize_batch(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (N, H, W, 3) uint8 images to ``size`` (h, w), for static-shape engines."""
    import cv2

    if images.shape[1:3] == tuple(size):
        return images
    return np.stack([cv2.resize(im, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for im in images])


def resize_outputs(out: EngineOutput, size: tuple[int, int]) -> EngineOutput:
    """Labels back to ``size`` (h, w) with nearest, confidence with bilinear."""
    import cv2

    if out.labels.shape[1:3] == tuple(size):
        return out
    labels = np.stack([cv2.resize(m, (size[1], size[0]), interpolation=cv2.INTER_NEAREST) for m in out.labels])
    conf = None
    if out.confidence is not None:
        conf = np.stack(
            [cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for c in out.confidence]
        )
    return EngineOutput(labels, conf)


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """``logits (N, C, H, W) float -> (N, H, W) float32``: the largest softmax probability per pixel."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (1.0 / exp.sum(axis=1)).astype(np.float32)  # max(exp) is exp(0) = 1


def fit_min_side(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """Scale (h, w) up, keeping the aspect ratio, until the short side is at least ``min_side``.

    ``(20, 45)`` with ``min_side`` 29 -> ``(29, 65)``; sizes already large enough are unchanged.
    """
    height, width = size
    if min(height, width) >= min_side:
        return size
    factor = min_side / min(height, width)
    return max(min_side, round(height * factor)), max(min_side, round(width * factor))


def infer_fixed(
    run, images: np.ndarray, confidence: bool, target: tuple[int, int], max_batch: int | None,
) -> EngineOutput:  # fmt: skip
    """Fit a batch to what an engine takes, call ``run``, fit the output back to the input size.

    ``run(images (n, h, w, 3) uint8, confidence) -> EngineOutput`` at the engine's size. Images
    are resized to ``target`` (h, w) (bilinear; no-op when equal) and labels back with nearest;
    a static batch ``max_batch`` is filled by repeating the last image, the padding dropped after.
    """
    check_batch(images)
    size = images.shape[1:3]
    images = resize_batch(images, target)
    if not max_batch or len(images) == max_batch:
        return resize_outputs(run(images, confidence), size)
    labels, confs = [], []
    for start in range(0, len(images), max_batch):
        chunk = images[start : start + max_batch]
        count = len(chunk)
        if count < max_batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], max_batch - count, axis=0)])
        out = run(chunk, confidence)
        labels.append(out.labels[:count])
        if out.confidence is not None:
            confs.append(out.confidence[:count])
    merged = EngineOutput(np.concatenate(labels), np.concatenate(confs) if confs else None)
    return resize_outputs(merged, size)
