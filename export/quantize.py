"""INT8: static Q/DQ quantisation of the exported ONNX graph, calibrated on target-domain images.

onnxruntime's ``quantize_static`` inserts QuantizeLinear/DequantizeLinear pairs (QDQ format) on the
inputs of the heavy ops, with the activation ranges measured by running the fp32 graph on the
calibration images. The settings follow what TensorRT's explicit quantisation takes
(research/deploy.md 6.2): symmetric signed int8 for activations and weights, per-channel weights,
only Conv, Gemm and weight MatMuls quantised; LayerNorm, Softmax, the resizes and the argmax stay
in float. The same file runs on onnxruntime (CPU) and builds a strongly typed INT8 engine.

Calibration images are fed exactly as served: raw uint8 RGB, one per batch, at their own size (a
static export's size when static), since resize and normalisation are inside the graph. Calibrate
on unlabelled target-domain *training* images, never on the evaluation split (mmdeploy's default
pitfall) and never on source images alone: UDA's premise is that their statistics differ.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from cluda_deploy.data.io import read_image
from export.images import Sample

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
# Ops whose inputs get Q/DQ: the convolutions and the linear layers carry nearly all the FLOPs.
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


class FolderCalibrationReader(CalibrationDataReader):
    """Yields ``{"images": (1, H, W, 3) uint8}`` for each image path (resized to ``size`` if set)."""

    def __init__(self, paths: list[Path], size: tuple[int, int] | None = None, batch: int = 1):
        self.paths = list(paths)
        self.size = size
        self.batch = batch
        self._next = 0
        self._end = len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self.paths))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        path = self.paths[self._next]
        self._next += 1
        image = Sample(path.name, read_image(path)).resized(self.size).image
        return {"images": np.repeat(image[None], self.batch, axis=0)}


def quantize_int8(
    fp32_path: str | os.PathLike,
    int8_path: str | os.PathLike,
    reader: CalibrationDataReader,
    method: str = "minmax",
) -> Path:
    """Write the Q/DQ INT8 version of ``fp32_path`` to ``int8_path``, calibrated with ``reader``.

    The graph first goes through onnxruntime's ``quant_pre_process`` (symbolic shape inference
    and graph optimisation, so that e.g. Conv + BatchNorm are one Conv before ranges are taken).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(CALIBRATION_METHODS)}")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(prefix="cluda-int8-") as tmp:
        prepared = Path(tmp) / "preprocessed.onnx"
        # Symbolic shape inference cannot follow the keep-ratio size arithmetic; ONNX's own does.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        _quantize(prepared, int8_path, reader, method)
    return int8_path


def _quantize(fp32_path: Path, int8_path: Path, reader: CalibrationDataReader, method: str) -> None:
    quantize_static(
        str(fp32_path),
        str(int8_path),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OPS),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CALIBRATION_METHODS[method],
        extra_options={
            "ActivationSymmetric": True,  # TensorRT takes zero-point 0 only
            "WeightSymmetric": True,
            "MatMulConstBOnly": True,  # attention's activation x activation products stay float
        },
    )
