"""AOTInductor engine: an exported ``.pt2`` package loaded with ``torch._inductor.aoti_load_package``.

Same I/O contract as the ONNX export: ``images`` uint8 (N, H, W, 3) RGB in; ``labels`` uint8
(N, H, W) out, optionally ``confidence``/``logits``, in the order the sidecar's ``outputs`` lists.
A package is compiled for one device type and, unless exported with dynamic dims, one shape.
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
from server.engines.sidecar import confidence_from, exported_info, output_names, read_model_sidecar


def _static_shape(sidecar: dict) -> tuple[int | None, tuple[int, int] | None]:
    """(static batch or None, static (H, W) or None) from the sidecar's ``input.shape``."""
    shape = sidecar["input"]["shape"]
    batch = int(shape[0]) if isinstance(shape[0], int) else None
    size = (int(shape[1]), int(shape[2])) if all(isinstance(d, int) for d in shape[1:3]) else None
    return batch, size


class AOTIEngine:
    """``infer(images (N, H, W, 3) uint8) -> labels (N, H, W) uint8 (+ confidence)`` with AOTInductor."""

    def __init__(self, path: Path, device: str = "auto"):
        import torch
        from torch._inductor import aoti_load_package

        from cluda_deploy.inference import pick_device

        sidecar = read_model_sidecar(path)
        self._torch = torch
        self.device = pick_device(device)
        try:
            self.runner = aoti_load_package(str(path))
        except Exception as exc:  # torch raises RuntimeError and others for foreign files
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot load AOTInductor package {path} ({first}); re-export it") from None
        self.outputs = output_names(sidecar)
        batch, static = _static_shape(sidecar)
        self.info = exported_info(
            sidecar, path, "aoti", str(self.device), self.outputs, static, batch,
            {"torch_version": str(torch.__version__)},
        )  # fmt: skip

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        if confidence and not self.info.has_confidence:
            raise ConfidenceUnavailable("this package has no 'confidence' or 'logits' output; re-export it")
        target = self.info.target_size(images.shape[1:3])
        return infer_fixed(self._run, images, confidence, target, self.info.max_batch)

    def _run(self, images: np.ndarray, confidence: bool) -> EngineOutput:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            results = self.runner(x)
        if isinstance(results, self._torch.Tensor):
            results = [results]
        named = dict(zip(self.outputs, results, strict=False))
        labels = named["labels"].to(self._torch.uint8).cpu().numpy()
        if not confidence:
            return EngineOutput(labels)
        extra = {k: v.float().cpu().numpy() for k, v in named.items() if k in ("confidence", "logits")}
        return EngineOutput(labels, confidence_from(extra))

    def close(self) -> None:
        self.runner = None
