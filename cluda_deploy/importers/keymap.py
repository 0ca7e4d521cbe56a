"""Key maps from a bare mmseg segmentor state_dict to our Segmenter's.

* MiT backbone (``backbone.*`` in mmseg) -> transformers 5.x ``SegformerModel`` keys under
  ``backbone.segformer.`` (shared/fixtures/mmseg_checkpoints/mit_mmseg_to_hf.md): stages are
  numbered 1..4 in mmseg and 0..3 in transformers, the fused ``attn.kv`` Linear is split by
  rows into ``k_proj`` (first half) and ``v_proj`` (second half), nothing is transposed.
* decode heads: the same names on both sides (mmcv ``ConvModule`` naming, HRDA's
  ``head``/``scale_attention``), so the map is the identity.

The map is derived from the target model's own keys, so it follows any MiT depth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BACKBONE_PREFIX = "backbone."
HF_PREFIX = "backbone.segformer."

# transformers 5.x name inside one stage s (groups after the stage index) -> mmseg name with
# stage i = s + 1; ``{j}`` is the block index. ``half``: 0 = key rows, 1 = value rows of kv.
_BLOCK = r"blocks\.(?P<j>\d+)\."
_RULES: tuple[tuple[str, str, int | None], ...] = (
    (r"patch_embeddings\.proj\.", "patch_embed{i}.proj.", None),
    (r"patch_embeddings\.layer_norm\.", "patch_embed{i}.norm.", None),
    (_BLOCK + r"layernorm_before\.", "block{i}.{j}.norm1.", None),
    (_BLOCK + r"attention\.q_proj\.", "block{i}.{j}.attn.q.", None),
    (_BLOCK + r"attention\.k_proj\.", "block{i}.{j}.attn.kv.", 0),
    (_BLOCK + r"attention\.v_proj\.", "block{i}.{j}.attn.kv.", 1),
    (
        _BLOCK + r"attention\.sequence_reduction\.sequence_reduction\.",
        "block{i}.{j}.attn.sr.",
        None,
    ),
    (_BLOCK + r"attention\.sequence_reduction\.layer_norm\.", "block{i}.{j}.attn.norm.", None),
    (_BLOCK + r"attention\.o_proj\.", "block{i}.{j}.attn.proj.", None),
    (_BLOCK + r"layernorm_after\.", "block{i}.{j}.norm2.", None),
    (_BLOCK + r"mlp\.fc1\.", "block{i}.{j}.mlp.fc1.", None),
    (_BLOCK + r"mlp\.dwconv\.dwconv\.", "block{i}.{j}.mlp.dwconv.dwconv.", None),
    (_BLOCK + r"mlp\.fc2\.", "block{i}.{j}.mlp.fc2.", None),
    (r"layer_norm\.", "norm{i}.", None),
)
_COMPILED = tuple(
    (re.compile(r"stages\.(?P<s>\d+)\." + pattern + r"(?P<param>weight|bias)$"), template, half)
    for pattern, template, half in _RULES
)


@dataclass(frozen=True)
class KeyMapping:
    """Target tensor ``target`` = rows ``rows`` (dim 0; None = all) of source tensor ``source``."""

    source: str
    target: str
    rows: tuple[int, int] | None = None


def hf_to_mmseg(hf_key: str) -> tuple[str, int | None]:
    """transformers 5.x ``SegformerModel`` key -> (mmseg key after ``backbone.``, kv half or None).

    >>> hf_to_mmseg("stages.0.blocks.2.attention.v_proj.weight")
    ('block1.2.attn.kv.weight', 1)
    """
    for pattern, template, half in _COMPILED:
        match = pattern.fullmatch(hf_key)
        if match:
            stage = int(match["s"]) + 1
            name = template.format(i=stage, j=match.groupdict().get("j"))
            return name + match["param"], half
    raise KeyError(f"no mmseg MiT counterpart for transformers key {hf_key!r}")


def source_key_map(target_shapes: dict[str, tuple[int, ...]]) -> list[KeyMapping]:
    """One :class:`KeyMapping` per key of our Segmenter (``target_shapes``: key -> shape).

    ``backbone.segformer.<hf>`` keys come from ``backbone.<mmseg>`` (kv rows split by the
    target's first dimension C: key = [0, C), value = [C, 2C)); every other key (decode heads)
    comes from the key of the same name.
    """
    mappings = []
    for target, shape in target_shapes.items():
        if not target.startswith(HF_PREFIX):
            mappings.append(KeyMapping(target, target))
            continue
        name, half = hf_to_mmseg(target[len(HF_PREFIX) :])
        rows = None if half is None else (half * shape[0], (half + 1) * shape[0])
        mappings.append(KeyMapping(BACKBONE_PREFIX + name, target, rows))
    return mappings


def expected_source_shapes(
    mappings: list[KeyMapping], target_shapes: dict[str, tuple[int, ...]]
) -> dict[str, tuple[int, ...]]:
    """Shape each source key must have: the target's, or for a row-split key the rows
    concatenated (kv: [2C, C] / [2C])."""
    shapes: dict[str, tuple[int, ...]] = {}
    for mapping in mappings:
        shape = tuple(target_shapes[mapping.target])
        if mapping.rows is None:
            shapes[mapping.source] = shape
        else:
            rows = max(mapping.rows[1], shapes.get(mapping.source, (0,))[0])
            shapes[mapping.source] = (rows, *shape[1:])
    return shapes


__all__ = [
    "BACKBONE_PREFIX",
    "HF_PREFIX",
    "KeyMapping",
    "expected_source_shapes",
    "hf_to_mmseg",
    "source_key_map",
]
