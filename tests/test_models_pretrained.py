"""Pretrained weights: local folders, legacy Hub files, and the errors when they cannot be had."""

from __future__ import annotations

import json
import re
from urllib.error import URLError

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from transformers import SegformerModel

from cluda_deploy.config import ModelConfig
from cluda_deploy.models import create_segmenter, mit_encoder, resnet101_encoder
from cluda_deploy.models.mit import MIT_VARIANTS, segformer_config
from cluda_deploy.models.resnet import imagenet_cache_path
from tests.real_fixtures import checkpoint_manifest as manifest

# transformers 5.x encoder names -> the 4.x names stored in the nvidia/mit-b* Hub files.
TO_LEGACY_NAMES = [
    (r"^stages\.(\d+)\.patch_embeddings\.", r"encoder.patch_embeddings.\1."),
    (r"^stages\.(\d+)\.blocks\.", r"encoder.block.\1."),
    (r"^stages\.(\d+)\.layer_norm\.", r"encoder.layer_norm.\1."),
    (r"attention\.q_proj", "attention.self.query"),
    (r"attention\.k_proj", "attention.self.key"),
    (r"attention\.v_proj", "attention.self.value"),
    (r"attention\.sequence_reduction\.sequence_reduction", "attention.self.sr"),
    (r"attention\.sequence_reduction\.layer_norm", "attention.self.layer_norm"),
    (r"attention\.o_proj", "attention.output.dense"),
    (r"mlp\.fc1", "mlp.dense1"),
    (r"mlp\.fc2", "mlp.dense2"),
    (r"layernorm_before", "layer_norm_1"),
    (r"layernorm_after", "layer_norm_2"),
]


def legacy_name(key: str) -> str:
    for pattern, replacement in TO_LEGACY_NAMES:
        key = re.sub(pattern, replacement, key)
    return key


def random_segformer(name: str) -> SegformerModel:
    torch.manual_seed(0)
    config = segformer_config(MIT_VARIANTS[name], drop_path_rate=0.0, layer_norm_eps=1e-6)
    return SegformerModel(config)


def test_mit_from_a_local_folder(tmp_path):
    reference = random_segformer("mit_tiny")
    reference.save_pretrained(tmp_path)
    encoder = mit_encoder("mit_tiny", pretrained=str(tmp_path), drop_path_rate=0.2)
    loaded = encoder.segformer.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    assert encoder.segformer.stages[-1].blocks[-1].drop_path.drop_prob == pytest.approx(0.2)
    assert encoder.segformer.stages[0].blocks[0].layernorm_before.eps == 1e-6


def test_mit_from_a_legacy_hub_style_classification_checkpoint(tmp_path):
    """nvidia/mit-b* hold SegformerForImageClassification weights under transformers 4.x names."""
    reference = random_segformer("mit_tiny")
    weights = {f"segformer.{legacy_name(k)}": v for k, v in reference.state_dict().items()}
    weights |= {"classifier.weight": torch.zeros(1000, 128), "classifier.bias": torch.zeros(1000)}
    save_file(weights, tmp_path / "model.safetensors")
    config = reference.config.to_dict() | {"architectures": ["SegformerForImageClassification"]}
    (tmp_path / "config.json").write_text(json.dumps(config))

    encoder = create_segmenter(ModelConfig(backbone="mit_tiny", pretrained=str(tmp_path))).backbone
    loaded = encoder.segformer.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())


def test_legacy_names_in_the_test_are_the_transformers_4_names():
    legacy_keys = manifest("hf_segformer_mitb5_encoder_transformers4.json")["keys"]
    with torch.device("meta"):
        keys = mit_encoder("mit_b5").segformer.state_dict()
    assert sorted(map(legacy_name, keys)) == sorted(legacy_keys)


def test_mit_weights_of_another_size_are_refused(tmp_path):
    random_segformer("mit_tiny").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"has \{'hidden_sizes': \[16, 32, 64, 128\].*'mit_b0'"):
        mit_encoder("mit_b0", pretrained=str(tmp_path))


def test_mit_offline_and_not_cached_says_how_to_get_the_weights(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="hf download cluda-tests/no-such-mit --local-dir") as info:
        mit_encoder("mit_b0", pretrained="cluda-tests/no-such-mit")
    message = str(info.value)
    assert "\n" not in message and "model.pretrained" in message


def test_mit_missing_local_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf download nvidia/mit-b5 --local-dir"):
        mit_encoder("mit_b5", pretrained=str(tmp_path / "mit-b5"))


def test_resnet_imagenet_offline_names_the_file_and_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(OSError, match="resnet101-63fe2227.pth") as info:
        resnet101_encoder(pretrained="imagenet")
    message = str(info.value)
    assert str(tmp_path / "checkpoints" / "resnet101-63fe2227.pth") in message
    assert "model.pretrained" in message and "\n" not in message


def test_resnet_weights_from_the_hub_cache_or_a_path(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    torch.manual_seed(0)
    reference = resnet101_encoder()
    cached = imagenet_cache_path()
    cached.parent.mkdir(parents=True)
    state = reference.state_dict() | {
        "fc.weight": torch.zeros(1000, 2048),
        "fc.bias": torch.zeros(1000),
    }
    torch.save(state, cached)
    from_cache = resnet101_encoder(pretrained="imagenet").state_dict()
    from_path = create_segmenter(
        ModelConfig(backbone="resnet101", head="deeplabv2", pretrained=str(cached))
    ).backbone.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(from_cache[key], value) and torch.equal(from_path[key], value)


def test_resnet_missing_file():
    with pytest.raises(FileNotFoundError, match="'imagenet'.*resnet101 .pth"):
        resnet101_encoder(pretrained="/nowhere/resnet101.pth")
