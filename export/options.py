"""What ``cluda export`` builds, and the parity gates every artefact must pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ParityThresholds:
    """Gates of one precision against PyTorch fp32 (None = not gated).

    ``max_logit_error``: largest absolute logit difference at the input size divided by
    max(1, the largest absolute PyTorch logit) (``verify.SetParity.relative_logit_error``);
    ``min_pixel_agreement``: share of pixels whose class equals PyTorch's;
    ``max_miou_drop``: PyTorch mIoU minus the artefact's, in mIoU points (0-100 scale), on sets
    with labels.
    """

    max_logit_error: float | None
    min_pixel_agreement: float
    max_miou_drop: float


# Acceptance gates of research/deploy.md section 10 (derived from mmdeploy's T4 table and the
# FP16/INT8 deltas of section 6.2): fp32 <= 0.1 mIoU drop; fp16 <= 0.5 and >= 99 % agreement
# (NVIDIA TRTMC); int8 <= 1.0 mIoU. fp32 logits must match to 1e-2 of their largest magnitude:
# float32 reordering gave 2e-5 on the demo model at 2048x1024 and resize coordinates rounded
# differently at non-integer factors about 1e-3 (TF32, TensorRT's fp32 default on Ampere and
# later, keeps 10 mantissa bits), while a resize with the wrong align_corners gave 0.24
# (BENCHMARKS.md). 99.9 % of pixels must agree (argmax ties between near-equal logits may flip).
# INT8 agreement has no published gate; 0.95 is ours.
DEFAULT_THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(max_logit_error=1e-2, min_pixel_agreement=0.999, max_miou_drop=0.1),
    "fp16": ParityThresholds(max_logit_error=None, min_pixel_agreement=0.99, max_miou_drop=0.5),
    "int8": ParityThresholds(max_logit_error=None, min_pixel_agreement=0.95, max_miou_drop=1.0),
}


@dataclass
class ExportOptions:
    """Everything ``cluda export`` needs besides the checkpoint and the output folder."""

    # (batch or None, height, width) to export static shapes; None = dynamic N, H, W.
    static: tuple[int | None, int, int] | None = None
    logits: bool = False
    confidence: bool = False
    mode: str | None = None  # whole | slide; None = the checkpoint's eval.mode
    scale: tuple[int, int] | None | str = "checkpoint"  # (long, short), None = native
    hrda: str | None = None  # full | student (HRDA checkpoints only)
    weights: str = "student"  # student | teacher
    # Extra artefacts.
    fp16: bool = False
    int8: bool = False
    calib: Path | None = None
    calib_max_images: int = 64
    calib_method: str = "minmax"  # minmax | entropy | percentile
    aoti: bool = False
    aoti_device: str = "cpu"
    trt: bool = False
    trt_min: tuple[int, int, int] | None = None  # (N, H, W); default from the static shape / scale
    trt_opt: tuple[int, int, int] | None = None
    trt_max: tuple[int, int, int] | None = None
    trt_workspace_gib: float = 4.0
    trt_cache: Path | None = None  # engine + timing cache folder; default ~/.cache/cluda-deploy/tensorrt
    # Verification.
    data: Path | None = None
    max_images: int = 20
    generated: int = 3
    thresholds: dict[str, ParityThresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    verify: bool = True

    @property
    def outputs(self) -> list[str]:
        return ["labels"] + (["logits"] if self.logits else []) + (["confidence"] if self.confidence else [])


def apply_gate(thresholds: dict[str, ParityThresholds], assignment: str) -> dict[str, ParityThresholds]:
    """``'int8.min_pixel_agreement=0.9'`` -> a copy of ``thresholds`` with that gate changed.

    ``none`` switches a gate off where it may be off (``max_logit_error``).
    """
    key, sep, raw = assignment.partition("=")
    precision, dot, name = key.strip().partition(".")
    fields = [f.name for f in dataclasses.fields(ParityThresholds)]
    if not sep or not dot or precision not in thresholds or name not in fields:
        raise ValueError(
            f"--gate {assignment!r}: use PRECISION.KEY=VALUE with PRECISION in "
            f"{', '.join(thresholds)} and KEY in {', '.join(fields)}"
        )
    if raw.strip().lower() == "none" and name == "max_logit_error":
        value = None
    else:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--gate {assignment!r}: {raw!r} is not a number") from None
    return {**thresholds, precision: dataclasses.replace(thresholds[precision], **{name: value})}
