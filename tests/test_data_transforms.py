"""Paired transforms: mmcv keep-ratio rounding, mmseg RandomCrop semantics, flip, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from cluda_deploy.data.transforms import (
    CROP_RETRIES,
    Normalize,
    RandomCrop,
    RandomFlip,
    ResizeKeepRatio,
    rescale_size,
    reseed,
    train_transform,
    val_transform,
)


@pytest.mark.parametrize(
    ("hw", "scale", "expected"),
    [
        (
            (1052, 1914),
            (1280, 720),
            (704, 1280),
        ),  # GTA5 at DAFormer's scale (research/cluda.md 2.1)
        ((1052, 1914), (2560, 1440), (1407, 2560)),  # HRDA
        ((760, 1280), (2560, 1520), (1520, 2560)),  # Synthia, HRDA
        ((1024, 2048), (1024, 512), (512, 1024)),  # Cityscapes
        ((180, 320), (320, 180), (180, 320)),  # demo source: unchanged
        ((101, 200), (100, 50), (50, 99)),  # factor 50/101: 99.0099 -> 99, 50.0 -> 50
        ((3, 5), (10, 2), (2, 3)),  # factor 2/3: int(3.33 + 0.5) = 3, not round-half-even games
    ],
)
def test_rescale_size_matches_mmcv(hw, scale, expected):
    assert rescale_size(*hw, scale) == expected


def test_resize_bilinear_image_nearest_label():
    image = np.zeros((4, 8, 3), np.uint8)
    image[:, 4:] = 200
    label = np.zeros((4, 8), np.uint8)
    label[:, 4:] = 13
    label[0, 0] = 255
    out_img, out_lab = ResizeKeepRatio((16, 8))(image, label)
    assert out_img.shape == (8, 16, 3) and out_lab.shape == (8, 16)
    assert set(np.unique(out_lab).tolist()) <= {0, 13, 255}  # nearest: no new ids
    assert len(np.unique(out_img[..., 0])) > 2  # bilinear: a ramp at the edge


class ScriptedRng:
    """Stands in for numpy's Generator: integers() returns the scripted values in order."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = 0

    def integers(self, low, high):
        self.calls += 1
        value = self.values.pop(0)
        assert low <= value < high
        return value


def _stripe_label():
    """20x100: class 0 on 90 % of the columns, class 1 on columns 90..99."""
    label = np.zeros((20, 100), np.uint8)
    label[:, 90:] = 1
    return label


def test_crop_retries_until_cat_max_ratio_holds():
    label = _stripe_label()
    image = np.stack([np.tile(np.arange(100, dtype=np.uint8), (20, 1))] * 3, axis=-1)
    # (top, left) pairs: three all-class-0 crops, then left=78 -> 8 of 20 columns class 1 (40 %).
    rng = ScriptedRng([0, 0, 0, 10, 0, 40, 0, 78])
    crop = RandomCrop((20, 20), cat_max_ratio=0.75, rng=rng)
    out_img, out_lab = crop(image, label)
    assert rng.calls == 8 and rng.values == []
    assert out_img[0, 0, 0] == 78 and (out_lab == 1).mean() == pytest.approx(0.4)


def test_crop_gives_up_after_ten_retries_like_mmseg():
    label = _stripe_label()
    lefts = list(range(0, 11 * 5, 5))  # 11 crops, all inside the class-0 columns
    rng = ScriptedRng([v for left in lefts for v in (0, left)])
    crop = RandomCrop((20, 20), cat_max_ratio=0.75, rng=rng)
    image = np.stack([np.tile(np.arange(100, dtype=np.uint8), (20, 1))] * 3, axis=-1)
    out_img, out_lab = crop(image, label)
    assert rng.calls == 2 * (1 + CROP_RETRIES)
    assert out_img[0, 0, 0] == lefts[-1] and (out_lab == 0).all()  # the last draw, unchecked


def test_crop_ignores_255_and_needs_two_classes():
    label = np.full((10, 10), 255, np.uint8)
    label[:, :3] = 4  # one class only (ignore does not count): never acceptable
    rng = ScriptedRng([0, 0] * (1 + CROP_RETRIES))
    RandomCrop((10, 10), cat_max_ratio=0.75, rng=rng)(np.zeros((10, 10, 3), np.uint8), label)
    assert rng.calls == 2 * (1 + CROP_RETRIES)
    label[:, 3:6] = 5  # 4: 30 px, 5: 30 px of the non-ignored: 50 % < 75 %
    rng = ScriptedRng([0, 0])
    RandomCrop((10, 10), cat_max_ratio=0.75, rng=rng)(np.zeros((10, 10, 3), np.uint8), label)
    assert rng.calls == 2


def test_crop_without_ratio_draws_once():
    rng = ScriptedRng([3, 7])
    out_img, out_lab = RandomCrop((4, 4), cat_max_ratio=1.0, rng=rng)(
        np.zeros((10, 20, 3), np.uint8), np.zeros((10, 20), np.uint8)
    )
    assert rng.calls == 2 and out_img.shape == (4, 4, 3) and out_lab.shape == (4, 4)


def test_crop_pads_small_images_with_0_and_255():
    image = np.full((5, 6, 3), 9, np.uint8)
    label = np.ones((5, 6), np.uint8)
    out_img, out_lab = RandomCrop((8, 8), rng=np.random.default_rng(0))(image, label)
    assert out_img.shape == (8, 8, 3) and out_lab.shape == (8, 8)
    assert (out_img[:5, :6] == 9).all() and (out_img[5:] == 0).all() and (out_img[:, 6:] == 0).all()
    assert (
        (out_lab[:5, :6] == 1).all()
        and (out_lab[5:] == 255).all()
        and (out_lab[:, 6:] == 255).all()
    )


def test_flip_flips_image_and_label_together():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    label = np.array([[1, 2, 3], [4, 5, 6]], np.uint8)
    img, lab = RandomFlip(1.0)(image, label)
    assert lab.tolist() == [[3, 2, 1], [6, 5, 4]] and (img == image[:, ::-1]).all()
    img, lab = RandomFlip(0.0)(image, label)
    assert lab.tolist() == label.tolist()


def test_normalize_values_and_types():
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 1] = (255, 0, 128)
    img, lab = Normalize(IMAGENET_MEAN, IMAGENET_STD)(image, np.full((2, 3), 7, np.uint8))
    assert img.shape == (3, 2, 3) and img.dtype == torch.float32
    assert lab.shape == (2, 3) and lab.dtype == torch.int64 and (lab == 7).all()
    expected = [(255 - 123.675) / 58.395, (0 - 116.28) / 57.12, (128 - 103.53) / 57.375]
    assert img[:, 0, 1].tolist() == pytest.approx(expected, rel=1e-6)


def test_train_transform_is_seeded():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 160, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (90, 160), dtype=np.uint8)

    def run(seed):
        t = train_transform((160, 90), (32, 48), 0.75, 0.5, IMAGENET_MEAN, IMAGENET_STD,
                            rng=np.random.default_rng(seed))  # fmt: skip
        return [t(image, label) for _ in range(4)]

    a, b, c = run(1), run(1), run(2)
    assert all(
        torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True)
    )
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c, strict=True))
    assert a[0][0].shape == (3, 32, 48) and a[0][1].shape == (32, 48)

    t = train_transform(None, (32, 48), 0.75, 0.5, IMAGENET_MEAN, IMAGENET_STD)
    reseed(t, 1)
    assert all(torch.equal(x[1], t(image, label)[1]) for x in a)  # same stream as seed 1


def test_val_transform_keeps_or_resizes():
    image, label = np.zeros((90, 160, 3), np.uint8), np.zeros((90, 160), np.uint8)
    img, lab = val_transform(None, IMAGENET_MEAN, IMAGENET_STD)(image, label)
    assert img.shape == (3, 90, 160) and lab.shape == (90, 160)
    img, lab = val_transform((80, 45), IMAGENET_MEAN, IMAGENET_STD)(image, label)
    assert img.shape == (3, 45, 80) and lab.shape == (45, 80)
