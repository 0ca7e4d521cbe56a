"""CUT's networks (Park et al., ECCV 2020): ResNet generator, PatchGAN discriminator, PatchNCE MLP.

The anti-aliased versions that CONFETI runs unmodified (research/confeti.md section 3, upstream
taesungp/contrastive-unpaired-translation ``models/networks.py``):

* :class:`ResnetGenerator` (``resnet_9blocks``): reflect-pad 7x7 conv, two stride-2 stages
  (3x3 conv then a blur-pool :class:`BlurDownsample`), ``n_blocks`` residual blocks at
  ``4 * ngf`` channels, two upsampling stages (:class:`BlurUpsample` then a 3x3 conv), a 7x7 conv
  and tanh; instance norm without affine parameters, so every conv has a bias. Layer ``i`` of
  ``generator.model`` is what CUT's ``nce_layers`` index (0, 4, 8, 12, 16).
* :class:`PatchGANDiscriminator` (``basic``, 70x70 with ``n_layers=3``): 4x4 convs with LeakyReLU
  0.2, a blur-pool after each of the first ``n_layers`` stages, instance norm from the second.
* :class:`PatchSampleMLP` (``mlp_sample``): per NCE layer, ``Linear(c, nc) - ReLU - Linear(nc,
  nc)`` on sampled locations, then L2 normalisation.

Weights are initialised as CUT does (``init_type='xavier'``, ``init_gain=0.02``, zero biases);
the blur filters are fixed buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# CUT's normalisation of the sampled patch features: x / (||x||_2 + eps).
PATCH_L2_EPS = 1e-7
# Binomial filter taps by size (CUT ``get_filter``): rows of Pascal's triangle.
BINOMIAL_TAPS = {1: [1.0], 2: [1.0, 1.0], 3: [1.0, 2.0, 1.0], 4: [1.0, 3.0, 3.0, 1.0]}


def blur_filter(size: int) -> Tensor:
    """``(size, size)`` normalised binomial filter: outer product of a Pascal row, sum 1."""
    if size not in BINOMIAL_TAPS:
        raise ValueError(
            f"blur filter size {size} not supported; use one of {sorted(BINOMIAL_TAPS)}"
        )
    taps = torch.tensor(BINOMIAL_TAPS[size])
    filt = taps[:, None] * taps[None, :]
    return filt / filt.sum()


class BlurDownsample(nn.Module):
    """Anti-aliased stride-2 downsampling (CUT ``Downsample``): reflect pad 1, depthwise 3x3
    binomial blur with stride 2. ``(B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))``."""

    def __init__(self, channels: int, filter_size: int = 3):
        super().__init__()
        self.pad = nn.ReflectionPad2d(((filter_size - 1) // 2, filter_size // 2) * 2)
        self.register_buffer("filt", blur_filter(filter_size)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.pad(x), self.filt, stride=2, groups=x.shape[1])


class BlurUpsample(nn.Module):
    """Anti-aliased 2x upsampling (CUT ``Upsample``): replicate pad 1, depthwise transposed conv
    with a 4x4 binomial filter scaled by 4, cropped. ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int, filter_size: int = 4):
        super().__init__()
        self.filter_size = filter_size
        self.pad = nn.ReplicationPad2d(1)
        self.register_buffer(
            "filt", (blur_filter(filter_size) * 4)[None, None].repeat(channels, 1, 1, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        padding = 1 + (self.filter_size - 1) // 2
        out = F.conv_transpose2d(
            self.pad(x), self.filt, stride=2, padding=padding, groups=x.shape[1]
        )[:, :, 1:, 1:]
        return out if self.filter_size % 2 == 1 else out[:, :, :-1, :-1]


def _instance_norm(channels: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + [reflect pad, 3x3 conv, IN, ReLU, reflect pad, 3x3 conv, IN](x)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _instance_norm(channels),
            nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _instance_norm(channels),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CUT's anti-aliased ResNet generator: ``(B, 3, H, W)`` in [-1, 1] -> same shape in [-1, 1].

    H and W must be multiples of 4 for the output to have the input's size.
    """

    def __init__(self, ngf: int = 64, n_blocks: int = 9, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(channels, ngf, 7), _instance_norm(ngf), nn.ReLU(True),
        ]  # fmt: skip
        width = ngf
        for _ in range(2):
            layers += [
                nn.Conv2d(width, 2 * width, 3, padding=1), _instance_norm(2 * width),
                nn.ReLU(True), BlurDownsample(2 * width),
            ]  # fmt: skip
            width *= 2
        layers += [ResnetBlock(width) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                BlurUpsample(width), nn.Conv2d(width, width // 2, 3, padding=1),
                _instance_norm(width // 2), nn.ReLU(True),
            ]  # fmt: skip
            width //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(width, channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def layer_channels(self, layer_ids: Sequence[int]) -> list[int]:
        """Channels of the output of each ``self.model[i]`` for i in ``layer_ids``."""
        self.check_layers(layer_ids)
        channels, width = [], self.model[1].in_channels
        for index, layer in enumerate(self.model):
            if isinstance(layer, nn.Conv2d):
                width = layer.out_channels
            if index in layer_ids:
                channels.append(width)
        return channels

    def check_layers(self, layer_ids: Sequence[int]) -> None:
        bad = [i for i in layer_ids if not 0 <= i < len(self.model)]
        if bad or list(layer_ids) != sorted(set(layer_ids)):
            raise ValueError(
                f"NCE layers {list(layer_ids)} must be increasing indices below {len(self.model)}"
                f" (this generator's layer count); set confeti.style.nce_layers accordingly"
            )

    def encode(self, images: Tensor, layer_ids: Sequence[int]) -> list[Tensor]:
        """The outputs of ``self.model[i]`` for i in ``layer_ids`` (CUT ``encode_only=True``):
        ``[(B, c_i, h_i, w_i)]``; stops after the last requested layer."""
        self.check_layers(layer_ids)
        feats, x = [], images
        for index, layer in enumerate(self.model):
            x = layer(x)
            if index in layer_ids:
                feats.append(x)
                if index == layer_ids[-1]:
                    break
        return feats


class PatchGANDiscriminator(nn.Module):
    """CUT's anti-aliased PatchGAN: ``(B, 3, H, W) -> (B, 1, h, w)`` real/fake scores per patch.

    Needs H, W >= 32 with ``n_layers=3`` (every 4x4 conv trims one pixel).
    """

    def __init__(self, ndf: int = 64, n_layers: int = 3, channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(channels, ndf, 4, padding=1), nn.LeakyReLU(0.2, True), BlurDownsample(ndf),
        ]  # fmt: skip
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, padding=1), _instance_norm(ndf * mult),
                nn.LeakyReLU(0.2, True), BlurDownsample(ndf * mult),
            ]  # fmt: skip
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, 4, padding=1), _instance_norm(ndf * mult),
            nn.LeakyReLU(0.2, True), nn.Conv2d(ndf * mult, 1, 4, padding=1),
        ]  # fmt: skip
        self.model = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)


class PatchSampleMLP(nn.Module):
    """CUT ``PatchSampleF`` with ``use_mlp=True``: one 2-layer MLP per NCE layer.

    Built eagerly from the layer channels (CUT builds it lazily on the first batch), so its
    parameters exist for the optimizer and the checkpoint from the start.
    """

    def __init__(self, in_channels: Sequence[int], nc: int = 256):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(c, nc), nn.ReLU(), nn.Linear(nc, nc)) for c in in_channels
        )

    def forward(
        self,
        feats: Sequence[Tensor],
        num_patches: int,
        patch_ids: Sequence[Tensor] | None = None,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """``feats [(B, c_i, h_i, w_i)]`` -> ``([(B * P_i, nc)] L2-normalised, [ids (P_i,)])``.

        The same ``P_i = min(num_patches, h_i * w_i)`` locations (a random permutation of the
        flattened map, or ``patch_ids``) are taken from every image; rows are image-major.
        """
        if len(feats) != len(self.mlps):
            raise ValueError(f"got {len(feats)} feature maps for {len(self.mlps)} NCE layers")
        out, ids = [], []
        for index, (feat, mlp) in enumerate(zip(feats, self.mlps, strict=True)):
            rows = feat.permute(0, 2, 3, 1).flatten(1, 2)  # (B, h*w, c)
            if patch_ids is None:
                ids_i = torch.randperm(rows.shape[1], device=feat.device)[:num_patches]
            else:
                ids_i = patch_ids[index]
            sample = mlp(rows[:, ids_i].flatten(0, 1))
            out.append(sample / (sample.norm(dim=1, keepdim=True) + PATCH_L2_EPS))
            ids.append(ids_i)
        return out, ids


def init_cut_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """CUT ``init_weights(init_type='xavier')``: every Conv/Linear weight xavier-normal with
    ``gain``, every bias 0 (blur buffers untouched). Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_normal_(m.weight, gain=gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
