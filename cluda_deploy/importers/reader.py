"""Read an mmseg 0.x / mmcv 1.x checkpoint without executing code from it.

Three forms (shared/fixtures/mmseg_checkpoints/README.md):

* ``training``: ``{'meta', 'state_dict', 'optimizer'}`` whose state_dict holds the UDA
  wrapper's copies ``model.*`` (student), ``ema_model.*`` (EMA teacher), ``imnet_model.*``
  (frozen ImageNet copy);
* ``published``: ``{'meta'?, 'state_dict'}`` with only ``model.*`` keys (publish_model.py);
* ``bare``: the segmentor's own keys, in a ``state_dict`` entry or as the whole file.

The file is opened with ``torch.load(weights_only=True)``; besides tensors and plain containers
the only objects allowed are numpy scalars and their dtypes, which mmcv's ``meta`` can hold
(an evaluation hook's best score). Anything else in the pickle (a class, a function call) is
refused before it runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

# UDA wrapper prefixes, in the order the reference writes them; '' = bare segmentor keys.
# MIC adds a fourth copy (its masking teacher) only when its mask thresholds are not 'same'.
UDA_PREFIXES = ("model.", "ema_model.", "imnet_model.", "mic.teacher.ema_model.")
WEIGHT_PREFIXES = {"student": "model.", "teacher": "ema_model."}


class MMSegImportError(ValueError):
    """An mmseg checkpoint that cannot be imported as asked; the message says what to do."""


def _numpy_scalar_globals() -> list:
    """The allow-list: numpy's scalar constructor (under its numpy 1 and numpy 2 paths),
    ``numpy.dtype`` and the numeric dtype classes whose state a pickle sets."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar
    dtypes = [type(np.dtype(code)) for code in ("f8", "f4", "f2", "i8", "i4", "u1", "?")]
    paths = ("numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar")
    return [*((scalar, path) for path in paths), np.dtype, *dtypes]


@dataclass
class MMSegFile:
    """The state_dict blocks of one file (prefix -> bare segmentor keys), its meta, its form."""

    path: Path
    blocks: dict[str, dict[str, Tensor]]
    meta: dict[str, Any]
    form: str  # training | published | bare
    sha256: str

    def weights(self, which: str) -> tuple[str, dict[str, Tensor]]:
        """``(prefix, bare segmentor state_dict)`` of the student or the EMA teacher."""
        if which not in WEIGHT_PREFIXES:
            raise MMSegImportError(f"--weights must be student or teacher, got {which!r}")
        if which == "student" and set(self.blocks) == {""}:
            return "", self.blocks[""]
        prefix = WEIGHT_PREFIXES[which]
        if prefix not in self.blocks:
            held = ", ".join(f"{p or '(bare)'}*" for p in self.blocks)
            raise MMSegImportError(
                f"{self.path} holds no {prefix}* ({which}) weights, only {held}; released files "
                "keep only the student: use --weights student"
            )
        return prefix, self.blocks[prefix]

    @property
    def stray_keys(self) -> list[str]:
        """Keys with no UDA prefix in a file that also has prefixed blocks."""
        if set(self.blocks) == {""}:
            return []
        return list(self.blocks.get("", {}))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _load(path: Path) -> Any:
    """Memory-mapped where the file is a zip archive (torch >= 1.6 writes them): the teacher,
    ImageNet copy and optimizer state of a training checkpoint are then never read."""
    if zipfile.is_zipfile(path):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def safe_load(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with the numpy-scalar allow-list; refusals and foreign
    files raise :class:`MMSegImportError` in one line."""
    path = Path(path)
    if not path.is_file():
        raise MMSegImportError(f"checkpoint {path} does not exist; pass the released .pth file")
    try:
        with torch.serialization.safe_globals(_numpy_scalar_globals()):
            return _load(path)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:  # not a pickle weights_only understands: damaged or foreign bytes
            reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
            raise MMSegImportError(
                f"{path} is not a readable PyTorch checkpoint "
                f"({reason.group(1).strip() if reason else 'unpickling failed'}); is the "
                "download complete?"
            ) from None
        raise MMSegImportError(
            f"{path}: refused to load: the pickle asks for '{found.group(1)}', which could run "
            "code; cluda import reads only tensors, numbers and strings (weights_only). Get the "
            "file from its authors' release, or re-save its state_dict with torch.save"
        ) from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MMSegImportError(
            f"{path} is not a readable PyTorch checkpoint ({first[:160]}); is the download "
            "complete?"
        ) from None


def split_blocks(state_dict: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """Group keys by UDA prefix (longest match first); unprefixed keys go to block ''."""
    blocks: dict[str, dict[str, Tensor]] = {}
    prefixes = sorted(UDA_PREFIXES, key=len, reverse=True)
    for key, value in state_dict.items():
        prefix = next((p for p in prefixes if key.startswith(p)), "")
        blocks.setdefault(prefix, {})[key[len(prefix) :]] = value
    return blocks


def read_mmseg_file(path: str | os.PathLike) -> MMSegFile:
    """Load ``path`` safely and sort its tensors into UDA blocks (see the module docstring)."""
    path = Path(path)
    data = safe_load(path)
    if isinstance(data, dict) and "state_dict" in data:
        state_dict, meta = data["state_dict"], data.get("meta") or {}
    elif isinstance(data, dict) and data and all(isinstance(v, Tensor) for v in data.values()):
        state_dict, meta = data, {}
    else:
        raise MMSegImportError(
            f"{path} is a PyTorch file but not an mmseg checkpoint (no 'state_dict' entry and not "
            "a dict of tensors); for a cluda-deploy checkpoint use it directly"
        )
    if not isinstance(state_dict, dict) or not all(
        isinstance(v, Tensor) for v in state_dict.values()
    ):
        raise MMSegImportError(
            f"{path}: 'state_dict' is not a dict of tensors; the file is damaged"
        )
    if not isinstance(meta, dict):
        raise MMSegImportError(f"{path}: 'meta' is a {type(meta).__name__}, mmcv writes a dict")
    blocks = split_blocks(state_dict)
    if set(blocks) <= {""}:
        form = "bare"
    elif set(blocks) <= {"model.", ""} and "optimizer" not in data:
        form = "published"
    else:
        form = "training"
    return MMSegFile(path=path, blocks=blocks, meta=meta, form=form, sha256=sha256_of(path))


def plain(value: Any) -> Any:
    """``meta`` as plain Python (numpy scalars -> numbers, tuples -> lists), so that it can be
    stored in a checkpoint that loads with ``weights_only=True`` and no allow-list."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


__all__ = [
    "UDA_PREFIXES",
    "WEIGHT_PREFIXES",
    "MMSegFile",
    "MMSegImportError",
    "plain",
    "read_mmseg_file",
    "safe_load",
    "sha256_of",
    "split_blocks",
]
