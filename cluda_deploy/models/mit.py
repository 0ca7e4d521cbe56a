"""Mix Transformer (MiT) encoders through transformers' ``SegformerModel``.

The weights live in ``MiTEncoder.segformer`` (a plain ``SegformerModel``), so every encoder key is
``segformer.<transformers key>`` and a Segmenter key is ``backbone.segformer.<transformers key>``,
the same nesting transformers uses in ``SegformerForSemanticSegmentation``. The mmseg -> transformers
key map is in ``shared/fixtures/mmseg_checkpoints/mit_mmseg_to_hf.md``.

LayerNorm eps: transformers builds every encoder LayerNorm with torch's default 1e-5 and ignores
``config.layer_norm_eps``. The reference MiT (SegFormer / DAFormer ``mix_transformer.py``) uses
1e-6 for the two block norms and the end-of-stage norm, and 1e-5 for the patch-embedding and
key/value-reduction norms; :func:`set_block_norm_eps` reproduces that.
"""

from __future__ import annotations

import itertools
import operator
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor, nn
from transformers import SegformerConfig, SegformerModel


@dataclass(frozen=True)
class MiTVariant:
    """Architecture of one MiT size (SegFormer paper, Table 6; ``mix_transformer.py``)."""

    hidden_sizes: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    num_attention_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    patch_sizes: tuple[int, int, int, int] = (7, 3, 3, 3)
    strides: tuple[int, int, int, int] = (4, 2, 2, 2)
    mlp_ratios: tuple[int, int, int, int] = (4, 4, 4, 4)


MIT_VARIANTS: dict[str, MiTVariant] = {
    "mit_b0": MiTVariant(hidden_sizes=(32, 64, 160, 256), depths=(2, 2, 2, 2)),
    "mit_b1": MiTVariant(hidden_sizes=(64, 128, 320, 512), depths=(2, 2, 2, 2)),
    "mit_b2": MiTVariant(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 6, 3)),
    "mit_b3": MiTVariant(hidden_sizes=(64, 128, 320, 512), depths=(3, 4, 18, 3)),
    "mit_b4": MiTVariant(hidden_sizes=(64, 128, 320, 512), depths=(3, 8, 27, 3)),
    "mit_b5": MiTVariant(hidden_sizes=(64, 128, 320, 512), depths=(3, 6, 40, 3)),
    # Not a published size: one block per stage, head dim 16, for CPU demos and tests.
    "mit_tiny": MiTVariant(
        hidden_sizes=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_attention_heads=(1, 2, 4, 8)
    ),
}

# The Hugging Face ids of SegFormer's ImageNet-1k MiT weights, for error messages.
HUB_IDS = {f"mit_b{i}": f"nvidia/mit-b{i}" for i in range(6)}


class MiTEncoder(nn.Module):
    """MiT encoder with the backbone interface shared by all encoders.

    ``forward(images (B, 3, H, W)) -> [ (B, C_i, ceil(H / s_i), ceil(W / s_i)) for i in 0..3 ]``
    with ``channels`` C_i = hidden sizes and ``strides`` s_i = 4, 8, 16, 32.
    """

    def __init__(self, segformer: SegformerModel, layer_norm_eps: float):
        super().__init__()
        self.segformer = segformer
        set_block_norm_eps(segformer, layer_norm_eps)
        config = segformer.config
        self.channels: list[int] = list(config.hidden_sizes)
        self.strides: list[int] = list(itertools.accumulate(config.strides, operator.mul))
        self.min_input_size = _min_input_size(config)

    def forward(self, images: Tensor) -> list[Tensor]:
        if min(images.shape[-2:]) < self.min_input_size:
            raise ValueError(
                f"MiT needs images of at least {self.min_input_size}x{self.min_input_size} px "
                f"(its key/value reduction convs need that much), got "
                f"{tuple(images.shape[-2:])}; resize or pad the input"
            )
        outputs = self.segformer(pixel_values=images, output_hidden_states=True)
        return list(outputs.hidden_states)


def set_block_norm_eps(segformer: SegformerModel, eps: float) -> None:
    """Set ``eps`` on the block norms (before/after) and the end-of-stage norms, as mmseg MiT does.

    The patch-embedding and key/value-reduction LayerNorms keep torch's 1e-5, like the reference.
    """
    for stage in segformer.stages:
        stage.layer_norm.eps = eps
        for block in stage.blocks:
            block.layernorm_before.eps = eps
            block.layernorm_after.eps = eps


def _min_input_size(config: SegformerConfig) -> int:
    """Smallest image side for which every stage map is at least its key/value reduction ratio."""

    def fits(size: int) -> bool:
        for patch, stride, ratio in zip(
            config.patch_sizes, config.strides, config.sr_ratios, strict=True
        ):
            size = (size + 2 * (patch // 2) - patch) // stride + 1
            if size < ratio:
                return False
        return True

    return next(size for size in itertools.count(1) if fits(size))


def segformer_config(
    variant: MiTVariant, *, drop_path_rate: float, layer_norm_eps: float
) -> SegformerConfig:
    """The transformers config of one MiT size; no dropout besides stochastic depth (as mmseg)."""
    return SegformerConfig(
        hidden_sizes=list(variant.hidden_sizes),
        depths=list(variant.depths),
        num_attention_heads=list(variant.num_attention_heads),
        sr_ratios=list(variant.sr_ratios),
        patch_sizes=list(variant.patch_sizes),
        strides=list(variant.strides),
        mlp_ratios=list(variant.mlp_ratios),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=drop_path_rate,
        layer_norm_eps=layer_norm_eps,
    )


def mit_encoder(
    name: str,
    *,
    drop_path_rate: float = 0.1,
    layer_norm_eps: float = 1e-6,
    pretrained: str | None = None,
) -> MiTEncoder:
    """Build MiT ``name`` (mit_b0..mit_b5, mit_tiny): random init, or weights from ``pretrained``.

    ``pretrained`` is a Hugging Face id (``nvidia/mit-b5``, downloaded or taken from the cache) or a
    local directory written by ``save_pretrained`` / ``hf download``; its architecture must match
    ``name``. ``drop_path_rate`` and ``layer_norm_eps`` override the values stored with the weights.
    """
    if name not in MIT_VARIANTS:
        raise ValueError(f"unknown MiT variant {name!r}; known: {', '.join(MIT_VARIANTS)}")
    config = segformer_config(
        MIT_VARIANTS[name], drop_path_rate=drop_path_rate, layer_norm_eps=layer_norm_eps
    )
    if pretrained is None:
        segformer = SegformerModel(config)
    else:
        segformer = load_pretrained_segformer(name, pretrained, config)
    return MiTEncoder(segformer, layer_norm_eps)


def load_pretrained_segformer(
    name: str, pretrained: str, config: SegformerConfig
) -> SegformerModel:
    """``SegformerModel.from_pretrained`` with errors that say what to do instead of a traceback.

    Missing or wrongly-shaped weights raise instead of being left at random init.
    """
    local = Path(pretrained).expanduser()
    is_path = local.exists() or pretrained.startswith(("/", ".", "~")) or pretrained.count("/") > 1
    if is_path and not local.is_dir():
        raise FileNotFoundError(
            f"MiT weights directory {pretrained} not found; pass a folder holding config.json and "
            f"the weights (e.g. from 'hf download {HUB_IDS.get(name, 'nvidia/mit-b5')} --local-dir "
            f"{pretrained}')"
        )
    keep = (
        "drop_path_rate",
        "layer_norm_eps",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
    )
    overrides = {key: getattr(config, key) for key in keep}
    try:
        segformer, info = SegformerModel.from_pretrained(
            str(local) if is_path else pretrained, output_loading_info=True, **overrides
        )
    except OSError as exc:
        hub_id = pretrained if not is_path else HUB_IDS.get(name, "nvidia/mit-b5")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise OSError(
            f"could not load MiT weights {pretrained!r} ({reason}); on a connected machine run "
            f"'hf download {hub_id} --local-dir weights/{hub_id.split('/')[-1]}', copy that folder "
            f"here and set model.pretrained to its path"
        ) from exc
    _check_architecture(name, pretrained, segformer.config, config)
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        raise ValueError(f"MiT weights {pretrained!r} do not fit {name}: {problems}")
    return segformer


def _check_architecture(
    name: str, pretrained: str, loaded: SegformerConfig, expected: SegformerConfig
) -> None:
    fields = (
        "hidden_sizes",
        "depths",
        "num_attention_heads",
        "sr_ratios",
        "patch_sizes",
        "strides",
    )
    got = {f: list(getattr(loaded, f)) for f in fields}
    want = {f: list(getattr(expected, f)) for f in fields if got[f] != list(getattr(expected, f))}
    if want:
        wrong = {f: got[f] for f in want}
        raise ValueError(
            f"pretrained {pretrained!r} has {wrong} but backbone {name!r} needs {want}; "
            f"pick the matching weights or model.backbone"
        )


__all__ = [
    "MIT_VARIANTS",
    "MiTEncoder",
    "MiTVariant",
    "mit_encoder",
    "segformer_config",
    "set_block_norm_eps",
]
