"""Run an exported artefact on a uint8 batch: ``runner(images (N, H, W, 3)) -> {output name: array}``.

``labels`` is always returned; ``logits`` too where the artefact can give them (every ONNX file:
see :func:`~export.onnx_export.with_logits_output`; AOTI packages and engines exported with
``--logits``). The TensorRT runner lives in ``export.tensorrt``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Runner(Protocol):
    name: str
    has_logits: bool

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def ort_providers(device: str = "cpu") -> list[str]:
    """onnxruntime providers for ``cpu`` or ``cuda`` (TensorRT EP first when the build has it)."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        raise RuntimeError(
            f"onnxruntime here has no GPU provider (has {', '.join(available)}); install "
            "onnxruntime-gpu or verify with --device cpu"
        )
    return [*wanted, "CPUExecutionProvider"]


class OnnxRunner:
    """onnxruntime session over a cluda ONNX file, with ``logits`` exposed for the parity check."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None):
        import onnx
        import onnxruntime as ort

        from export.onnx_export import with_logits_output

        self.name = Path(path).name
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf DecodeError and friends
            raise ValueError(f"{path} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            with_logits_output(model).SerializeToString(), options, providers=ort_providers(device)
        )
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.has_logits = True

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {"images": np.ascontiguousarray(images)})
        named = dict(zip(self.outputs, values, strict=True))
        if "logits" not in named:  # the ArgMax input added by with_logits_output
            named["logits"] = values[-1]
        return named


class AotiRunner:
    """An AOTInductor ``.pt2`` package; its outputs are named by ``output_names`` (the sidecar's)."""

    def __init__(self, path: str | os.PathLike, output_names: list[str], device: str = "cpu"):
        import torch
        from torch._inductor import aoti_load_package

        self.name = Path(path).name
        self._torch = torch
        self.device = torch.device(device)
        self.output_names = output_names
        self.has_logits = "logits" in output_names
        try:
            self.package = aoti_load_package(str(path))
        except Exception as exc:  # torch raises RuntimeError and others for foreign files
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"cannot load AOTInductor package {path} ({first}); re-export it") from None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            values = self.package(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        if isinstance(values, torch.Tensor):
            values = (values,)
        return {name: v.cpu().numpy() for name, v in zip(self.output_names, values, strict=True)}
