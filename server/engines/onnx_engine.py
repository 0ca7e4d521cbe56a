"""ONNX engine: an exported ``.onnx`` run with ONNX Runtime.

The export contract (``export/``): input ``images`` uint8 (N, H, W, 3) RGB, batch/height/width
dynamic or static; outputs ``labels`` uint8 (N, H, W) at the input size, optionally ``confidence``
float32 (N, H, W) and ``logits`` float32 (N, C, H, W). Normalisation and resizing live inside the
graph. Shapes are read from the graph itself; the label space and provenance from the sidecar.
Execution providers: TensorRT, CUDA, CPU, in that order of those this onnxruntime build has.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from server.engines.base import (
    ConfidenceUnavailable,
    EngineError,
    EngineOutput,
    infer_fixed,
)
from server.engines.sidecar import confidence_from, exported_info, read_model_sidecar

INPUT_NAME = "images"
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(
    available: list[str], device: str, requested: list[str] | None = None,
    engine_cache: Path | None = None,
) -> list[Any]:  # fmt: skip
    """Providers (with options) for ``device`` ('auto', 'cpu', 'cuda', 'cuda:N') in preference order."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EngineError(
                f"onnxruntime here has no {', '.join(missing)} (it has {', '.join(available)}); "
                "install onnxruntime-gpu for CUDA/TensorRT, or drop --onnx-providers"
            )
        names = list(requested)
    elif device == "cpu":
        names = ["CPUExecutionProvider"]
    else:
        names = [p for p in PROVIDER_ORDER if p in available]
        if device != "auto" and names == ["CPUExecutionProvider"]:
            raise EngineError(
                f"device {device!r} requested but this onnxruntime has only the CPU provider; "
                "install onnxruntime-gpu or use --device cpu"
            )
    device_id = int(device.split(":")[1]) if device.startswith("cuda:") else 0
    providers: list[Any] = []
    for name in names:
        if name == "TensorrtExecutionProvider":
            options: dict[str, Any] = {"device_id": device_id}
            if engine_cache is not None:
                options.update(
                    trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache),
                    trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_cache),
                )  # fmt: skip
            providers.append((name, options))
        elif name == "CUDAExecutionProvider":
            providers.append((name, {"device_id": device_id}))
        else:
            providers.append(name)
    return providers


class OnnxEngine:
    """``infer(images (N, H, W, 3) uint8) -> labels (N, H, W) uint8 (+ confidence)`` with ONNX Runtime."""

    def __init__(
        self, path: Path, device: str = "auto", providers: list[str] | None = None,
        engine_cache: Path | None = None,
    ):  # fmt: skip
        try:
            import onnxruntime as ort
        except ImportError:
            raise EngineError(
                "serving an ONNX model needs onnxruntime: pip install onnxruntime (CPU) or "
                "onnxruntime-gpu (CUDA/TensorRT)"
            ) from None
        sidecar = read_model_sidecar(path)
        if engine_cache is not None:
            Path(engine_cache).mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():  # ORT ignores OMP_NUM_THREADS; honour it like torch does
            options.intra_op_num_threads = int(threads)
        chosen = choose_providers(ort.get_available_providers(), device, providers, engine_cache)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"onnxruntime cannot load {path} ({first}); re-export with 'cluda export'") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if INPUT_NAME not in inputs:
            raise EngineError(
                f"{path} has inputs {sorted(inputs)}, expected {INPUT_NAME!r} uint8 (N, H, W, 3); "
                "re-export with 'cluda export onnx'"
            )
        shape = inputs[INPUT_NAME].shape
        self.outputs = [o.name for o in self.session.get_outputs()]
        if "labels" not in self.outputs:
            raise EngineError(f"{path} has outputs {self.outputs}, expected 'labels'; re-export")
        static = tuple(shape[1:3]) if all(isinstance(d, int) for d in shape[1:3]) else None
        self.info = exported_info(
            sidecar, path, "onnxruntime", device, self.outputs, static,
            shape[0] if isinstance(shape[0], int) else None,
            {"providers": self.session.get_providers(), "onnxruntime_version": ort.__version__,
             "input_shape": [d if isinstance(d, int) else str(d) for d in shape]},
        )  # fmt: skip

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        target = self.info.target_size(images.shape[1:3])
        return infer_fixed(self._run, images, confidence, target, self.info.max_batch)

    def _run(self, images: np.ndarray, confidence: bool) -> EngineOutput:
        names = ["labels"]
        if confidence:
            if not self.info.has_confidence:
                raise ConfidenceUnavailable(
                    "this model has no 'confidence' or 'logits' output; re-export it with confidence"
                )
            names.append("confidence" if "confidence" in self.outputs else "logits")
        results = self.session.run(names, {INPUT_NAME: np.ascontiguousarray(images)})
        labels = results[0].astype(np.uint8, copy=False)
        if not confidence:
            return EngineOutput(labels)
        return EngineOutput(labels, confidence_from(dict(zip(names[1:], results[1:], strict=True))))

    def close(self) -> None:
        self.session = None
