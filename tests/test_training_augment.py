"""Strong augmentation with kornia 0.5.8 colour-jitter semantics and DAFormer's blur (2.6)."""

from __future__ import annotations

import math

import pytest
import torch

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from training.augment import (
    JitterFactors,
    blur_kernel_size,
    color_jitter,
    gaussian_blur,
    sample_jitter,
    strong_augment,
)


def pixel(r, g, b):
    return torch.tensor([r, g, b], dtype=torch.float32).view(1, 3, 1, 1)


def only(op: int, **factors) -> JitterFactors:
    base = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    return JitterFactors(**{**base, **factors}, order=(op,))


def test_brightness_is_additive_and_clamped():
    out = color_jitter(pixel(0.5, 0.95, 0.0), only(0, brightness=1.1))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.6, 1.0, 0.1]))


def test_contrast_is_multiplicative_without_mean():
    out = color_jitter(pixel(0.5, 0.9, 0.2), only(1, contrast=1.2))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.6, 1.0, 0.24]))


def test_saturation_scales_hsv_saturation():
    # (1, 0.5, 0.5): V=1, S=0.5. Saturation x0 -> grey at V; x2 -> S=1 -> (1, 0, 0).
    torch.testing.assert_close(color_jitter(pixel(1, 0.5, 0.5), only(2, saturation=0.0)).flatten(),
                               torch.tensor([1.0, 1.0, 1.0]))  # fmt: skip
    torch.testing.assert_close(color_jitter(pixel(1, 0.5, 0.5), only(2, saturation=2.0)).flatten(),
                               torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # fmt: skip


def test_hue_factor_is_a_fraction_of_a_turn():
    # h = 1/3 turn: red -> green (kornia 0.5.8 adds h * 2 pi to H).
    out = color_jitter(pixel(1, 0, 0), only(3, hue=1 / 3))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)


def test_order_matters_and_is_followed():
    x = pixel(0.5, 0.5, 0.5)
    b_then_c = color_jitter(x, JitterFactors(1.2, 2.0, 1.0, 0.0, order=(0, 1)))  # (0.5+0.2)*2 -> 1
    c_then_b = color_jitter(x, JitterFactors(1.2, 0.5, 1.0, 0.0, order=(1, 0)))  # 0.25+0.2
    torch.testing.assert_close(b_then_c.flatten(), torch.ones(3))
    torch.testing.assert_close(c_then_b.flatten(), torch.full((3,), 0.45))


def test_sampled_factors_are_in_range():
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        f = sample_jitter(0.2, gen)
        assert 0.8 <= f.brightness <= 1.2 and 0.8 <= f.contrast <= 1.2
        assert 0.8 <= f.saturation <= 1.2 and -0.2 <= f.hue <= 0.2
        assert sorted(f.order) == [0, 1, 2, 3]


def test_blur_kernel_sizes():
    # floor(ceil(0.1 H) - 0.5 + ceil(0.1 H) % 2): 512 -> 51, 1024 -> 103, 128 -> 13, 64 -> 7
    assert [blur_kernel_size(s) for s in (512, 1024, 128, 64, 1000)] == [51, 103, 13, 7, 99]


def test_blur_of_an_impulse_is_the_normalised_gaussian():
    image = torch.zeros(1, 1, 30, 30)
    image[0, 0, 15, 15] = 1.0  # kernel 3x3 for 30 px
    sigma = 1.0
    out = gaussian_blur(image, sigma)
    g = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5)])
    g = g / g.sum()
    torch.testing.assert_close(out[0, 0, 14:17, 14:17], torch.outer(g, g))
    assert out.sum().item() == pytest.approx(1.0)


def test_strong_augment_coins_and_identity():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 16, 16)
    kwargs = {"color_jitter_strength": 0.2, "blur_sigma": (0.15, 1.15)}
    same = strong_augment(images, IMAGENET_MEAN, IMAGENET_STD, color_jitter_prob=0.0,
                          blur_prob=0.0, **kwargs)  # fmt: skip
    torch.testing.assert_close(same, images)
    changed = strong_augment(images, IMAGENET_MEAN, IMAGENET_STD, color_jitter_prob=1.0,
                             blur_prob=1.0, **kwargs)  # fmt: skip
    assert changed.shape == images.shape and not torch.allclose(changed, images)
    # repeatable from a generator
    a = strong_augment(images, IMAGENET_MEAN, IMAGENET_STD, color_jitter_prob=1.0, blur_prob=1.0,
                       generator=torch.Generator().manual_seed(5), **kwargs)  # fmt: skip
    b = strong_augment(images, IMAGENET_MEAN, IMAGENET_STD, color_jitter_prob=1.0, blur_prob=1.0,
                       generator=torch.Generator().manual_seed(5), **kwargs)  # fmt: skip
    torch.testing.assert_close(a, b)
