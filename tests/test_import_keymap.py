"""mmseg -> cluda-deploy key maps against the committed manifests of the released MiT-B5 files.

Every test builds a state_dict with exactly a manifest's keys and shapes (values: one arange
buffer, so every tensor is distinct and no 85M-parameter random draw is needed), converts it
and checks where each tensor landed, using the verified map ``mit_mmseg_to_hf_map.json``
(independent of our regex rules) for the backbone.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from cluda_deploy.config import get_preset
from cluda_deploy.importers.archs import ARCHS, get_arch
from cluda_deploy.importers.keymap import (
    HF_PREFIX,
    expected_source_shapes,
    hf_to_mmseg,
    source_key_map,
)
from cluda_deploy.importers.mmseg import convert_state_dict, target_state, training_head_shapes
from tests.real_fixtures import checkpoint_manifest

MANIFESTS = {
    "daformer-mitb5": "daformer_mitb5.json",
    "hrda-mitb5": "hrda_mitb5.json",
    "mic-hrda-mitb5": "mic_hrda_mitb5.json",
    "cluda-hrda-mitb5": "cluda_hrda_mitb5.json",
}


@functools.cache
def verified_map() -> dict[str, dict]:
    """hf5 key -> entry of the verified mmseg -> transformers map (1156 entries)."""
    return {e["hf5"]: e for e in checkpoint_manifest("mit_mmseg_to_hf_map.json")["entries"]}


@functools.cache
def student_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Bare segmentor key -> shape of the ``model.*`` block of ``arch``'s manifest."""
    keys = checkpoint_manifest(MANIFESTS[arch])["keys"]
    return {k[len("model.") :]: tuple(v) for k, v in keys.items() if k.startswith("model.")}


def fake_block(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Tensors of the given shapes, views of one arange buffer: each holds different values.
    ``num_batches_tracked`` counters are int64 scalars, as in the files."""
    total = sum(math.prod(s) for s in shapes.values())
    buffer = torch.arange(total, dtype=torch.float32)
    block, start = {}, 0
    for key, shape in shapes.items():
        n = math.prod(shape)
        if key.endswith("num_batches_tracked"):
            block[key] = torch.tensor(start, dtype=torch.int64)
        else:
            block[key] = buffer[start : start + n].view(shape)
        start += n
    return block


def test_hf_to_mmseg_rules():
    assert hf_to_mmseg("stages.0.patch_embeddings.proj.weight") == (
        "patch_embed1.proj.weight",
        None,
    )
    assert hf_to_mmseg("stages.2.blocks.39.attention.k_proj.bias") == ("block3.39.attn.kv.bias", 0)
    assert hf_to_mmseg("stages.3.layer_norm.weight") == ("norm4.weight", None)
    with pytest.raises(KeyError, match="no mmseg MiT counterpart"):
        hf_to_mmseg("stages.0.blocks.0.attention.qkv.weight")


def test_mit_b5_map_equals_the_verified_map():
    target = {
        k: shape for k, (shape, _) in target_state(get_preset("daformer-mitb5").model).items()
    }
    ours = {
        m.target[len(HF_PREFIX) :]: m
        for m in source_key_map(target)
        if m.target.startswith(HF_PREFIX)
    }
    assert len(ours) == len(verified_map()) == 1156
    for hf5, entry in verified_map().items():
        mapping = ours[hf5]
        assert mapping.source == entry["mmseg"], hf5
        assert mapping.rows == (tuple(entry["rows"]) if entry["rows"] else None), hf5
        assert list(target[mapping.target]) == entry["shape"], hf5


@pytest.mark.parametrize("arch", list(ARCHS))
def test_expected_keys_equal_the_manifest(arch):
    """Our model + the arch's training-only heads need exactly the file's keys and shapes."""
    spec = get_arch(arch)
    model_cfg = get_preset(spec.preset).model
    target = {k: shape for k, (shape, _) in target_state(model_cfg).items()}
    expected = expected_source_shapes(source_key_map(target), target)
    expected.update(training_head_shapes(spec, model_cfg))
    manifest = student_shapes(arch)
    assert set(expected) == set(manifest)
    assert {k: tuple(v) for k, v in expected.items()} == manifest
    backbone = [k for k in manifest if k.startswith("backbone.")]
    assert len(backbone) == 1052


@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_released_tensor_lands_where_it_should(arch):
    spec = get_arch(arch)
    source = fake_block(student_shapes(arch))
    conversion = convert_state_dict(source, get_preset(spec.preset).model, spec)
    converted = conversion.state_dict
    # Backbone: by the verified map, kv split into key (first C rows) and value (last C rows).
    for hf5, entry in verified_map().items():
        tensor = source[entry["mmseg"]]
        if entry["rows"]:
            tensor = tensor[entry["rows"][0] : entry["rows"][1]]
        assert torch.equal(converted[HF_PREFIX + hf5], tensor), hf5
    # Decode heads: same names; CLUDA's feat_weighter is dropped, nothing else.
    heads = [k for k in converted if k.startswith("decode_head.")]
    for key in heads:
        assert torch.equal(converted[key], source[key]), key
    assert len(converted) == 1156 + len(heads)
    dropped = [k for k in source if k.startswith("decode_head.feat_weighter.")]
    assert sorted(conversion.dropped) == sorted(dropped)
    assert (len(dropped) > 0) == (arch == "cluda-hrda-mitb5")
    assert set(source) == {entry["mmseg"] for entry in verified_map().values()} | set(heads) | set(
        dropped
    )
