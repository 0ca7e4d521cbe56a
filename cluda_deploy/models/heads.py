"""Decode heads: DAFormer (context-aware fusion), SegFormer (MLP) and DeepLabV2 (ASPP classifier).

Every head takes the backbone's feature list and returns logits at its ``output_stride``;
``forward_with_features`` also returns the map the classifier reads (``fused_channels`` wide),
which the CLUDA contrastive loss uses. Submodule names mirror mmseg (DAFormer/HRDA/CLUDA repos,
mmcv 1.3.7 ``ConvModule`` naming) so released state dicts load 1:1 under ``decode_head.``:

* DAFormerHead: ``conv_seg``, ``embed_layers.{i}.proj``, ``fuse_layer.aspp_modules.0.{conv,bn}``,
  ``fuse_layer.aspp_modules.{j}.{depthwise_conv,pointwise_conv}.{conv,bn}``,
  ``fuse_layer.bottleneck.{conv,bn}`` (same key order as the checkpoints).
* SegFormerHead: the DAFormer repo's ``segformer_head.py`` names ``linear_c.{i}.proj``,
  ``linear_fuse.{conv,bn}``, ``linear_pred``. (mmseg's version also stores an unused
  ``conv_seg`` from its base class; an importer drops it.)
* DeepLabV2Head: ``aspp_modules.{j}.conv`` (mmseg ``DLV2Head``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# DeepLabV2's ASPP classifier rates (Chen et al. 2017, "ASPP-L"; mmseg DLV2Head default).
DEEPLABV2_DILATIONS = (6, 12, 18, 24)
# mmseg BaseDecodeHead.init_weights: the classifier starts near zero.
CLASSIFIER_INIT_STD = 0.01


class ConvModule(nn.Module):
    """mmcv ``ConvModule``: conv -> BatchNorm -> ReLU, with mmcv's names ``conv``/``bn``.

    The conv has no bias when a BatchNorm follows (mmcv ``bias='auto'``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        norm: bool = True,
        act: bool = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, dilation=dilation,
            groups=groups, bias=not norm,
        )  # fmt: skip
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.activate = nn.ReLU(inplace=True) if act else None
        # mmcv ConvModule.init_weights: kaiming normal (fan_out, relu), zero bias, BN = identity.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv ``DepthwiseSeparableConvModule``: dilated depthwise 3x3 ConvModule, then pointwise 1x1."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__()
        self.depthwise_conv = ConvModule(
            in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels
        )
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class SepASPPFusion(nn.Module):
    """DAFormer's context-aware fusion (``ASPPWrapper`` with ``sep=True, pool=False``).

    ``x: (B, C_in, h, w) -> (B, channels, h, w)``: one branch per dilation (1 -> 1x1 ConvModule,
    d > 1 -> depthwise-separable 3x3 with dilation d), concatenated in order, then a 3x3
    ConvModule bottleneck. The output is post-ReLU (non-negative).
    """

    def __init__(self, in_channels: int, channels: int, dilations: Sequence[int]):
        super().__init__()
        self.aspp_modules = nn.ModuleList(
            ConvModule(in_channels, channels, 1)
            if d == 1
            else DepthwiseSeparableConvModule(in_channels, channels, d)
            for d in dilations
        )
        self.bottleneck = ConvModule(len(dilations) * channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp_modules], dim=1))


class TokenEmbedding(nn.Module):
    """mmseg ``MLP``: a Linear applied to every pixel. ``(B, C, h, w) -> (B, E, h, w)``."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(in_channels, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        tokens = self.proj(x.flatten(2).transpose(1, 2))  # (B, h*w, E)
        return tokens.transpose(1, 2).reshape(b, -1, h, w)


def embed_and_concat(features: Sequence[Tensor], embed_layers: nn.ModuleList) -> Tensor:
    """Embed each level, resize it (bilinear, align_corners=False) to level 0's size, concat.

    ``features[i]: (B, C_i, h_i, w_i) -> (B, len(features) * E, h_0, w_0)``, levels in order.
    """
    size = features[0].shape[-2:]
    embedded = []
    for x, embed in zip(features, embed_layers, strict=True):
        x = embed(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        embedded.append(x)
    return torch.cat(embedded, dim=1)


class DecodeHead(nn.Module):
    """Shared interface: logits of ``num_classes`` at ``output_stride`` from a map of
    ``fused_channels``."""

    def __init__(self, num_classes: int, fused_channels: int, output_stride: int):
        super().__init__()
        self.num_classes = num_classes
        self.fused_channels = fused_channels
        self.output_stride = output_stride

    def forward_with_features(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """``features`` from the backbone -> logits ``(B, num_classes, H / os, W / os)``."""
        return self.forward_with_features(features)[0]


def _init_classifier(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.normal_(conv.weight, std=CLASSIFIER_INIT_STD)
    nn.init.zeros_(conv.bias)
    return conv


class DAFormerHead(DecodeHead):
    """DAFormer decoder (Hoyer et al. 2022, Sec. 3.2; ``daformer_sepaspp_mitb5.py``).

    Per level a Linear ``C_i -> embed_dim`` on tokens, bilinear resize to the stride of level 0,
    concat, :class:`SepASPPFusion` to ``fusion_channels``, Dropout2d, 1x1 ``conv_seg``.
    ``forward_with_features -> (logits (B, K, h_0, w_0), fused (B, fusion_channels, h_0, w_0))``;
    ``fused`` is the bottleneck output before dropout, what CLUDA's ``return_fused`` returns.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = 256,
        fusion_channels: int = 256,
        dilations: Sequence[int] = (1, 6, 12, 18),
        dropout: float = 0.1,
    ):
        super().__init__(num_classes, fusion_channels, output_stride=in_strides[0])
        # Created first so that state_dict() lists the keys in the checkpoints' order.
        self.conv_seg = _init_classifier(nn.Conv2d(fusion_channels, num_classes, 1))
        self.dropout = nn.Dropout2d(dropout)
        self.embed_layers = nn.ModuleList(TokenEmbedding(c, embed_dim) for c in in_channels)
        self.fuse_layer = SepASPPFusion(len(in_channels) * embed_dim, fusion_channels, dilations)

    def forward_with_features(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        fused = self.fuse_layer(embed_and_concat(features, self.embed_layers))
        return self.conv_seg(self.dropout(fused)), fused


class SegFormerHead(DecodeHead):
    """SegFormer's all-MLP decoder (Xie et al. 2021; DAFormer repo ``segformer_head.py``).

    Per level a Linear ``C_i -> embed_dim``, resize to level 0, concat (levels 0..3, the DAFormer
    repo's order), 1x1 ConvModule to ``fusion_channels`` (mmseg: equal to ``embed_dim``),
    Dropout2d, 1x1 ``linear_pred``. ``fused`` = the ``linear_fuse`` output.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        *,
        embed_dim: int = 256,
        fusion_channels: int = 256,
        dropout: float = 0.1,
    ):
        super().__init__(num_classes, fusion_channels, output_stride=in_strides[0])
        self.dropout = nn.Dropout2d(dropout)
        self.linear_c = nn.ModuleList(TokenEmbedding(c, embed_dim) for c in in_channels)
        self.linear_fuse = ConvModule(len(in_channels) * embed_dim, fusion_channels, 1)
        self.linear_pred = _init_classifier(nn.Conv2d(fusion_channels, num_classes, 1))

    def forward_with_features(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        fused = self.linear_fuse(embed_and_concat(features, self.linear_c))
        return self.linear_pred(self.dropout(fused)), fused


class DeepLabV2Head(DecodeHead):
    """DeepLabV2 ASPP classifier (mmseg ``DLV2Head``) on the last backbone map.

    Logits = sum over ``dilations`` of a 3x3 conv (with bias) of rate d to ``num_classes``; no
    BatchNorm, no activation, no dropout. ``forward_with_features -> (logits (B, K, h, w),
    features[-1] (B, C_last, h, w))``: DeepLabV2 has no decoder, so the map the classifier reads is
    the last backbone map (2048 channels for ResNet-101, stride 8).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        num_classes: int,
        *,
        dilations: Sequence[int] = DEEPLABV2_DILATIONS,
    ):
        super().__init__(num_classes, in_channels[-1], output_stride=in_strides[-1])
        # mmseg ASPPModule: a rate-1 branch is 1x1, every other branch 3x3 with padding = rate.
        self.aspp_modules = nn.ModuleList(
            ConvModule(
                in_channels[-1],
                num_classes,
                1 if d == 1 else 3,
                padding=0 if d == 1 else d,
                dilation=d,
                norm=False,
                act=False,
            )
            for d in dilations
        )

    def forward_with_features(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        x = features[-1]
        logits = self.aspp_modules[0](x)
        for branch in self.aspp_modules[1:]:
            logits = logits + branch(x)
        return logits, x
