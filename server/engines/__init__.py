"""Inference engines, one per model-file type, behind one interface (see ``base.py``).

    >>> engine = load_engine("runs/demo/checkpoints/best.pt", device="cpu")
    >>> out = engine.infer(images)  # (N, H, W, 3) uint8 -> out.labels (N, H, W) uint8
"""

from __future__ import annotations

from pathlib import Path

from server.engines.base import (
    ConfidenceUnavailable,
    Engine,
    EngineError,
    EngineInfo,
    EngineOutput,
)

# Model-file suffix -> backend name.
BACKEND_BY_SUFFIX = {
    ".pt": "torch", ".pth": "torch", ".onnx": "onnxruntime", ".engine": "tensorrt",
    ".plan": "tensorrt", ".trt": "tensorrt", ".pt2": "aoti",
}  # fmt: skip

__all__ = [
    "BACKEND_BY_SUFFIX", "ConfidenceUnavailable", "Engine", "EngineError", "EngineInfo",
    "EngineOutput", "backend_for", "load_engine",
]  # fmt: skip


def backend_for(path: str | Path) -> str:
    """The backend that serves ``path``, from its suffix; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model file {path} does not exist; pass a checkpoint (.pt) from 'cluda adapt' or an "
            "exported model (.onnx, .engine, .pt2) from 'cluda export'"
        )
    backend = BACKEND_BY_SUFFIX.get(path.suffix.lower())
    if backend is None:
        raise EngineError(
            f"cannot serve {path.name}: unknown model type {path.suffix or '(no suffix)'}; known: "
            f"{', '.join(sorted(BACKEND_BY_SUFFIX))}"
        )
    return backend


def load_engine(
    path: str | Path, device: str = "auto", onnx_providers: list[str] | None = None,
    engine_cache: Path | None = None,
) -> Engine:  # fmt: skip
    """Open ``path`` with the engine its type calls for, on ``device`` ('auto', 'cpu', 'cuda:N')."""
    path = Path(path)
    backend = backend_for(path)
    if backend == "torch":
        from server.engines.torch_engine import TorchEngine

        return TorchEngine(path, device)
    if backend == "onnxruntime":
        from server.engines.onnx_engine import OnnxEngine

        return OnnxEngine(path, device, onnx_providers or None, engine_cache)
    if backend == "tensorrt":
        from server.engines.tensorrt_engine import TensorRTEngine

        return TensorRTEngine(path, device)
    from server.engines.aoti_engine import AOTIEngine

    return AOTIEngine(path, device)
