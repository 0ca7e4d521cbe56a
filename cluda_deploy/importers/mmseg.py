"""Convert a DAFormer / HRDA / MIC / CLUDA checkpoint (mmseg 0.16, mmcv 1.3.7) into ours.

``import_mmseg(path, arch, out)`` reads the file safely (:mod:`.reader`), picks the student
(``model.*``) or EMA teacher (``ema_model.*``) block, maps its keys onto the Segmenter that our
preset for ``arch`` builds (:mod:`.keymap`), checks every key and shape strictly, and writes a
cluda-deploy checkpoint (config, Cityscapes label space, ImageNet normalisation, weights,
provenance naming the source file, its sha256, the arch and the mmseg ``meta``).

The network is rebuilt with the reference MiT LayerNorm eps (``model.layer_norm_eps`` 1e-6,
see ``models/mit.py``); the input normalisation is mmseg's ``img_norm_cfg`` of all four code
bases (ImageNet mean/std, RGB), which is our default.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cluda_deploy.checkpoint import save_checkpoint
from cluda_deploy.config import PRESETS, Config, ModelConfig, apply_override, get_preset
from cluda_deploy.importers.archs import ARCHS, MMSegArch, get_arch
from cluda_deploy.importers.keymap import expected_source_shapes, source_key_map
from cluda_deploy.importers.reader import MMSegImportError, plain, read_mmseg_file
from cluda_deploy.labels import LabelSpace, label_space_for_source

Shape = tuple[int, ...]
# Keys a model does not need for inference, so --allow-missing may let them be absent.
OPTIONAL_SUFFIXES = (".num_batches_tracked",)
_LIST_AT_MOST = 4


class KeyMismatchError(MMSegImportError):
    """Keys of the file that do not fit the architecture, each named with what was expected."""

    def __init__(
        self, message: str, missing: list, unknown: list, misshaped: list, optional_only: bool
    ):
        super().__init__(message)
        self.missing, self.unknown, self.misshaped = missing, unknown, misshaped
        self.optional_only = optional_only  # --allow-missing would accept the file


@dataclass
class Conversion:
    """The converted state_dict and what happened to the keys that were not copied."""

    state_dict: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)  # training-only head keys in the file
    # Optional keys absent from the file (--allow-missing): BatchNorm counters, stored as 0,
    # and training-only head keys, not needed.
    filled: list[str] = field(default_factory=list)


@dataclass
class ImportResult:
    out: Path
    arch: str
    form: str
    prefix: str
    tensors: int
    dropped: list[str]
    filled: list[str]
    config: Config
    source: str


# --------------------------------------------------------------------------- shapes


def _meta_state(build) -> dict[str, tuple[Shape, torch.dtype]]:
    with torch.device("meta"):
        module = build()
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def target_state(model_cfg: ModelConfig) -> dict[str, tuple[Shape, torch.dtype]]:
    """Key -> (shape, dtype) of the Segmenter ``model_cfg`` builds (on the meta device: no
    memory, no init, a fraction of a second even for MiT-B5)."""
    from cluda_deploy.models import create_segmenter

    return _meta_state(lambda: create_segmenter(dataclasses.replace(model_cfg, pretrained=None)))


def training_head_shapes(arch: MMSegArch, model_cfg: ModelConfig) -> dict[str, Shape]:
    """Source keys and shapes of ``arch``'s training-only heads (CLUDA's ``feat_weighter``: a
    ConvFusionHead like HRDA's scale attention, with one output)."""
    from cluda_deploy.models import create_backbone
    from cluda_deploy.models.hrda import ConvFusionHead

    if not arch.training_heads:
        return {}
    with torch.device("meta"):
        backbone = create_backbone(dataclasses.replace(model_cfg, pretrained=None))
    width = model_cfg.hrda.attention_embed_dim
    shapes: dict[str, Shape] = {}
    for name, outputs in arch.training_heads:
        state = _meta_state(
            lambda outputs=outputs: ConvFusionHead(
                backbone.channels, backbone.strides, outputs, embed_dim=width, channels=width
            )
        )
        shapes.update({f"decode_head.{name}.{k}": shape for k, (shape, _) in state.items()})
    return shapes


# --------------------------------------------------------------------------- conversion


def _is_optional(key: str, training: dict[str, Shape]) -> bool:
    return key in training or key.endswith(OPTIONAL_SUFFIXES)


def _fmt(shape: Shape) -> str:
    return str(list(shape))


def _listing(label: str, items: list[str]) -> str:
    more = f" and {len(items) - _LIST_AT_MOST} more" if len(items) > _LIST_AT_MOST else ""
    return f"{len(items)} {label}: {', '.join(items[:_LIST_AT_MOST])}{more}"


def check_keys(
    source: dict[str, Tensor],
    expected: dict[str, Shape],
    training: dict[str, Shape],
    allow_missing: bool,
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unknown, misshaped)`` problem descriptions, each naming the key and what
    was expected; optional keys missing only count without ``allow_missing``."""
    wanted = {**expected, **training}
    missing = [
        f"{k} (expected {_fmt(shape)})"
        for k, shape in wanted.items()
        if k not in source and not (allow_missing and _is_optional(k, training))
    ]
    unknown = [f"{k} {_fmt(tuple(v.shape))}" for k, v in source.items() if k not in wanted]
    misshaped = [
        f"{k} is {_fmt(tuple(v.shape))}, expected {_fmt(wanted[k])}"
        for k, v in source.items()
        if k in wanted and tuple(v.shape) != wanted[k]
    ]
    return missing, unknown, misshaped


def convert_state_dict(
    source: dict[str, Tensor],
    model_cfg: ModelConfig,
    arch: MMSegArch,
    *,
    allow_missing: bool = False,
    prefix: str = "",
) -> Conversion:
    """Map a bare mmseg segmentor state_dict onto the Segmenter of ``model_cfg``.

    Strict: a missing, unknown or mis-shaped key raises :class:`KeyMismatchError` listing them
    (with ``prefix``, the UDA block they came from, in front of each name). With
    ``allow_missing`` the optional keys (``training_heads``, BatchNorm ``num_batches_tracked``)
    may be absent; a missing counter is stored as 0 (it does not affect inference).
    """
    target = target_state(model_cfg)
    target_shapes = {k: shape for k, (shape, _) in target.items()}
    mappings = source_key_map(target_shapes)
    expected = expected_source_shapes(mappings, target_shapes)
    training = training_head_shapes(arch, model_cfg)
    missing, unknown, misshaped = check_keys(source, expected, training, allow_missing)
    if missing or unknown or misshaped:
        optional_only = not (
            unknown or misshaped or check_keys(source, expected, training, True)[0]
        )
        parts = [
            _listing(label, [prefix + item for item in items])
            for label, items in (
                ("missing", missing),
                ("unknown", unknown),
                ("mis-shaped", misshaped),
            )
            if items
        ]
        raise KeyMismatchError(
            f"the weights do not fit --arch {arch.name} ({'; '.join(parts)})", missing, unknown,
            misshaped, optional_only,
        )  # fmt: skip
    state_dict: dict[str, Tensor] = {}
    filled = []
    for mapping in mappings:
        shape, dtype = target[mapping.target]
        if mapping.source not in source:  # optional, allowed missing
            state_dict[mapping.target] = torch.zeros(shape, dtype=dtype)
            filled.append(mapping.source)
            continue
        tensor = source[mapping.source]
        if mapping.rows is not None:
            tensor = tensor[mapping.rows[0] : mapping.rows[1]]
        state_dict[mapping.target] = tensor.detach().to(dtype).clone()
    dropped = [k for k in source if k in training]
    filled += [k for k in training if k not in source]
    return Conversion(state_dict, dropped, filled)


def guess_arch(
    source: dict[str, Tensor], exclude: str, overrides: list[str] | tuple[str, ...] = ()
) -> str | None:
    """The first other known arch whose keys and shapes ``source`` fits exactly, if any."""
    for name, arch in ARCHS.items():
        if name == exclude:
            continue
        model_cfg = import_config(arch, "gta", overrides).model
        target = {k: shape for k, (shape, _) in target_state(model_cfg).items()}
        expected = expected_source_shapes(source_key_map(target), target)
        if not any(check_keys(source, expected, training_head_shapes(arch, model_cfg), True)):
            return name
    return None


# --------------------------------------------------------------------------- meta


def detect_source(meta: dict) -> str | None:
    """Source dataset named in mmseg's config text (``meta['config']``): gta, synthia or None."""
    text = str(meta.get("config", ""))
    if re.search(r"type=['\"]SynthiaDataset['\"]", text):
        return "synthia"
    if re.search(r"type=['\"]GTADataset['\"]", text):
        return "gta"
    return None


def check_classes(meta: dict, label_space: LabelSpace, path: Path) -> None:
    """The file's ``meta['CLASSES']`` (when present) must be our label space's classes."""
    classes = meta.get("CLASSES")
    if classes is not None and tuple(classes) != label_space.class_names:
        raise MMSegImportError(
            f"{path} predicts {len(classes)} classes {tuple(classes)[:3]}..., not the "
            f"{label_space.num_classes} Cityscapes classes of {label_space.name!r}; only "
            "GTA5/Synthia -> Cityscapes checkpoints can be imported"
        )


def import_config(
    arch: MMSegArch, source: str, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Our config for ``arch`` (its preset; the ``-synthia`` variant when there is one), then
    ``section.key=value`` ``overrides`` (e.g. another MiT size a user trained)."""
    synthia_preset = f"{arch.preset}-synthia"
    name = synthia_preset if source == "synthia" and synthia_preset in PRESETS else arch.preset
    cfg = get_preset(name)
    cfg.data.source = source
    cfg.train.method = "cluda" if arch.method == "cluda" else "dacs"
    cfg.model.pretrained = None
    for assignment in overrides:
        apply_override(cfg, assignment)
    return cfg


# --------------------------------------------------------------------------- entry point


def import_mmseg(
    path: str | os.PathLike,
    arch: str,
    out: str | os.PathLike,
    *,
    weights: str = "student",
    allow_missing: bool = False,
    source: str = "auto",
    overrides: list[str] | tuple[str, ...] = (),
) -> ImportResult:
    """Convert the mmseg checkpoint ``path`` of architecture ``arch`` into ``out`` (atomic).

    ``weights``: student (``model.*``) or teacher (``ema_model.*``); ``source``: auto (from
    ``meta['config']``, else gta), gta or synthia; ``overrides``: config assignments applied
    after the arch's preset.
    """
    spec = get_arch(arch)
    if source not in ("auto", "gta", "synthia"):
        raise MMSegImportError(f"--source must be auto, gta or synthia, got {source!r}")
    mmseg = read_mmseg_file(path)
    prefix, block = mmseg.weights(weights)
    if mmseg.stray_keys:
        raise MMSegImportError(
            f"{mmseg.path}: {_listing('keys without a model./ema_model./imnet_model. prefix', mmseg.stray_keys)}"
            "; the file mixes forms, re-save the segmentor's state_dict alone"
        )
    resolved_source = (detect_source(mmseg.meta) or "gta") if source == "auto" else source
    cfg = import_config(spec, resolved_source, overrides)
    label_space = label_space_for_source(resolved_source)
    check_classes(mmseg.meta, label_space, mmseg.path)
    try:
        conversion = convert_state_dict(
            block, cfg.model, spec, allow_missing=allow_missing, prefix=prefix
        )
    except KeyMismatchError as exc:
        if exc.optional_only:
            hint = "; they are optional (training-only heads, BatchNorm counters): --allow-missing"
        else:
            guess = guess_arch(block, exclude=arch, overrides=overrides)
            hint = f"; the keys fit --arch {guess}" if guess else ""
        raise KeyMismatchError(f"{mmseg.path}: {exc}{hint}", exc.missing, exc.unknown,
                               exc.misshaped, exc.optional_only) from None  # fmt: skip
    provenance = {
        "method": spec.method,
        "imported": {
            "format": "mmseg",
            "file": mmseg.path.name,
            "path": str(mmseg.path.resolve()),
            "sha256": mmseg.sha256,
            "arch": spec.name,
            "reference": spec.reference,
            "weights": weights,
            "prefix": prefix,
            "form": mmseg.form,
            "dropped": conversion.dropped,
            "filled": conversion.filled,
            "source_detected": source == "auto" and detect_source(mmseg.meta) is not None,
            "meta": plain(mmseg.meta),
        },
    }
    if "iter" in mmseg.meta:
        provenance["iteration"] = int(mmseg.meta["iter"])
    out_path = save_checkpoint(
        out, config=cfg, label_space=label_space, state_dict=conversion.state_dict,
        provenance=provenance,
    )  # fmt: skip
    return ImportResult(
        out=out_path, arch=spec.name, form=mmseg.form, prefix=prefix,
        tensors=len(conversion.state_dict), dropped=conversion.dropped, filled=conversion.filled,
        config=cfg, source=resolved_source,
    )  # fmt: skip


__all__ = [
    "Conversion",
    "ImportResult",
    "KeyMismatchError",
    "check_classes",
    "check_keys",
    "convert_state_dict",
    "detect_source",
    "guess_arch",
    "import_config",
    "import_mmseg",
    "target_state",
    "training_head_shapes",
]
