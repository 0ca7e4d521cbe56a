"""AOTInductor engine: an exported ``.pt2`` package loaded with ``torch._inductor.aoti_load_package``.

Same I/O contract as the ONNX export: ``images`` uint8 (N, H, W, 3) RGB in; ``labels`` uint8
(N, H, W) out, optionally ``confidence``/``logits``, in the order the sidecar's ``outputs`` lists.
A package is compiled for one device type and, unless exported with dynamic dims, one shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cluda_deploy.labels import LabelSpace
from server.engines.base import (
    ConfidenceUnavailable,
    EngineError,
    EngineInfo,
    EngineOutput,
    file_sha256,
    infer_fixed,
    max_softmax,
)
from server.engines.sidecar import read_sidecar


def _output_names(sidecar: dict) -> list[str]:
    outputs = sidecar.get("outputs", ["labels"])
    names = [o["name"] if isinstance(o, dict) else str(o) for o in outputs]
    if not names or names[0] != "labels":
        raise EngineError(f"sidecar outputs {names} do not start with 'labels'; re-export with 'cluda export'")
    return names


def _static_shape(sidecar: dict) -> tuple[int | None, tuple[int, int] | None]:
    """(static batch or None, static (H, W) or None) from the sidecar's ``input.shape``."""
    shape = (sidecar.get("input") or {}).get("shape")
    if not (isinstance(shape, list) and len(shape) == 4):
        return None, None
    batch = int(shape[0]) if isinstance(shape[0], int) else None
    size = (int(shape[1]), int(shape[2])) if all(isinstance(d, int) for d in shape[1:3]) else None
    return batch, size


class AOTIEngine:
    """``infer(images (N, H, W, 3) uint8) -> labels (N, H, W) uint8 (+ confidence)`` with AOTInductor."""

    def __init__(self, path: Path, device: str = "auto"):
        import torch
        from torch._inductor import aoti_load_package

        from cluda_deploy.inference import pick_device

        sidecar = read_sidecar(path)
        self._torch = torch
        self.device = pick_device(device)
        try:
            self.runner = aoti_load_package(str(path))
        except Exception as exc:  # torch raises RuntimeError and others for foreign files
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"cannot load AOTInductor package {path} ({first}); re-export it") from None
        self.outputs = _output_names(sidecar)
        batch, static = _static_shape(sidecar)
        self.info = EngineInfo(
            backend="aoti",
            path=Path(path),
            sha256=file_sha256(path),
            label_space=LabelSpace.from_dict(sidecar["label_space"]),
            device=str(self.device),
            precision=str(sidecar.get("precision", "fp32")),
            static_size=static,
            max_batch=batch,
            default_warmup_sizes=[static] if static else [],
            has_confidence="confidence" in self.outputs or "logits" in self.outputs,
            provenance=dict(sidecar.get("provenance", {})),
            details={"torch_version": str(torch.__version__), "outputs": self.outputs},
        )

    def infer(self, images: np.ndarray, confidence: bool = False) -> EngineOutput:
        if confidence and not self.info.has_confidence:
            raise ConfidenceUnavailable("this package has no 'confidence' or 'logits' output; re-export it")
        return infer_fixed(self._run, images, confidence, self.info.static_size, self.info.max_batch)

    def _run(self, images: np.ndarray, confidence: bool) -> EngineOutput:
        with self._torch.inference_mode():
            x = self._torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            results = self.runner(x)
        if isinstance(results, self._torch.Tensor):
            results = [results]
        named = dict(zip(self.outputs, results, strict=False))
        labels = named["labels"].to(self._torch.uint8).cpu().numpy()
        conf = None
        if confidence:
            conf = (named["confidence"].float().cpu().numpy() if "confidence" in named
                    else max_softmax(named["logits"].float().cpu().numpy()))  # fmt: skip
        return EngineOutput(labels, conf)

    def close(self) -> None:
        self.runner = None
