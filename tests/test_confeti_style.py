"""CONFETI's CUT translator: networks (shapes, sizes, blur filters), LSGAN and PatchNCE on
hand-worked tensors, and where each loss's gradient goes (research/confeti.md sections 3 and 8)."""

from __future__ import annotations

import math

import pytest
import torch

from cluda_deploy.config import IMAGENET_MEAN, IMAGENET_STD
from training.confeti.style import (
    StyleTransfer,
    build_style_optimizer,
    from_tanh_range,
    to_tanh_range,
)
from training.confeti.style_losses import lsgan_loss, patch_nce_loss
from training.confeti.style_nets import (
    BlurDownsample,
    BlurUpsample,
    PatchGANDiscriminator,
    PatchSampleMLP,
    ResnetGenerator,
    blur_filter,
)

CUT_NCE_LAYERS = (0, 4, 8, 12, 16)


def tiny_style(with_critics: bool = True) -> StyleTransfer:
    torch.manual_seed(0)
    return StyleTransfer(
        ngf=4, n_blocks=2, ndf=4, d_layers=3, mlp_channels=8, nce_layers=(0, 4, 8, 12),
        init_gain=0.02, with_critics=with_critics,
    )  # fmt: skip


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_blur_filter_is_the_normalised_binomial():
    assert torch.equal(blur_filter(3) * 16, torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]))
    assert blur_filter(4).sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="blur filter size 7"):
        blur_filter(7)


def test_blur_downsample_of_a_centre_impulse():
    # reflect padding copies the centre to padded rows/cols 0, 2, 4; each stride-2 window then
    # sees four corner copies: 16 * (1 + 1 + 1 + 1) / 16 = 4 everywhere.
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 16.0
    assert torch.allclose(BlurDownsample(1)(x), torch.full((1, 1, 2, 2), 4.0))
    assert BlurDownsample(2)(torch.rand(1, 2, 7, 10)).shape == (1, 2, 4, 5)


def test_blur_upsample_doubles_and_keeps_a_constant():
    out = BlurUpsample(2)(torch.full((1, 2, 3, 5), 3.0))
    assert out.shape == (1, 2, 6, 10)
    assert torch.allclose(out, torch.full_like(out, 3.0))


def test_generator_shapes_range_and_nce_layers():
    style = tiny_style()
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    y = style(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    feats = style.generator.encode(x, (0, 4, 8))
    assert [f.shape[1] for f in feats] == style.generator.layer_channels((0, 4, 8)) == [3, 8, 16]
    assert feats[0].shape[-2:] == (38, 54)  # layer 0 is the 3-pixel reflection pad
    with pytest.raises(ValueError, match="confeti.style.nce_layers"):
        style.generator.encode(x, (0, 99))


def test_cut_sizes_match_the_reference():
    """resnet_9blocks, basic D and mlp_sample F at ngf = ndf = 64: CUT prints 11.378 M and
    2.765 M; F is 5 x (Linear(c, 256) + Linear(256, 256)) for c = 3, 128, 256, 256, 256."""
    gen = ResnetGenerator(64, 9)
    assert gen.layer_channels(CUT_NCE_LAYERS) == [3, 128, 256, 256, 256]
    assert round(n_params(gen) / 1e3) == 11378
    assert round(n_params(PatchGANDiscriminator(64, 3)) / 1e3) == 2765
    mlp_params = sum(c * 256 + 256 + 256 * 256 + 256 for c in (3, 128, 256, 256, 256))
    assert n_params(PatchSampleMLP([3, 128, 256, 256, 256], 256)) == mlp_params == 560384


def test_discriminator_gives_patch_scores():
    disc = PatchGANDiscriminator(4, 3)
    assert disc(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_patch_sample_mlp_reuses_locations_and_normalises():
    torch.manual_seed(0)
    mlp = PatchSampleMLP([3, 5], nc=4)
    feats = [torch.rand(2, 3, 4, 4), torch.rand(2, 5, 2, 2)]
    out, ids = mlp(feats, num_patches=6)
    assert [o.shape for o in out] == [(12, 4), (8, 4)]  # 6 patches, and all 4 of the 2x2 map
    assert torch.allclose(out[0].norm(dim=1), torch.ones(12), atol=1e-5)
    again, same_ids = mlp(feats, num_patches=6, patch_ids=ids)
    assert all(torch.equal(a, b) for a, b in zip(ids, same_ids, strict=True))
    assert torch.allclose(out[0], again[0])


def test_lsgan_loss_hand_worked():
    pred = torch.tensor([[0.5, 1.5]])
    assert lsgan_loss(pred, True).item() == pytest.approx(0.25)  # (0.25 + 0.25) / 2
    assert lsgan_loss(pred, False).item() == pytest.approx(1.25)  # (0.25 + 2.25) / 2


def test_patch_nce_loss_hand_worked():
    """One image, two orthogonal patches, T = 1: row n's logits are [q.k_n, -10 (self), q.k_m]
    = [1, -10, 0] -> loss = log(1 + e^-11 + e^-1) for both patches."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = patch_nce_loss(q, q.clone(), batch_size=1, temperature=1.0)
    expected = math.log(1 + math.exp(-11) + math.exp(-1))
    assert torch.allclose(loss, torch.full((2,), expected))


def test_patch_nce_negatives_come_from_the_same_image_only():
    """Two images of one patch each: no negatives at all, so the loss is log(1 + e^(-10/T - 1/T))."""
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = patch_nce_loss(q, q.clone(), batch_size=2, temperature=0.5)
    assert torch.allclose(loss, torch.full((2,), math.log(1 + math.exp(-22))))
    with pytest.raises(ValueError, match="B = 3"):
        patch_nce_loss(q, q, batch_size=3, temperature=0.07)


def test_patch_nce_keys_get_no_gradient():
    q = torch.nn.functional.normalize(torch.rand(4, 3), dim=1).requires_grad_()
    k = torch.nn.functional.normalize(torch.rand(4, 3), dim=1).requires_grad_()
    patch_nce_loss(q, k, batch_size=2, temperature=0.07).mean().backward()
    assert q.grad is not None and k.grad is None


def grads(module):
    return [p.grad for p in module.parameters()]


def test_generator_losses_train_g_and_f_but_not_d():
    style = tiny_style()
    src, tgt = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    fake, idt = style(torch.cat([src, tgt])).chunk(2)
    terms = style.generator_losses(
        src, fake, tgt, idt, lambda_gan=1.0, lambda_nce=1.0, num_patches=16, temperature=0.07
    )
    assert set(terms) == {"style_gan", "style_nce"}
    sum(terms.values()).backward()
    assert all(g is not None for g in grads(style.generator) + grads(style.patch_mlp))
    assert all(g is None for g in grads(style.discriminator))
    assert all(p.requires_grad for p in style.discriminator.parameters())  # restored


def test_discriminator_loss_trains_d_only():
    style = tiny_style()
    src, tgt = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    style.discriminator_loss(style(src), tgt).backward()
    assert all(g is not None for g in grads(style.discriminator))
    assert all(g is None for g in grads(style.generator) + grads(style.patch_mlp))


def test_identity_nce_is_averaged_with_the_translation_nce():
    style = tiny_style()
    src, tgt = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    fake, idt = style(src), style(tgt)
    kwargs = {"lambda_gan": 1.0, "lambda_nce": 2.0, "num_patches": 8, "temperature": 0.07}
    torch.manual_seed(1)
    both = style.generator_losses(src, fake, tgt, idt, **kwargs)["style_nce"]
    torch.manual_seed(1)  # the same patch draws, in the same order
    translation, identity = style.nce_loss(src, fake, 8, 0.07), style.nce_loss(tgt, idt, 8, 0.07)
    assert torch.allclose(both, 2.0 * 0.5 * (translation + identity))
    torch.manual_seed(1)
    single = style.generator_losses(src, fake, tgt, None, **kwargs)["style_nce"]
    assert torch.allclose(single, 2.0 * translation)


def test_generator_only_translator_and_optimizer():
    bare = tiny_style(with_critics=False)
    assert bare.discriminator is None and bare.patch_mlp is None
    with pytest.raises(RuntimeError, match="with_critics=False"):
        bare.discriminator_loss(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="with critics"):
        build_style_optimizer(bare, 2e-4, (0.5, 0.999))
    opt = build_style_optimizer(tiny_style(), 2e-4, (0.5, 0.999))
    assert [g["name"] for g in opt.param_groups] == [
        "style/generator", "style/discriminator", "style/patch_mlp",
    ]  # fmt: skip
    assert all(g["lr"] == 2e-4 and g["betas"] == (0.5, 0.999) for g in opt.param_groups)


def test_tanh_range_round_trip():
    white = (255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    images = white.view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(
        to_tanh_range(images, IMAGENET_MEAN, IMAGENET_STD), torch.ones(1, 3, 2, 2)
    )
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    back = to_tanh_range(
        from_tanh_range(x, IMAGENET_MEAN, IMAGENET_STD), IMAGENET_MEAN, IMAGENET_STD
    )
    assert torch.allclose(back, x, atol=1e-5)
