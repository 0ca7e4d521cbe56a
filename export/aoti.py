"""AOTInductor: the exported program compiled ahead of time into a self-contained ``.pt2`` package.

``torch._inductor.aoti_compile_and_package`` turns the same ``ExportedProgram`` the ONNX file
comes from into generated C++ (CPU) or Triton (CUDA) kernels plus a shared library, packaged
with the weights; ``torch._inductor.aoti_load_package`` runs it without Python tracing, from
Python or C++ (research/deploy.md section 7). A package runs on the device type it was compiled
for, so a GPU package is compiled on a GPU machine (``--aoti-device cuda``). PyTorch still calls
AOTInductor a prototype whose format may change between releases: re-export after upgrading.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch


def write_aoti(program: torch.export.ExportedProgram, path: str | os.PathLike) -> tuple[Path, float]:
    """Compile and package ``program`` at ``path`` (``.pt2``); returns (path, seconds it took)."""
    from torch._inductor import aoti_compile_and_package

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    written = aoti_compile_and_package(program, package_path=str(path))
    return Path(written), time.perf_counter() - start
