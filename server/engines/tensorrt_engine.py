"""TensorRT engine: a serialized ``.engine`` / ``.plan`` run with the ``tensorrt`` Python API.

Written against the TensorRT 10 name-based I/O API (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); buffers are PyTorch CUDA
tensors on a dedicated stream. Same I/O contract as the ONNX file the engine was built from
(``images`` uint8 (N, H, W, 3) -> ``labels`` uint8 (N, H, W), optional ``confidence``/``logits``).
A plan only runs on the TensorRT version and GPU architecture that built it (research/deploy.md 6.1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.engines.base import (
    ConfidenceUnavailable,
    EngineError,
    EngineOutput,
    infer_fixed,
)
from server.engines.sidecar import confidence_from, exported_info, read_model_sidecar

INPUT_NAME = "images"


def import_tensorrt():
    """The ``tensorrt`` module, or an EngineError that says how to get it."""
    try:
        import tensorrt
    except ImportError:
        raise EngineError(
            "serving a TensorRT engine needs the 'tensorrt' Python package of the TensorRT version "
            "that built it (pip install tensorrt-cu12==<that version>, or use the Docker image); "
            "without a GPU serve the .onnx file instead"
        ) from None
    return tensorrt


class TensorRTEngine:
    """``infer(images (N, H, W, 3) uint8) -> labels (N, H, W) uint8 (+ confidence)`` with TensorRT."""

    def __init__(self, path: Path, device: str = "auto"):
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise EngineError("a TensorRT engine needs a CUDA GPU; serve the .onnx file on the CPU")
        self._torch, self._trt = torch, trt
        self.device = torch.device("cuda:0" if device in ("auto", "cuda") else device)
        sidecar = read_model_sidecar(path)
        with torch.cuda.device(self.device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            runtime = trt.Runtime(self._logger)
            self.engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
            if self.engine is None:
                built = (sidecar.get("tensorrt") or {}).get("version", "unknown")
                raise EngineError(
                    f"TensorRT {trt.__version__} cannot deserialize {path} (built with TensorRT "
                    f"{built}, maybe on another GPU); rebuild it on this machine with 'cluda export tensorrt'"
                )
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if INPUT_NAME not in names or "labels" not in self.outputs:
            raise EngineError(f"{path} has tensors {names}; expected input 'images' and output 'labels'")
        shape = list(self.engine.get_tensor_shape(INPUT_NAME))
        static = tuple(shape[1:3]) if min(shape[1:3]) > 0 else None
        # A static batch is filled up; else profile 0's largest batch bounds what the batcher sends.
        self._static_batch = shape[0] > 0
        max_batch = shape[0] if shape[0] > 0 else self.engine.get_tensor_profile_shape(INPUT_NAME, 0)[2][0]
        self.info = exported_info(
            sidecar, path, "tensorrt", str(self.device), self.outputs, static, int(max_batch),
            {"tensorrt_version": trt.__version__, "input_shape": shape},
        )  # fmt: skip

    def _torch_dtype(self, name: str):
        trt, torch = self._trt, self._torch
        table = {
            trt.DataType.UINT8: torch.uint8, trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64, trt.DataType.BOOL: torch.bool,
        }  # fmt: skip
        return table[self.engine.get_tensor_dtype(name)]

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        if confidence and not self.info.has_confidence:
            raise ConfidenceUnavailable("this engine has no 'confidence' or 'logits' output; rebuild it with confidence")
        static_batch = self.info.max_batch if self._static_batch else None
        return infer_fixed(self._run, images, confidence, self._target(images.shape[1:3]), static_batch)

    def _target(self, size: tuple[int, int]) -> tuple[int, int]:
        """Static size, or ``size`` clamped into profile 0's height/width range (aspect may change)."""
        target = self.info.target_size(size)
        if self.info.static_size:
            return target
        low, _, high = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        return (min(max(target[0], low[1]), high[1]), min(max(target[1], low[2]), high[2]))

    def _run(self, images: np.ndarray, confidence: bool) -> EngineOutput:
        torch = self._torch
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device, non_blocking=True)
            self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
            self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
            buffers = {}
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
                self.context.set_tensor_address(name, buffers[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; see the TensorRT log above")
            labels = buffers["labels"].to(torch.uint8).cpu()
            extra = {k: v.float().cpu().numpy() for k, v in buffers.items()
                     if confidence and k in ("confidence", "logits")}  # fmt: skip
            self.stream.synchronize()
        return EngineOutput(labels.numpy(), confidence_from(extra) if confidence else None)

    def close(self) -> None:
        self.context = None
        self.engine = None
