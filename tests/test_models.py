"""Backbones, heads and the registry: shapes, key names against the released checkpoints, options."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from cluda_deploy.config import ModelConfig
from cluda_deploy.models import (
    DAFormerHead,
    DeepLabV2Head,
    backbone_names,
    create_backbone,
    create_head,
    create_segmenter,
    head_names,
    mit_encoder,
    resnet101_encoder,
)
from cluda_deploy.models.mit import MIT_VARIANTS
from tests.real_fixtures import checkpoint_manifest

SIZE = 64  # input side for the shape tests: every stride divides it, every MiT accepts it


manifest = checkpoint_manifest


def shapes(state_dict: dict) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state_dict.items()}


@functools.cache
def backbone_and_features(name: str) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """Each backbone built and run once (64x64, eval) for all the head combinations below."""
    torch.manual_seed(0)
    backbone = create_backbone(ModelConfig(backbone=name)).eval()
    with torch.no_grad():
        return backbone, backbone(torch.randn(1, 3, SIZE, SIZE))


def test_registry_names():
    assert backbone_names() == [*MIT_VARIANTS, "resnet101"]
    assert set(MIT_VARIANTS) == {f"mit_b{i}" for i in range(6)} | {"mit_tiny"}
    assert head_names() == ["daformer", "segformer", "deeplabv2"]


@pytest.mark.parametrize(("field", "known"), [("backbone", backbone_names), ("head", head_names)])
def test_unknown_name_lists_known_ones(field, known):
    with pytest.raises(ValueError, match=f"unknown {field} 'nope'") as info:
        create_segmenter(ModelConfig(**{field: "nope"}))
    assert all(name in str(info.value) for name in known())


@pytest.mark.parametrize("name", [*MIT_VARIANTS, "resnet101"])
def test_backbone_feature_shapes(name):
    backbone, features = backbone_and_features(name)
    assert len(features) == len(backbone.channels) == len(backbone.strides) == 4
    for x, channels, stride in zip(features, backbone.channels, backbone.strides, strict=True):
        assert x.shape == (1, channels, SIZE // stride, SIZE // stride)
    expected = [4, 8, 8, 8] if name == "resnet101" else [4, 8, 16, 32]
    assert backbone.strides == expected


@pytest.mark.parametrize("head", ["daformer", "segformer", "deeplabv2"])
@pytest.mark.parametrize("name", [*MIT_VARIANTS, "resnet101"])
def test_every_backbone_head_pair_gives_logits_and_features(name, head):
    backbone, features = backbone_and_features(name)
    cfg = ModelConfig(backbone=name, head=head, num_classes=7, embed_dim=32, fusion_channels=24)
    decode_head = create_head(cfg, backbone.channels, backbone.strides).eval()
    with torch.no_grad():
        logits, fused = decode_head.forward_with_features(features)
    stride = decode_head.output_stride
    side = SIZE // stride
    assert logits.shape == (1, 7, side, side)
    assert fused.shape == (1, decode_head.fused_channels, side, side)
    assert stride == (backbone.strides[-1] if head == "deeplabv2" else 4)
    assert torch.equal(decode_head(features), logits)


def test_segmenter_end_to_end_odd_size_train_mode():
    torch.manual_seed(0)
    for head in head_names():
        model = create_segmenter(ModelConfig(backbone="mit_tiny", head=head, num_classes=5))
        images = torch.randn(2, 3, 45, 67)
        logits = model(images)
        side = (math.ceil(45 / model.output_stride), math.ceil(67 / model.output_stride))
        assert logits.shape == (2, 5, *side)
        assert [f.shape[1] for f in model.backbone_features(images)] == model.backbone.channels
        assert model.features(images).shape[-2:] == side


def test_daformer_head_matches_daformer_checkpoint_keys():
    info = manifest("daformer_mitb5.json")
    head = create_head(ModelConfig(), MIT_VARIANTS["mit_b5"].hidden_sizes, [4, 8, 16, 32])
    ours = {f"decode_head.{k}": v for k, v in shapes(head.state_dict()).items()}
    assert list(ours) == info["decode_head_keys"]  # same names, same order
    assert ours == {k: info["keys"][f"model.{k}"] for k in ours}


def test_daformer_head_embed_512_matches_cluda_checkpoint_keys():
    info = manifest("cluda_hrda_mitb5.json")
    prefix = "model.decode_head.head."
    theirs = {k[len(prefix) :]: v for k, v in info["keys"].items() if k.startswith(prefix)}
    cfg = ModelConfig(embed_dim=512)
    head = create_head(cfg, MIT_VARIANTS["mit_b5"].hidden_sizes, [4, 8, 16, 32])
    assert shapes(head.state_dict()) == theirs
    assert list(head.state_dict()) == list(theirs)


def test_mit_b5_encoder_matches_transformers_keys_and_segmentor_size():
    info = manifest("hf_segformer_mitb5_encoder.json")
    with torch.device("meta"):
        model = create_segmenter(ModelConfig(backbone="mit_b5"))
    encoder_keys = shapes(model.backbone.segformer.state_dict())
    assert len(encoder_keys) == info["key_count"] == 1156
    assert encoder_keys == info["keys"]
    assert list(encoder_keys) == list(info["keys"])
    # Same number of weights as the authors' DAFormer segmentor (their kv = our k + v).
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest("daformer_mitb5.json")["segmentor_param_count"]


# SegFormer paper, Table 1 (encoder parameters, millions).
PUBLISHED_ENCODER_PARAMS_M = {
    "mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4,
}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLISHED_ENCODER_PARAMS_M))
def test_mit_variant_sizes_match_the_paper(name):
    with torch.device("meta"):
        encoder = mit_encoder(name)
    n_params = sum(p.numel() for p in encoder.parameters()) / 1e6
    assert n_params == pytest.approx(PUBLISHED_ENCODER_PARAMS_M[name], abs=0.15)


def test_layer_norm_eps_and_drop_path_reach_the_blocks():
    cfg = ModelConfig(backbone="mit_tiny", layer_norm_eps=1e-3, drop_path_rate=0.3)
    segformer = create_segmenter(cfg).backbone.segformer
    for stage in segformer.stages:
        assert stage.layer_norm.eps == 1e-3
        # As in mmseg's MiT: patch-embedding and key/value-reduction norms keep torch's 1e-5.
        assert stage.patch_embeddings.layer_norm.eps == 1e-5
        for block in stage.blocks:
            assert block.layernorm_before.eps == block.layernorm_after.eps == 1e-3
            reduction = getattr(block.attention, "sequence_reduction", None)  # absent if ratio 1
            if reduction is not None:
                assert reduction.layer_norm.eps == 1e-5
    # Stochastic depth grows linearly over the 4 blocks to drop_path_rate.
    last = segformer.stages[-1].blocks[-1].drop_path
    assert last.drop_prob == pytest.approx(0.3)
    # The eps is used: outputs move when it changes.
    torch.manual_seed(0)
    images = torch.randn(1, 3, 32, 32)
    segformer.eval()
    before = segformer(images).last_hidden_state
    for stage in segformer.stages:
        stage.layer_norm.eps = 1e-5
    assert not torch.allclose(before, segformer(images).last_hidden_state)


def test_mit_rejects_images_below_its_minimum_size():
    model = create_segmenter(ModelConfig(backbone="mit_tiny"))
    assert model.backbone.min_input_size == 29  # ceil(29 / 4) = 8 = the stage-1 reduction
    model.eval()(torch.zeros(1, 3, 29, 40))
    with pytest.raises(ValueError, match="at least 29x29"):
        model(torch.zeros(1, 3, 28, 40))


def test_resnet101_deeplabv2_layout():
    encoder = resnet101_encoder()
    assert encoder.channels == [256, 512, 1024, 2048]
    assert encoder.layer4[0].conv2.dilation == (2, 2)  # first block keeps layer3's rate
    assert encoder.layer4[1].conv2.dilation == (4, 4)
    assert encoder.layer3[1].conv2.dilation == (2, 2)
    keys = set(encoder.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer3.22.conv3.weight"} <= keys  # mmseg names
    assert not any(k.startswith("fc.") for k in keys)


def test_deeplabv2_logits_are_the_sum_of_dilated_convs():
    torch.manual_seed(0)
    head = DeepLabV2Head([8, 16], [8, 8], num_classes=3, dilations=(1, 2))
    features = [torch.randn(1, 8, 5, 5), torch.randn(1, 16, 6, 7)]
    logits, fused = head.forward_with_features(features)
    one, two = head.aspp_modules
    expected = F.conv2d(features[1], one.conv.weight, one.conv.bias) + F.conv2d(
        features[1], two.conv.weight, two.conv.bias, padding=2, dilation=2
    )
    assert one.conv.kernel_size == (1, 1) and two.conv.kernel_size == (3, 3)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert fused is features[1]


def test_daformer_fusion_branches_follow_the_dilations():
    head = DAFormerHead([4, 8], [4, 8], 2, embed_dim=6, fusion_channels=5, dilations=(1, 3, 6))
    plain, *separable = head.fuse_layer.aspp_modules
    assert plain.conv.kernel_size == (1, 1) and plain.conv.bias is None
    for module, rate in zip(separable, (3, 6), strict=True):
        assert module.depthwise_conv.conv.dilation == (rate, rate)
        assert module.depthwise_conv.conv.groups == 12  # 2 levels x embed 6
    assert head.fuse_layer.bottleneck.conv.in_channels == 15
    torch.manual_seed(0)
    logits, fused = head.eval().forward_with_features(
        [torch.randn(2, 4, 9, 7), torch.randn(2, 8, 5, 4)]
    )
    assert logits.shape == (2, 2, 9, 7) and fused.shape == (2, 5, 9, 7)
    assert fused.min() >= 0  # post-ReLU, as CLUDA's contrastive features


def test_gradient_flows_through_forward_with_features():
    torch.manual_seed(0)
    model = create_segmenter(ModelConfig(backbone="mit_tiny", num_classes=4))
    logits, fused = model.forward_with_features(torch.randn(2, 3, 32, 48))
    fused.mean().backward(retain_graph=True)  # the contrastive loss alone
    backbone_grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in backbone_grads)
    assert any(g.abs().sum() > 0 for g in backbone_grads)
    assert model.decode_head.conv_seg.weight.grad is None  # the classifier is after the features
    logits.sum().backward()
    assert model.decode_head.conv_seg.weight.grad.abs().sum() > 0
