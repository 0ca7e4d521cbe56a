"""Parity of an exported artefact with PyTorch: max logit error, pixel agreement, mIoU delta.

The reference is the checkpoint's own test-time protocol in PyTorch fp32
(``cluda_deploy.inference.segment_logits``: the code ``cluda evaluate`` runs), image by image at
each image's own size (resized first only for a static-shape artefact). The artefact gets the
same uint8 image. Per image set the report gives

* ``max |dlogit|``: the largest absolute difference of the logits at the input size, and
  ``rel``: that divided by max(1, the largest absolute PyTorch logit), which is what is gated
  (random-init ResNet-101 logits reach 5e5, trained ones about 30); n/a for artefacts without a
  logits output;
* ``agreement``: the share of pixels whose predicted class is PyTorch's;
* ``mIoU`` of PyTorch and of the artefact against the labels, where the set has labels, and the
  drop in points.

:meth:`ParityReport.failures` lists the gates (``export.options.ParityThresholds``) missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from cluda_deploy.config import EvalConfig
from cluda_deploy.inference import segment_logits
from cluda_deploy.labels import LabelSpace
from cluda_deploy.metrics import ConfusionMatrix, mean_iou
from export.images import Sample
from export.options import ParityThresholds
from export.runners import Runner

ReferenceFn = Callable[[np.ndarray], np.ndarray]


class ParityError(RuntimeError):
    """An artefact that does not reproduce PyTorch within the gates."""


def pytorch_reference(
    network: nn.Module, eval_cfg: EvalConfig, mean: Sequence[float], std: Sequence[float]
) -> ReferenceFn:
    """``image (H, W, 3) uint8 -> logits (C, H, W) float32``: the checkpoint's protocol in PyTorch."""

    def reference(image: np.ndarray) -> np.ndarray:
        return segment_logits(network, image, eval_cfg, tuple(mean), tuple(std))[0].cpu().numpy()

    return reference


@dataclass
class SetParity:
    """Parity on one image set; mIoUs are 0-1 (None without labels)."""

    name: str
    images: int
    max_logit_error: float | None
    logit_scale: float | None  # max(1, largest absolute PyTorch logit)
    pixel_agreement: float
    miou_reference: float | None
    miou_artefact: float | None

    @property
    def relative_logit_error(self) -> float | None:
        if self.max_logit_error is None or self.logit_scale is None:
            return None
        return self.max_logit_error / self.logit_scale

    @property
    def miou_drop(self) -> float | None:
        """PyTorch mIoU minus the artefact's, in mIoU points (0-100)."""
        if self.miou_reference is None or self.miou_artefact is None:
            return None
        return 100.0 * (self.miou_reference - self.miou_artefact)


def compare_set(
    name: str,
    samples: Sequence[Sample],
    reference: ReferenceFn,
    runner: Runner,
    label_space: LabelSpace,
    batch: int = 1,
) -> SetParity:
    """Run PyTorch and the artefact on every sample (one at a time, repeated to a static ``batch``)."""
    if not samples:
        raise ValueError(f"image set {name!r} is empty")
    ref_cm = ConfusionMatrix(label_space.num_classes, label_space.ignore_index)
    art_cm = ConfusionMatrix(label_space.num_classes, label_space.ignore_index)
    max_error: float | None = 0.0 if runner.has_logits else None
    scale = 1.0
    agree = total = 0
    labelled = 0
    for sample in samples:
        with torch.no_grad():
            ref_logits = reference(sample.image)
        outputs = runner(np.repeat(sample.image[None], batch, axis=0))
        labels = outputs["labels"][0]
        ref_labels = ref_logits.argmax(axis=0)
        if labels.shape != ref_labels.shape:
            raise ParityError(f"{runner.name} returned labels {labels.shape} for a {sample.image.shape[:2]} image")
        agree += int((labels == ref_labels).sum())
        total += labels.size
        if max_error is not None:
            error = float(np.abs(outputs["logits"][0].astype(np.float32) - ref_logits).max())
            max_error = max(max_error, error if math.isfinite(error) else math.inf)
            scale = max(scale, float(np.abs(ref_logits).max()))
        if sample.label is not None:
            labelled += 1
            ref_cm.update(ref_labels, sample.label)
            art_cm.update(labels, sample.label)
    return SetParity(
        name=name,
        images=len(samples),
        max_logit_error=max_error,
        logit_scale=scale if max_error is not None else None,
        pixel_agreement=agree / total,
        miou_reference=mean_iou(ref_cm.iou()) if labelled else None,
        miou_artefact=mean_iou(art_cm.iou()) if labelled else None,
    )


@dataclass
class ParityReport:
    """Parity of one artefact on every image set, and the gates it is held to."""

    artefact: str
    backend: str
    precision: str
    sets: list[SetParity]
    thresholds: ParityThresholds

    def failures(self) -> list[str]:
        gate, found = self.thresholds, []
        for s in self.sets:
            error = s.relative_logit_error
            if gate.max_logit_error is not None and error is not None and not error <= gate.max_logit_error:
                found.append(f"{s.name}: relative logit error {error:.2e} > {gate.max_logit_error:.0e}")
            if s.pixel_agreement < gate.min_pixel_agreement:
                found.append(
                    f"{s.name}: pixel agreement {100 * s.pixel_agreement:.3f}% < "
                    f"{100 * gate.min_pixel_agreement:.1f}%"
                )
            drop = s.miou_drop
            if drop is not None and math.isfinite(drop) and drop > gate.max_miou_drop:
                found.append(f"{s.name}: mIoU drop {drop:.2f} > {gate.max_miou_drop} points")
        return found

    @property
    def passed(self) -> bool:
        return not self.failures()

    def table(self) -> str:
        head = f"parity of {self.artefact} ({self.backend}, {self.precision}) against PyTorch fp32"
        cols = (f"{'set':<12} {'images':>6} {'max |dlogit|':>12} {'rel':>8} {'agreement':>10} "
                f"{'mIoU torch':>10} {'mIoU model':>10} {'drop':>6}")
        lines = [head, cols, "-" * len(cols)]
        for s in self.sets:
            err = "n/a" if s.max_logit_error is None else f"{s.max_logit_error:.2e}"
            rel = "n/a" if s.relative_logit_error is None else f"{s.relative_logit_error:.0e}"
            ref = "n/a" if s.miou_reference is None else f"{100 * s.miou_reference:.2f}"
            art = "n/a" if s.miou_artefact is None else f"{100 * s.miou_artefact:.2f}"
            drop = "n/a" if s.miou_drop is None else f"{s.miou_drop:.2f}"
            lines.append(
                f"{s.name:<12} {s.images:>6} {err:>12} {rel:>8} {100 * s.pixel_agreement:>9.3f}% {ref:>10} "
                f"{art:>10} {drop:>6}"
            )
        gate = self.thresholds
        gates = [f"agreement >= {100 * gate.min_pixel_agreement:.1f}%", f"mIoU drop <= {gate.max_miou_drop}"]
        if gate.max_logit_error is not None:
            gates.insert(0, f"rel <= {gate.max_logit_error:.0e}")
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.failures())
        lines.append(f"gates: {', '.join(gates)} -> {verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value

        sets = []
        for s in self.sets:
            row = {k: clean(v) for k, v in asdict(s).items()}
            row["relative_logit_error"] = clean(s.relative_logit_error)
            row["miou_drop_points"] = clean(s.miou_drop)
            sets.append(row)
        return {
            "artefact": self.artefact,
            "backend": self.backend,
            "precision": self.precision,
            "reference": "PyTorch fp32, the checkpoint's test-time protocol",
            "sets": sets,
            "thresholds": asdict(self.thresholds),
            "passed": self.passed,
            "failures": self.failures(),
        }


def check_parity(
    runner: Runner,
    image_sets: dict[str, list[Sample]],
    reference: ReferenceFn,
    label_space: LabelSpace,
    *,
    backend: str,
    precision: str,
    thresholds: ParityThresholds,
    static_size: tuple[int, int] | None = None,
    batch: int = 1,
) -> ParityReport:
    """Compare ``runner`` with ``reference`` on every set (resized to ``static_size`` if given)."""
    sets = [
        compare_set(name, [s.resized(static_size) for s in samples], reference, runner, label_space, batch)
        for name, samples in image_sets.items()
        if samples
    ]
    return ParityReport(runner.name, backend, precision, sets, thresholds)
