"""ResNet-101 with DeepLabV2 dilation (output stride 8) from torchvision.

Module names are torchvision's (``conv1``, ``bn1``, ``layer1..4``), which are also mmseg's ResNet
(v1) names, so a Segmenter key is ``backbone.layer3.5.conv2.weight`` on both sides. The stem and the
four stages are held directly; torchvision's ``avgpool`` and ``fc`` are dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

# DeepLabV2: layer3 and layer4 keep stride 8 and dilate by 2 and 4 instead.
DEEPLABV2_REPLACE_STRIDE_WITH_DILATION = (False, True, True)
# The original (2016) torchvision ImageNet weights, the ones DeepLabV2-era UDA work started from.
IMAGENET_WEIGHTS = torchvision.models.ResNet101_Weights.IMAGENET1K_V1


class ResNetEncoder(nn.Module):
    """ResNet stages as a backbone: ``forward(images (B, 3, H, W)) -> [layer1..layer4 maps]``.

    Map i has ``channels[i]`` channels and size ``ceil(H / strides[i])`` (up to the stem's
    rounding); with DeepLabV2 dilation ``strides`` is [4, 8, 8, 8].
    """

    def __init__(
        self, resnet: torchvision.models.ResNet, replace_stride_with_dilation: tuple[bool, ...]
    ):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
        )  # fmt: skip
        self.channels: list[int] = [layer[-1].conv3.out_channels for layer in self.layers]
        self.strides: list[int] = [4]
        for dilated in replace_stride_with_dilation:
            self.strides.append(self.strides[-1] * (1 if dilated else 2))
        self.min_input_size = 1

    @property
    def layers(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


def resnet101_encoder(pretrained: str | None = None) -> ResNetEncoder:
    """ResNet-101, DeepLabV2 dilation; ``pretrained``: None, ``"imagenet"`` or a ``.pth`` path.

    ``"imagenet"`` loads torchvision's IMAGENET1K_V1 weights (from the torch hub cache, downloading
    them if absent); a path loads a torchvision ResNet-101 state_dict (``fc.*`` ignored).
    """
    resnet = torchvision.models.resnet101(
        weights=None, replace_stride_with_dilation=list(DEEPLABV2_REPLACE_STRIDE_WITH_DILATION)
    )
    if pretrained is not None:
        state_dict = _load_resnet_state_dict(pretrained)
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        missing, unexpected = resnet.load_state_dict(state_dict, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"ResNet-101 weights {pretrained!r} do not fit: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
            )
    return ResNetEncoder(resnet, DEEPLABV2_REPLACE_STRIDE_WITH_DILATION)


def imagenet_cache_path() -> Path:
    """Where torch hub keeps (and looks for) the ImageNet ResNet-101 file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS.url).name


def _load_resnet_state_dict(pretrained: str) -> dict[str, Tensor]:
    if pretrained == "imagenet":
        try:
            return torch.hub.load_state_dict_from_url(
                IMAGENET_WEIGHTS.url, map_location="cpu", progress=False, check_hash=True
            )
        except OSError as exc:  # URLError, socket errors and file errors are all OSError
            raise OSError(
                f"could not download torchvision's ResNet-101 ImageNet weights ({exc}); on a "
                f"connected machine fetch {IMAGENET_WEIGHTS.url} and put it at "
                f"{imagenet_cache_path()} (the torch hub cache, moved with TORCH_HOME), or set "
                f"model.pretrained to the .pth path"
            ) from exc
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet-101 weights {pretrained!r} not found; set model.pretrained to 'imagenet' "
            f"(torchvision's weights) or to the path of a torchvision resnet101 .pth file"
        )
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return state_dict.get("state_dict", state_dict)
