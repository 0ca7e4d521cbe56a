"""Strong photometric augmentation of the mixed images, on the device with kornia (research/cluda.md 2.6).

DAFormer ``dacs_transforms.py`` (``color_jitter``, ``gaussian_blur``) with kornia 0.5.8's
``ColorJitter`` semantics, re-implemented on kornia's functional ops so that the installed kornia
version does not change them:

* two coins per step, shared by the batch: colour jitter if ``U > 1 - color_jitter_prob``
  (reference: ``> p`` with p = 0.2), blur if ``U > 1 - blur_prob`` (reference: ``> 0.5``);
* colour jitter per image on the de-normalised [0, 1] image, factors
  ``b, c, s ~ U[1 - s0, 1 + s0]``, ``h ~ U[-s0, s0]`` (s0 = 0.2), applied in a random permutation:
  brightness is *additive* ``clamp(x + (b - 1))``, contrast *multiplicative* ``clamp(x * c)``
  (no mean subtraction), saturation scales S in HSV (clamped), hue adds ``h * 2 pi`` to H;
* Gaussian blur per image of the normalised image, ``sigma ~ U(0.15, 1.15)``, kernel
  ``floor(ceil(0.1 H) - 0.5 + ceil(0.1 H) % 2)`` per axis (51 for 512, 13 for 128), reflect padding.

Random draws come from ``generator`` (a CPU ``torch.Generator``) or the global torch RNG, so a
resumed run repeats them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import kornia
import torch


@dataclass
class JitterFactors:
    """One image's colour-jitter draw: factors and the order of the four ops (0 b, 1 c, 2 s, 3 h)."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_jitter(strength: float, generator: torch.Generator | None = None) -> JitterFactors:
    """kornia 0.5.8 ``ColorJitter(b=s, c=s, s=s, h=s)`` parameters for one image."""
    low = max(0.0, 1.0 - strength)
    return JitterFactors(
        brightness=_uniform(low, 1.0 + strength, generator),
        contrast=_uniform(low, 1.0 + strength, generator),
        saturation=_uniform(low, 1.0 + strength, generator),
        hue=_uniform(-strength, strength, generator),
        order=tuple(torch.randperm(4, generator=generator).tolist()),
    )


def color_jitter(image: torch.Tensor, factors: JitterFactors) -> torch.Tensor:
    """``image (B, 3, H, W)`` RGB in [0, 1] -> jittered, same shape, with kornia 0.5.8 semantics."""
    ops = (
        lambda x: kornia.enhance.adjust_brightness(x, factors.brightness - 1.0),
        lambda x: kornia.enhance.adjust_contrast(x, factors.contrast),
        lambda x: kornia.enhance.adjust_saturation(x, factors.saturation),
        lambda x: kornia.enhance.adjust_hue(x, factors.hue * 2.0 * math.pi),
    )
    for index in factors.order:
        image = ops[index](image)
    return image


def blur_kernel_size(size: int) -> int:
    """DAFormer's blur kernel for an image side of ``size``: odd, about a tenth of it."""
    tenth = math.ceil(0.1 * size)
    return int(math.floor(tenth - 0.5 + tenth % 2))


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image (B, C, H, W)`` blurred with an isotropic Gaussian, DAFormer's kernel size, reflect padding."""
    kernel = (blur_kernel_size(image.shape[-2]), blur_kernel_size(image.shape[-1]))
    return kornia.filters.gaussian_blur2d(image, kernel, (sigma, sigma), border_type="reflect")


def _denormalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (image * std + mean) / 255.0


def _renormalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (image * 255.0 - mean) / std


def strong_augment(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    color_jitter_prob: float,
    color_jitter_strength: float,
    blur_prob: float,
    blur_sigma: tuple[float, float],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DAFormer's strong transform of normalised ``images (B, 3, H, W)``; returns a new tensor.

    ``mean``/``std`` are the 0-255 normalisation statistics.
    """
    jitter = float(torch.rand((), generator=generator)) > 1.0 - color_jitter_prob
    blur = float(torch.rand((), generator=generator)) > 1.0 - blur_prob
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    out = []
    for image in images.split(1):
        if jitter:
            factors = sample_jitter(color_jitter_strength, generator)
            image = _renormalize(color_jitter(_denormalize(image, m, s), factors), m, s)
        if blur:
            image = gaussian_blur(image, _uniform(*blur_sigma, generator))
        out.append(image)
    return torch.cat(out)
