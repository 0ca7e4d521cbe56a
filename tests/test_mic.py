"""MIC: block masks (grid rounding, nearest blocks, masked share), masking in normalised space,
the augmented-then-masked target input, and the masked target loss with the teacher's labels."""

from __future__ import annotations

import pytest
import torch

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from training.losses import seg_cross_entropy
from training.mic import block_mask, mask_images, masked_consistency_terms, masked_target_images

NO_AUG = dict(color_jitter_prob=0.0, color_jitter_strength=0.2, blur_prob=0.0,
              blur_sigma=(0.15, 1.15))  # fmt: skip


def test_block_mask_hand_worked():
    # 128x128 with 64 px blocks: a 2x2 grid; a cell is kept where U(0, 1) > ratio.
    draws = torch.rand((2, 1, 2, 2), generator=torch.Generator().manual_seed(0))
    mask = block_mask(2, 128, 128, 64, 0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (2, 1, 128, 128) and mask.dtype == torch.float32
    expected = torch.kron((draws > 0.5).float(), torch.ones(64, 64))
    assert torch.equal(mask, expected)


def test_block_mask_grid_rounds_like_the_reference():
    # round(100 / 64) = 2 rows of 50 px; round(160 / 64) = round(2.5) = 2 columns of 80 px
    mask = block_mask(1, 100, 160, 64, 0.5, generator=torch.Generator().manual_seed(1))[0, 0]
    for rows in (slice(0, 50), slice(50, 100)):
        for cols in (slice(0, 80), slice(80, 160)):
            block = mask[rows, cols]
            assert block.min() == block.max()


def test_block_mask_masks_the_configured_share():
    mask = block_mask(64, 256, 256, 16, 0.7, generator=torch.Generator().manual_seed(2))
    masked_share = 1 - mask.mean().item()
    assert masked_share == pytest.approx(0.7, abs=0.02)  # 16384 cells
    assert block_mask(1, 64, 64, 16, 0.0).min() == 1  # ratio 0: nothing masked
    assert block_mask(1, 64, 64, 16, 1.0).max() == 0  # ratio 1: everything masked


def test_block_mask_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"uda.mic_patch=64 does not fit a 24x24 crop"):
        block_mask(1, 24, 24, 64, 0.7)
    with pytest.raises(ValueError, match=r"uda.mic_ratio must be in \[0, 1\], got 1.5"):
        block_mask(1, 64, 64, 16, 1.5)


def test_mask_images_blanks_to_the_mean_colour():
    images = torch.randn(2, 3, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1
    out = mask_images(images, mask)
    assert torch.equal(out[:, :, :4], images[:, :, :4]) and out[:, :, 4:].abs().sum() == 0


def test_masked_target_images_augment_then_mask():
    target = torch.randn(2, 3, 64, 64)
    plain = masked_target_images(target, IMAGENET_MEAN, IMAGENET_STD, block_size=16, ratio=0.7,
                                 generator=torch.Generator().manual_seed(3), **NO_AUG)  # fmt: skip
    gen = torch.Generator().manual_seed(3)
    torch.rand((), generator=gen), torch.rand((), generator=gen)  # the two augmentation coins
    expected = target * block_mask(2, 64, 64, 16, 0.7, generator=gen)
    assert torch.equal(plain, expected)
    always = dict(NO_AUG, color_jitter_prob=1.0, blur_prob=1.0)
    augmented = masked_target_images(target, IMAGENET_MEAN, IMAGENET_STD, block_size=16,
                                     ratio=0.7, generator=torch.Generator().manual_seed(3),
                                     **always)  # fmt: skip
    # whole 16 px blocks are blanked (the augmentation draws come first, so another mask) ...
    blocks = (augmented != 0).any(dim=1).float().unfold(1, 16, 16).unfold(2, 16, 16)
    assert (blocks.amin(dim=(-2, -1)) == blocks.amax(dim=(-2, -1))).all()
    kept = blocks.amax(dim=(-2, -1)).bool()
    assert 0 < kept.sum() < kept.numel()
    # ... and the kept pixels are jittered and blurred, not the target's
    pixels = kept.repeat_interleave(16, 1).repeat_interleave(16, 2)[:, None].expand_as(target)
    assert not torch.allclose(augmented[pixels], target[pixels], atol=1e-2)


def test_masked_consistency_terms_use_the_teachers_labels_and_weights():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)
    images = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8))
    weight = torch.full((2, 8, 8), 0.25)
    weight[:, -2:] = 0  # the margins the teacher's weight map zeroes

    def seg_loss(x, y, w):
        return {"ce": seg_cross_entropy(conv(x), y, w)}

    terms = masked_consistency_terms(seg_loss, images, labels, weight, weight=1.0)
    expected = seg_cross_entropy(conv(images), labels, weight)
    assert list(terms) == ["mic_ce"] and terms["mic_ce"].item() == pytest.approx(expected.item())
    doubled = masked_consistency_terms(seg_loss, images, labels, weight, weight=2.0, prefix="m")
    assert doubled["m_ce"].item() == pytest.approx(2 * expected.item())
    terms["mic_ce"].backward()
    assert conv.weight.grad.abs().sum() > 0
