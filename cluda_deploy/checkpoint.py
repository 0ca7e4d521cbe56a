"""The hand-off file between stages (DESIGN.md 'Checkpoint').

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True`` (no
code runs on load). It holds the config, label space, input normalisation, student weights
(and the teacher and resumable training state while training) and provenance. Writes are atomic.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cluda_deploy import __version__
from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD, Config, ConfigError, config_from_dict
from cluda_deploy.labels import LabelSpace

CHECKPOINT_FORMAT = "cluda-deploy/checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable cluda-deploy checkpoint."""


@dataclass
class CheckpointInfo:
    """Everything about a checkpoint except its tensors."""

    path: Path
    config: Config
    label_space: LabelSpace
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    provenance: dict[str, Any]


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def build_checkpoint(
    *,
    config: Config,
    label_space: LabelSpace,
    state_dict: dict[str, torch.Tensor],
    provenance: dict[str, Any] | None = None,
    teacher_state_dict: dict[str, torch.Tensor] | None = None,
    training_state: dict[str, Any] | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    modules: dict[str, dict[str, torch.Tensor]] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict (module docstring). ``modules``: name -> state dict of a method's extra
    networks (e.g. CONFETI's translator ``confeti_style``), stored under ``modules``."""
    prov = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cluda_deploy_version": __version__,
        "torch_version": str(torch.__version__),
        "method": config.train.method,
        "source": config.data.source,
        "target": config.data.target,
        "preset": config.preset,
    }
    prov.update(provenance or {})
    ckpt: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": config.to_dict(),
        "label_space": label_space.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "provenance": prov,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if teacher_state_dict is not None:
        ckpt["teacher_state_dict"] = {k: v.detach().cpu() for k, v in teacher_state_dict.items()}
    if training_state is not None:
        ckpt["training_state"] = training_state
    if modules:
        ckpt["modules"] = {
            name: {k: v.detach().cpu() for k, v in state.items()} for name, state in modules.items()
        }
    return ckpt


def save_checkpoint(path: str | os.PathLike, **kwargs: Any) -> Path:
    """Build (see :func:`build_checkpoint`) and atomically write a checkpoint."""
    return atomic_save(build_checkpoint(**kwargs), path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate a checkpoint dict without executing code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the .pt written by 'cluda adapt' "
            "(runs/<name>/checkpoints/best.pt or latest.pt)"
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable cluda-deploy checkpoint ({first[:160]}); "
            "for a released mmseg/DAFormer/HRDA file use 'cluda import mmseg'"
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is a PyTorch file but not a cluda-deploy checkpoint (no "
            f"format={CHECKPOINT_FORMAT!r}); for a released mmseg/DAFormer/HRDA file use "
            "'cluda import mmseg'"
        )
    if int(data.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {data['version']}, this cluda-deploy reads up to "
            f"{CHECKPOINT_VERSION}; upgrade cluda-deploy"
        )
    for key in ("config", "label_space", "normalization", "state_dict"):
        if key not in data:
            raise CheckpointError(f"{path} lacks '{key}': the file is truncated or was edited")
    return data


def checkpoint_info(data: dict[str, Any], path: str | os.PathLike = "") -> CheckpointInfo:
    try:
        config = config_from_dict(data["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored config does not parse ({exc})") from None
    norm = data["normalization"]
    return CheckpointInfo(
        path=Path(path),
        config=config,
        label_space=LabelSpace.from_dict(data["label_space"]),
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        provenance=dict(data.get("provenance", {})),
    )


def load_segmenter(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    weights: str = "student",
    expected_label_space: LabelSpace | None = None,
):
    """Rebuild the segmenter from a checkpoint alone. Returns ``(model in eval mode, info)``."""
    from cluda_deploy.models import create_segmenter

    data = read_checkpoint(path)
    info = checkpoint_info(data, path)
    if expected_label_space is not None and (
        info.label_space.class_names != expected_label_space.class_names
    ):
        raise CheckpointError(
            f"{path} predicts {info.label_space.num_classes} classes of label space "
            f"{info.label_space.name!r}, but {expected_label_space.name!r} "
            f"({expected_label_space.num_classes} classes) is needed; use a checkpoint trained "
            "for this label space"
        )
    key = {"student": "state_dict", "teacher": "teacher_state_dict"}.get(weights)
    if key is None or key not in data:
        raise CheckpointError(f"{path} has no {weights!r} weights (choose student or teacher)")
    # The file holds every weight: never fetch the pretrained ones just to overwrite them.
    model = create_segmenter(dataclasses.replace(info.config.model, pretrained=None))
    try:
        missing, unexpected = model.load_state_dict(data[key], strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(
            f"{path}: weights do not fit the stored model config ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the stored model config "
            f"(missing {len(missing)}: {missing[:3]}, unexpected {len(unexpected)}: "
            f"{unexpected[:3]}); the file was edited or written by an incompatible version"
        )
    return model.to(device).eval(), info
