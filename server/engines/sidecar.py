"""The JSON sidecar every exported model carries (``<artefact file name>.json``).

Read and validated by ``cluda_deploy.sidecar.read_sidecar`` (the one reader of that contract, which
also checks the artefact's sha256); a bad sidecar becomes an :class:`EngineError` here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cluda_deploy.labels import LabelSpace
from cluda_deploy.sidecar import SidecarError, read_sidecar
from server.engines.base import EngineError, EngineInfo, max_softmax


def read_model_sidecar(model_path: str | Path) -> dict[str, Any]:
    """The validated sidecar of ``model_path`` as a dict."""
    try:
        return read_sidecar(model_path)
    except SidecarError as exc:
        raise EngineError(str(exc)) from None


def output_names(sidecar: dict[str, Any]) -> list[str]:
    """Output names in the order the artefact returns them (``labels`` first)."""
    return [o["name"] if isinstance(o, dict) else str(o) for o in sidecar["outputs"]]


def min_side(sidecar: dict[str, Any]) -> int:
    """Smallest image side the artefact accepts (1 where the sidecar states none)."""
    return int(sidecar["input"].get("min_side") or 1)


def exported_info(
    sidecar: dict[str, Any], path: str | Path, backend: str, device: str, outputs: list[str],
    static_size: tuple[int, int] | None, max_batch: int | None, details: dict[str, Any],
) -> EngineInfo:  # fmt: skip
    """The :class:`EngineInfo` of an exported artefact: label space, precision, provenance and
    sha256 (already checked) from its sidecar; shapes and outputs from the artefact itself."""
    return EngineInfo(
        backend=backend,
        path=Path(path),
        sha256=sidecar["hashes"]["artefact_sha256"],
        label_space=LabelSpace.from_dict(sidecar["label_space"]),
        device=device,
        precision=sidecar["precision"],
        static_size=static_size,
        max_batch=max_batch,
        default_warmup_sizes=[static_size] if static_size else [],
        has_confidence="confidence" in outputs or "logits" in outputs,
        min_side=min_side(sidecar),
        provenance=sidecar["provenance"],
        details={"outputs": outputs, "sidecar_version": sidecar["version"], **details},
    )


def confidence_from(named: dict[str, np.ndarray]) -> np.ndarray:
    """(N, H, W) float32 confidence: the ``confidence`` output, else the max softmax of ``logits``."""
    if "confidence" in named:
        return np.asarray(named["confidence"], dtype=np.float32)
    return max_softmax(np.asarray(named["logits"]))
