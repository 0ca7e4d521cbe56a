"""CONFETI's auxiliary heads on the segmenter's last backbone map (research/confeti.md section 3).

For DeepLabV2 / ResNet-101 that map is layer4: 2048 channels at stride 8, which
``Segmenter.forward_with_features`` also returns as its features.

* :class:`ProjectionHead` (``ContrastiveHead.conv_proj``): 1x1 conv to 512 channels, no bias.
  Its output, L2-normalised per pixel, is the space of the prototypes and of the pixel contrast.
* :class:`CAMHead` (``CAMHead.conv_cam``): 1x1 conv to one map per class, no bias; the class
  activation map is ``ReLU(conv)``, the image-level score ``GAP(conv)`` (before the ReLU),
  trained with :func:`cam_loss`. Its EMA copy weights the pixels of the prototype estimate.
* ``reg_proj`` (:func:`affine_projection`): a learnable 1x1 conv with bias on the stylised
  branch of the semantic-consistency loss only.

The reference leaves all three at PyTorch's default initialisation (mmseg only initialises the
``conv_seg`` they delete).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cluda_deploy.labels import IGNORE_INDEX


class ProjectionHead(nn.Module):
    """``features (B, C_in, h, w) -> projected (B, dim, h, w)``, not normalised."""

    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=1, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        return self.conv_proj(features)


class CAMHead(nn.Module):
    """``features (B, C_in, h, w) -> (cam (B, K, h, w) >= 0, scores (B, K) logits)``."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.conv_cam = nn.Conv2d(in_channels, num_classes, kernel_size=1, bias=False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.conv_cam(features)
        return F.relu(maps), maps.mean(dim=(2, 3))


def affine_projection(dim: int) -> nn.Conv2d:
    """CONFETI's ``reg_proj``: ``nn.Conv2d(dim, dim, 1)`` with bias, on projected features."""
    return nn.Conv2d(dim, dim, kernel_size=1)


def image_level_labels(
    labels: Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """``labels (B, H, W)`` -> multi-hot ``(B, K)`` float: 1 for each class present in the image
    (``CAMHead._get_cls_label``; ``ignore_index`` is not a class)."""
    valid = labels != ignore_index
    hot = torch.zeros(labels.shape[0], num_classes, device=labels.device)
    index = labels.clamp(0, num_classes - 1).flatten(1)
    hot.scatter_add_(1, index, valid.flatten(1).float())  # counts; void pixels add 0
    return hot.clamp(max=1.0)


def cam_loss(scores: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Image-level multi-label BCE (``BCEWithLogitsLoss``, mean over B x K) of the CAM scores
    ``(B, K)`` against the classes present in ``labels (B, H, W)``."""
    target = image_level_labels(labels, scores.shape[1], ignore_index)
    return F.binary_cross_entropy_with_logits(scores.float(), target)


class ConfetiHeads(nn.Module):
    """The trainable heads of one student: ``cam_head``, ``projection_head`` and ``reg_proj``.

    Parameter names contain ``head`` or ``reg_proj``: the reference trains all three at 10x the
    backbone's learning rate (mmseg ``custom_keys`` 'head' and 'reg_proj', lr_mult 10).
    """

    def __init__(self, in_channels: int, num_classes: int, dim: int):
        super().__init__()
        self.cam_head = CAMHead(in_channels, num_classes)
        self.projection_head = ProjectionHead(in_channels, dim)
        self.reg_proj = affine_projection(dim)

    def ema_pair(self) -> nn.ModuleDict:
        """The heads that have an EMA copy (CAM and projection), in a fixed order."""
        return nn.ModuleDict({"cam_head": self.cam_head, "projection_head": self.projection_head})
