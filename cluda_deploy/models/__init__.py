"""Segmentation models: one factory, :func:`create_segmenter`, over registries of backbones and heads.

Every backbone has the same interface (timm ``forward_features`` style):
``forward(images (B, 3, H, W)) -> list[Tensor]`` of multi-scale maps, with ``channels: list[int]``
and ``strides: list[int]`` describing them, so heads never hard-code channel counts.
Every head takes that list and returns logits; see ``heads.py``.

    >>> from cluda_deploy.config import ModelConfig
    >>> model = create_segmenter(ModelConfig(backbone="mit_tiny", embed_dim=64, fusion_channels=64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from cluda_deploy.config import ModelConfig
from cluda_deploy.models.heads import (
    DEEPLABV2_DILATIONS,
    DAFormerHead,
    DecodeHead,
    DeepLabV2Head,
    SegFormerHead,
)
from cluda_deploy.models.hrda import HRDASegmenter, hrda_segmenter
from cluda_deploy.models.mit import MIT_VARIANTS, MiTEncoder, mit_encoder
from cluda_deploy.models.resnet import ResNetEncoder, resnet101_encoder
from cluda_deploy.models.segmenter import Segmenter, slide_windows

BackboneFn = Callable[[ModelConfig], nn.Module]
HeadFn = Callable[[ModelConfig, Sequence[int], Sequence[int]], DecodeHead]

BACKBONES: dict[str, BackboneFn] = {}
HEADS: dict[str, HeadFn] = {}


def register_backbone(name: str) -> Callable[[BackboneFn], BackboneFn]:
    def wrap(fn: BackboneFn) -> BackboneFn:
        BACKBONES[name] = fn
        return fn

    return wrap


def register_head(name: str) -> Callable[[HeadFn], HeadFn]:
    def wrap(fn: HeadFn) -> HeadFn:
        HEADS[name] = fn
        return fn

    return wrap


def _register_mit(name: str) -> None:
    @register_backbone(name)
    def build(cfg: ModelConfig) -> MiTEncoder:
        return mit_encoder(
            name,
            drop_path_rate=cfg.drop_path_rate,
            layer_norm_eps=cfg.layer_norm_eps,
            pretrained=cfg.pretrained,
        )


for _name in MIT_VARIANTS:
    _register_mit(_name)


@register_backbone("resnet101")
def _resnet101(cfg: ModelConfig) -> ResNetEncoder:
    return resnet101_encoder(pretrained=cfg.pretrained)


@register_head("daformer")
def _daformer(cfg: ModelConfig, channels: Sequence[int], strides: Sequence[int]) -> DAFormerHead:
    return DAFormerHead(
        channels, strides, cfg.num_classes, embed_dim=cfg.embed_dim,
        fusion_channels=cfg.fusion_channels, dilations=cfg.aspp_dilations, dropout=cfg.dropout,
    )  # fmt: skip


@register_head("segformer")
def _segformer(cfg: ModelConfig, channels: Sequence[int], strides: Sequence[int]) -> SegFormerHead:
    return SegFormerHead(
        channels, strides, cfg.num_classes, embed_dim=cfg.embed_dim,
        fusion_channels=cfg.fusion_channels, dropout=cfg.dropout,
    )  # fmt: skip


@register_head("deeplabv2")
def _deeplabv2(cfg: ModelConfig, channels: Sequence[int], strides: Sequence[int]) -> DeepLabV2Head:
    # cfg.aspp_dilations are DAFormer's fusion rates; DeepLabV2's classifier has its own.
    return DeepLabV2Head(channels, strides, cfg.num_classes, dilations=DEEPLABV2_DILATIONS)


def backbone_names() -> list[str]:
    return list(BACKBONES)


def head_names() -> list[str]:
    return list(HEADS)


def _lookup(registry: dict, kind: str, name: str):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(registry)}")
    return registry[name]


def create_backbone(model_cfg: ModelConfig) -> nn.Module:
    return _lookup(BACKBONES, "backbone", model_cfg.backbone)(model_cfg)


def create_head(
    model_cfg: ModelConfig, channels: Sequence[int], strides: Sequence[int]
) -> DecodeHead:
    return _lookup(HEADS, "head", model_cfg.head)(model_cfg, channels, strides)


def create_segmenter(model_cfg: ModelConfig) -> Segmenter:
    """Build the Segmenter described by ``model_cfg`` (random init unless ``pretrained`` is set);
    with ``model_cfg.hrda.enabled`` an :class:`HRDASegmenter` (DAFormer head only)."""
    build_head = _lookup(HEADS, "head", model_cfg.head)  # fail before a slow backbone build
    if model_cfg.hrda.enabled and model_cfg.head != "daformer":
        raise ValueError(
            f"HRDA (model.hrda.enabled) is implemented for head 'daformer', not "
            f"{model_cfg.head!r}; set model.head=daformer or model.hrda.enabled=false"
        )
    backbone = create_backbone(model_cfg)
    head = build_head(model_cfg, backbone.channels, backbone.strides)
    if model_cfg.hrda.enabled:
        return hrda_segmenter(
            backbone, head, model_cfg.num_classes, model_cfg.hrda, dropout=model_cfg.dropout
        )
    return Segmenter(backbone, head)


__all__ = [
    "BACKBONES",
    "HEADS",
    "DAFormerHead",
    "DeepLabV2Head",
    "HRDASegmenter",
    "MiTEncoder",
    "ResNetEncoder",
    "SegFormerHead",
    "Segmenter",
    "backbone_names",
    "create_backbone",
    "create_head",
    "create_segmenter",
    "head_names",
    "mit_encoder",
    "register_backbone",
    "register_head",
    "resnet101_encoder",
    "slide_windows",
]
