"""Confusion-matrix IoU over train ids, as cityscapesscripts' ``evalPixelLevelSemanticLabeling``.

IoU_c = TP / (TP + FP + FN), accumulated over the whole set; pixels whose ground truth is the
ignore index never count; a class with no ground truth and no prediction scores NaN and the
mean skips it (cityscapesscripts semantics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cluda_deploy.labels import LabelSpace


class ConfusionMatrix:
    """Accumulates a (C, C) matrix, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: np.ndarray | torch.Tensor, label: np.ndarray | torch.Tensor) -> None:
        """prediction, label: integer maps of the same shape (any leading dims)."""
        pred = torch.as_tensor(prediction).reshape(-1).to(torch.int64)
        gt = torch.as_tensor(label).reshape(-1).to(torch.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, label has {gt.numel()}")
        keep = gt != self.ignore_index
        pred, gt = pred[keep], gt[keep]
        for name, values in (("prediction", pred), ("label", gt)):
            if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
                raise ValueError(
                    f"{name} holds ids outside 0..{self.num_classes - 1} "
                    f"(and ignore {self.ignore_index}): is it in another label space?"
                )
        n = self.num_classes
        self.matrix += torch.bincount(gt * n + pred, minlength=n * n).reshape(n, n).numpy()

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix

    def iou(self) -> np.ndarray:
        """(C,) per-class IoU, NaN where the class has neither ground truth nor prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        fp = self.matrix.sum(axis=0) - tp
        fn = self.matrix.sum(axis=1) - tp
        denom = tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, tp / np.maximum(denom, 1), np.nan)

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float("nan")


def mean_iou(iou: np.ndarray, class_ids: Sequence[int] | None = None) -> float:
    values = iou if class_ids is None else iou[list(class_ids)]
    if np.all(np.isnan(values)):
        return float("nan")
    return float(np.nanmean(values))


@dataclass
class SegmentationScores:
    """Per-class IoU and the means a paper reports (mIoU, plus mIoU16/mIoU13 for Synthia)."""

    class_names: tuple[str, ...]
    iou: np.ndarray
    miou: float
    subsets: dict[str, float]
    pixel_accuracy: float
    num_images: int

    @classmethod
    def from_confusion(cls, cm: ConfusionMatrix, label_space: LabelSpace, num_images: int):
        iou = cm.iou()
        return cls(
            class_names=label_space.class_names,
            iou=iou,
            miou=mean_iou(iou),
            subsets={k: mean_iou(iou, ids) for k, ids in label_space.eval_subsets.items()},
            pixel_accuracy=cm.accuracy(),
            num_images=num_images,
        )

    def to_dict(self) -> dict:
        def num(x: float) -> float | None:
            return None if np.isnan(x) else round(float(x), 6)

        return {
            "mIoU": num(self.miou),
            **{k: num(v) for k, v in self.subsets.items()},
            "pixel_accuracy": num(self.pixel_accuracy),
            "num_images": self.num_images,
            "per_class_iou": {n: num(v) for n, v in zip(self.class_names, self.iou, strict=True)},
        }

    def table(self) -> str:
        """Plain-text per-class table (percent), then the means."""
        width = max(len(n) for n in self.class_names)
        lines = [f"{'class':<{width}}  IoU (%)", "-" * (width + 10)]
        for name, value in zip(self.class_names, self.iou, strict=True):
            shown = "   n/a" if np.isnan(value) else f"{100 * value:6.2f}"
            lines.append(f"{name:<{width}}  {shown}")
        lines.append("-" * (width + 10))
        lines.append(f"{'mIoU':<{width}}  {100 * self.miou:6.2f}")
        for key, value in self.subsets.items():
            lines.append(f"{key:<{width}}  {100 * value:6.2f}")
        return "\n".join(lines)
