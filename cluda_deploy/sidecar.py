"""The JSON sidecar beside every exported artefact: ``<artefact file name>.json``.

An exported graph carries no label names, colours or provenance; the sidecar does, and it states
the input contract so that a server can check a request before running the model. Schema
(``version`` 1)::

    format       "cluda-deploy/exported-model"
    version      1
    backend      onnx | tensorrt | aoti
    precision    fp32 | fp16 | int8
    file         the artefact's file name
    label_space  LabelSpace.to_dict() (class names, palette, ignore index, eval subsets)
    normalization {mean, std, applied_in_graph: true}
    input        {name, dtype, layout, channels, color, shape, dynamic_axes, min_side,
                  inference_size: {rule, scale | size, description}}
    outputs      [{name, dtype, shape, description}, ...] (labels first)
    inference    {mode, crop_size, stride, hrda}
    provenance   the checkpoint's provenance + checkpoint path, export time, versions
    hashes       {artefact_sha256, checkpoint_sha256}
    tensorrt     (TensorRT engines only) {version, gpu, profile {min, opt, max}, cache_key, ...}
    parity       (after verification) the parity summary of this artefact

:func:`read_sidecar` is what a consumer (the server) calls: it validates all of the above and
returns the dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SIDECAR_FORMAT = "cluda-deploy/exported-model"
SIDECAR_VERSION = 1
BACKENDS = ("onnx", "tensorrt", "aoti")
PRECISIONS = ("fp32", "fp16", "int8")
INPUT_NAME = "images"
OUTPUT_NAMES = ("labels", "logits", "confidence")
_REQUIRED = {
    "backend": str,
    "precision": str,
    "label_space": dict,
    "normalization": dict,
    "input": dict,
    "outputs": list,
    "provenance": dict,
    "hashes": dict,
}
_FIX = "re-export it with 'cluda export --checkpoint CKPT --out DIR'"


class SidecarError(ValueError):
    """A missing, foreign or inconsistent sidecar, or an input the artefact cannot take."""


def sidecar_path(path: str | os.PathLike) -> Path:
    """``model.onnx -> model.onnx.json``; a path already ending in ``.json`` is returned as is."""
    path = Path(path)
    return path if path.suffix == ".json" else path.with_name(path.name + ".json")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(artefact: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` (with the artefact's current sha256 filled in) atomically beside ``artefact``."""
    artefact = Path(artefact)
    data = {**data, "file": artefact.name}
    data["hashes"] = {**data.get("hashes", {}), "artefact_sha256": file_sha256(artefact)}
    path = sidecar_path(artefact)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_sidecar(path: str | os.PathLike, check_hash: bool = True) -> dict[str, Any]:
    """Load and validate the sidecar of an artefact (pass the artefact or its ``.json``).

    Raises :class:`SidecarError` with one line naming the problem and the fix when the sidecar is
    missing, not JSON, not ours, of a newer version, incomplete, or (``check_hash``) when the
    artefact beside it is not the file it describes.
    """
    json_path = sidecar_path(path)
    artefact = json_path.with_name(json_path.name[: -len(".json")])
    if not json_path.is_file():
        raise SidecarError(
            f"{artefact} has no sidecar {json_path.name}: it was not written by 'cluda export' (or "
            f"the sidecar was not copied along); {_FIX}"
        )
    try:
        data = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SidecarError(f"{json_path} is not valid JSON ({exc}); {_FIX}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise SidecarError(f"{json_path} is not a cluda-deploy sidecar (no format={SIDECAR_FORMAT!r}); {_FIX}")
    if not isinstance(data.get("version"), int) or data["version"] > SIDECAR_VERSION:
        raise SidecarError(
            f"{json_path} has sidecar version {data.get('version')!r}; this cluda-deploy reads "
            f"up to {SIDECAR_VERSION}: upgrade cluda-deploy"
        )
    _validate(data, json_path)
    if check_hash:
        if not artefact.is_file():
            raise SidecarError(f"{json_path} describes {artefact.name}, which is missing beside it")
        if file_sha256(artefact) != data["hashes"].get("artefact_sha256"):
            raise SidecarError(
                f"{artefact} does not match its sidecar (sha256 differs): the file was replaced or "
                f"edited after export; {_FIX}"
            )
    return data


def _validate(data: dict[str, Any], where: Path) -> None:
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind):
            raise SidecarError(f"{where} lacks '{key}' ({kind.__name__}); the file is truncated or was edited; {_FIX}")
    if data["backend"] not in BACKENDS:
        raise SidecarError(f"{where}: unknown backend {data['backend']!r} (known: {', '.join(BACKENDS)})")
    if data["precision"] not in PRECISIONS:
        raise SidecarError(f"{where}: unknown precision {data['precision']!r} (known: {', '.join(PRECISIONS)})")
    label_space = data["label_space"]
    if not isinstance(label_space.get("class_names"), list) or not isinstance(label_space.get("palette"), list):
        raise SidecarError(f"{where}: label_space needs class_names and palette lists; {_FIX}")
    norm = data["normalization"]
    if not all(isinstance(norm.get(k), list) and len(norm[k]) == 3 for k in ("mean", "std")):
        raise SidecarError(f"{where}: normalization needs 3-value mean and std lists; {_FIX}")
    spec = data["input"]
    if spec.get("name") != INPUT_NAME or spec.get("dtype") != "uint8" or spec.get("layout") != "NHWC":
        raise SidecarError(
            f"{where}: input must be {INPUT_NAME!r} uint8 NHWC, got {spec.get('name')!r} "
            f"{spec.get('dtype')!r} {spec.get('layout')!r}; {_FIX}"
        )
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[3] == 3):
        raise SidecarError(f"{where}: input.shape must be [N, H, W, 3] (ints or axis names), got {shape!r}")
    names = [o.get("name") if isinstance(o, dict) else None for o in data["outputs"]]
    if not names or names[0] != "labels" or any(n not in OUTPUT_NAMES for n in names):
        raise SidecarError(f"{where}: outputs must start with 'labels' and be among {OUTPUT_NAMES}, got {names}")
    if not isinstance(data["hashes"].get("artefact_sha256"), str):
        raise SidecarError(f"{where}: hashes.artefact_sha256 is missing; {_FIX}")


def static_dims(sidecar: dict[str, Any]) -> list[int | None]:
    """``input.shape`` with axis names replaced by None: ``[N | None, H | None, W | None, 3]``."""
    return [d if isinstance(d, int) else None for d in sidecar["input"]["shape"]]


def check_input_shape(sidecar: dict[str, Any], shape: Sequence[int]) -> None:
    """Raise :class:`SidecarError` if a ``(N, H, W, 3)`` batch does not fit the artefact.

    Checks the static dims, the minimum side and, for a TensorRT engine, its optimisation
    profile (``tensorrt.profile``: min/opt/max ``[N, H, W, 3]``).
    """
    shape = tuple(int(d) for d in shape)
    name = sidecar.get("file", "the model")
    if len(shape) != 4 or shape[3] != 3:
        raise SidecarError(f"{name} takes a (N, H, W, 3) uint8 RGB batch, got shape {shape}")
    for axis, (want, got) in enumerate(zip(static_dims(sidecar), shape, strict=True)):
        if want is not None and want != got:
            static = "x".join(str(d) for d in sidecar["input"]["shape"])
            raise SidecarError(
                f"{name} was exported for input {static} (static axis {axis}), got "
                f"{'x'.join(map(str, shape))}; resize the images or export with other --static dims"
            )
    min_side = int(sidecar["input"].get("min_side") or 1)
    if min(shape[1:3]) < min_side:
        raise SidecarError(f"{name} needs images of at least {min_side}x{min_side} px, got {shape[1]}x{shape[2]}")
    profile = (sidecar.get("tensorrt") or {}).get("profile")
    if profile:
        low, high = profile["min"], profile["max"]
        if any(g < lo or g > hi for g, lo, hi in zip(shape, low, high, strict=True)):
            fmt = "x".join
            raise SidecarError(
                f"input {fmt(map(str, shape))} is outside the engine's optimisation profile "
                f"(min {fmt(map(str, low))}, max {fmt(map(str, high))}); resize the images or rebuild "
                f"the engine with a wider --trt-min/--trt-max"
            )
