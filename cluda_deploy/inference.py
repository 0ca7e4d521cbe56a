"""Segment full images with a segmenter: the test-time protocol shared by evaluate and predict.

Per image: keep-ratio resize to ``EvalConfig.scale`` (mmcv ``imrescale`` rule), ImageNet
normalisation, whole-image or sliding-window inference, logits bilinearly resized back to the
original size (research/cluda.md section 2.10).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cluda_deploy.config import EvalConfig
from cluda_deploy.data.transforms import rescale_size


def to_input_tensor(
    images: np.ndarray | torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    size: tuple[int, int] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """uint8 (H, W, 3) or (B, H, W, 3) RGB -> normalised float (B, 3, h, w) on ``device``."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # decoded images can be read-only views; torch wants to own them
    x = torch.as_tensor(images).to(device)
    if x.ndim == 3:
        x = x.unsqueeze(0)
    x = x.permute(0, 3, 1, 2).float()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    mean_t = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


@torch.no_grad()
def segment_logits(
    model: nn.Module,
    image: np.ndarray,
    eval_cfg: EvalConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """One uint8 RGB image (H, W, 3) -> float logits (1, C, H, W) at the image's own size."""
    height, width = image.shape[:2]
    x = to_input_tensor(image, mean, std, rescale_size(height, width, eval_cfg.scale), device)
    return model.predict(
        x,
        mode=eval_cfg.mode,
        crop_size=tuple(eval_cfg.crop_size),
        stride=tuple(eval_cfg.stride),
        out_size=(height, width),
    ).float()


def segment_image(
    model: nn.Module,
    image: np.ndarray,
    eval_cfg: EvalConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB (H, W, 3) -> (train ids (H, W) uint8, confidence (H, W) float32)."""
    probs = segment_logits(model, image, eval_cfg, mean, std, device).softmax(dim=1)[0]
    confidence, label = probs.max(dim=0)
    return label.to(torch.uint8).cpu().numpy(), confidence.cpu().numpy()


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device
